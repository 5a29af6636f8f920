//! Every exported function of the bindings, as Kotlin and Swift call them (through the same
//! Rust API uniffi wraps), on the tiny random models the core's tests write: the journey, the
//! typed errors, a closed model, cancelling by dropping the call, and a panic behind the
//! boundary arriving as an error.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use adaptkit::quant::GgmlType;
use adaptkit_ffi::*;

#[path = "../../../core/tests/common/mod.rs"]
mod common;
use common::*;

/// Runs a future to completion on this thread (what Kotlin's and Swift's executors do for
/// uniffi's futures).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

const NOTES: &str = "the bees are out in the sun and the hive is warm.\n\n\
saturday is bread day: i feed the starter at seven and bake at noon.\n\n\
the starter is called henrik, and henrik is old, calm and a little sour.\n\n\
on sunday we walk to the market and buy apples, pears and honey for the week.";

fn options() -> OpenOptions {
    OpenOptions { threads: 2, device: Device::Cpu, trainable: true, cache: None }
}

fn tiny_model() -> Arc<Model> {
    block_on(Model::open_bytes(Weights::random(50).gguf_bytes(GgmlType::Q8_0), options())).unwrap()
}

fn greedy(max_tokens: u32) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
        stop_strings: vec![],
        stop_at_eos: false,
    }
}

fn text(prompt: &str) -> Prompt {
    Prompt::Text { text: prompt.into() }
}

fn config(steps: u32) -> TrainConfig {
    TrainConfig {
        method: "lora".into(),
        rank: Some(4),
        alpha: None,
        dropout: None,
        rslora: None,
        init: None,
        freeze_a: None,
        targets: None,
        virtual_tokens: None,
        prompt_init: None,
        max_len: None,
        embedding_lr: None,
        heads: None,
        select_steps: None,
        l1: None,
        steps,
        batch: 2,
        seq: 16,
        packing: "stream".into(),
        accumulate: 1,
        lr: Some(1e-2),
        lr_schedule: "cosine_with_min_lr".into(),
        min_lr_ratio: 0.1,
        warmup: 0,
        max_grad_norm: 1.0,
        weight_decay: 0.0,
        seed: 0,
        eval_every: 0,
        patience: None,
        checkpoint_activations: false,
        checkpoint_every: 0,
        held_out_fraction: 0.1,
        memory_budget_mb: None,
        resume: false,
    }
}

fn data() -> TrainingData {
    TrainingData {
        text: NOTES.into(),
        name: "notes.txt".into(),
        jsonl: false,
        eval_text: None,
        general_text: None,
    }
}

/// Collects events; cancels `cancel` after step `cancel_at`.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<TrainEvent>>,
    cancel_at: Option<(u32, Arc<CancelToken>)>,
}

impl TrainListener for Recorder {
    fn on_event(&self, event: TrainEvent) {
        if let (TrainEvent::Step { step, .. }, Some((at, token))) = (&event, &self.cancel_at) {
            if step == at {
                token.cancel();
            }
        }
        self.events.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn losses(&self) -> Vec<(u32, f32)> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter_map(
                |e| if let TrainEvent::Step { step, loss, .. } = e { Some((*step, *loss)) } else { None },
            )
            .collect()
    }
}

#[derive(Default)]
struct Tokens(Mutex<String>);

impl GenerationListener for Tokens {
    fn on_event(&self, event: GenerationEvent) {
        if let GenerationEvent::Token { text, .. } | GenerationEvent::Tail { text } = event {
            self.0.lock().unwrap().push_str(&text);
        }
    }
}

fn generate(model: &Model, prompt: &str) -> GenerationReport {
    let tokens = Arc::new(Tokens::default());
    let report = block_on(model.generate(text(prompt), greedy(8), Some(tokens.clone()), None)).unwrap();
    assert_eq!(*tokens.0.lock().unwrap(), report.text, "the streamed text is the report's");
    report
}

fn train(
    model: &Model,
    config: TrainConfig,
    storage: &Arc<Storage>,
    cancel_at: Option<u32>,
) -> (Vec<(u32, f32)>, Result<TrainResult, AdaptError>) {
    let token = CancelToken::new();
    let recorder =
        Arc::new(Recorder { events: Mutex::default(), cancel_at: cancel_at.map(|s| (s, token.clone())) });
    let result = block_on(model.train(data(), config, storage.clone(), Some(recorder.clone()), Some(token)));
    (recorder.losses(), result)
}

#[test]
fn the_journey_through_the_bindings() {
    let model = tiny_model();
    let info = model.info().unwrap();
    assert_eq!(
        (info.layers as usize, info.vocab_size as usize, info.format.as_str()),
        (LAYERS, VOCAB, "gguf")
    );
    let before = generate(&model, "the starter is");
    assert_eq!(before.tokens.len(), 8);
    let ppl = block_on(model.perplexity(NOTES.into(), 16, None)).unwrap();
    assert!(ppl.perplexity > 1.0 && ppl.windows > 0);

    // Planned, trained with events, cancelled, resumed to the straight run's losses.
    let plan = block_on(model.plan(config(4))).unwrap();
    let straight_storage = Storage::memory();
    let (straight, trained) = train(&model, config(4), &straight_storage, None);
    let trained = trained.unwrap();
    assert_eq!(trained.report.steps, 4);
    assert_eq!(trained.report.plan, plan, "the plan is the one training follows");
    assert!(trained.report.json.contains("\"train_loss\""));
    let storage = Storage::memory();
    let (first, cancelled) = train(&model, config(4), &storage, Some(2));
    assert!(matches!(cancelled, Err(AdaptError::Cancelled)));
    assert!(storage.exists("checkpoint.safetensors".into()).unwrap(), "cancelling saves the run");
    let (rest, resumed) = train(&model, TrainConfig { resume: true, ..config(4) }, &storage, None);
    assert_eq!([first, rest].concat(), straight, "resumed = straight");
    let adapter = resumed.unwrap().adapter;

    // Saved and loaded three ways; attached, scaled, detached.
    let saved = Storage::memory();
    block_on(adapter.save(saved.clone())).unwrap();
    let from_storage = block_on(
        model.load_adapter(AdapterSource::Storage { storage: saved.clone() }, LoadOptions::default()),
    )
    .unwrap();
    let files = adapter.peft_files().unwrap();
    let from_bytes =
        block_on(model.load_adapter(AdapterSource::Peft { files: files.clone() }, LoadOptions::default()))
            .unwrap();
    assert_eq!(from_bytes.peft_files().unwrap(), files);
    let dir = tempdir();
    let path = dir.join("adapter").display().to_string();
    block_on(adapter.save_directory(path.clone())).unwrap();
    let from_dir =
        block_on(model.load_adapter(AdapterSource::Path { path }, LoadOptions::default())).unwrap();
    assert_eq!(from_dir.info().method, "lora");
    let notes_ppl = || block_on(model.perplexity(NOTES.into(), 16, None)).unwrap().perplexity;
    let id = model.attach(from_storage, 1.0).unwrap();
    let tuned = notes_ppl();
    assert!(tuned < ppl.perplexity, "the adapter learnt the notes: {tuned} vs {}", ppl.perplexity);
    model.set_scale(id, 0.0).unwrap();
    assert_eq!(notes_ppl(), ppl.perplexity, "scale 0 is off");
    assert_eq!(generate(&model, "the starter is").tokens, before.tokens, "scale 0 is off");
    assert_eq!(model.attached().unwrap().len(), 1);
    model.detach(id).unwrap();
    assert!(model.attached().unwrap().is_empty());

    // A signed patch: compressed, inspected, verified, attached with the key trusted.
    let keys = keygen().unwrap();
    let compress_options = CompressOptions {
        density: "0.5".into(),
        dense_type: "f16".into(),
        eval_text: None,
        general_text: None,
        secret_key: Some(keys.secret.clone()),
    };
    let patch = block_on(compress(
        model.clone(),
        AdapterSource::Storage { storage: saved.clone() },
        compress_options.clone(),
    ))
    .unwrap();
    assert!(patch.signed && patch.ratio_vs_f16 > 1.0);
    assert_eq!(patch.base, block_on(model.fingerprint()).unwrap());
    let inspection = inspect(patch.bytes.clone(), "notes.akp".into()).unwrap();
    assert_eq!(
        (inspection.method.as_str(), inspection.signer.as_deref()),
        ("lora", Some(keys.public_hex.as_str()))
    );
    let verified = verify(patch.bytes.clone(), "notes.akp".into(), vec![keys.public.clone()]).unwrap();
    assert!(verified.signed && verified.trusted);
    let trusted = LoadOptions { trusted_keys: vec![keys.public.clone()], allow_port: false };
    let patched = block_on(model.load_adapter(
        AdapterSource::Patch { bytes: patch.bytes.clone(), label: "notes.akp".into() },
        trusted.clone(),
    ))
    .unwrap();
    assert_eq!(patched.info().signer.as_deref(), Some(keys.public_hex.as_str()));
    model.attach(patched, 1.0).unwrap();
    let patched_ppl = notes_ppl();
    assert!(
        patched_ppl < ppl.perplexity,
        "the patch acts like the adapter: {patched_ppl} vs {}",
        ppl.perplexity
    );
    generate(&model, "the starter is");
    model.detach_all().unwrap();

    // Where keys are trusted, unsigned patches and PEFT adapters are refused.
    let unsigned = block_on(compress(
        model.clone(),
        AdapterSource::Storage { storage: saved.clone() },
        CompressOptions { secret_key: None, ..compress_options },
    ))
    .unwrap();
    let refused = block_on(model.load_adapter(
        AdapterSource::Patch { bytes: unsigned.bytes.clone(), label: "unsigned.akp".into() },
        trusted.clone(),
    ));
    assert!(matches!(refused, Err(AdaptError::Patch(ref m)) if m.contains("unsigned.akp")), "{refused:?}");
    let refused = block_on(model.load_adapter(AdapterSource::Storage { storage: saved }, trusted));
    assert!(refused.is_err());

    // Sign, merge, port.
    let signed = sign(unsigned.bytes.clone(), "unsigned.akp".into(), keys.secret.clone()).unwrap();
    assert!(verify(signed, "signed.akp".into(), vec![keys.public.clone()]).unwrap().trusted);
    let merged = merge(
        vec![
            WeightedPatch { bytes: patch.bytes.clone(), label: "a.akp".into(), weight: 0.5 },
            WeightedPatch { bytes: unsigned.bytes.clone(), label: "b.akp".into(), weight: 0.5 },
        ],
        "f16".into(),
        None,
    )
    .unwrap();
    assert_eq!(merged.method, "lora");
    assert!(!inspect(merged.bytes, "merged.akp".into()).unwrap().signed);
    let ported = block_on(port(
        patch.bytes.clone(),
        "notes.akp".into(),
        model.clone(),
        Some(model.clone()),
        PortOptions { lambda: 1.0, max_drift: 0.5, secret_key: None },
    ))
    .unwrap();
    assert_eq!(
        (ported.from.as_str(), ported.max_drift),
        (ported.to.as_str(), 0.0),
        "the same base does not drift"
    );
}

#[test]
fn bad_input_is_a_typed_error_and_the_model_keeps_working() {
    let missing = block_on(Model::open("/nonexistent/model.gguf".into(), options()));
    assert!(
        matches!(missing, Err(AdaptError::Io(ref m)) if m.contains("/nonexistent/model.gguf")),
        "{:?}",
        missing.err()
    );
    let corrupt = block_on(Model::open_bytes(b"GGUF but not really".to_vec(), options()));
    assert!(matches!(corrupt, Err(AdaptError::Model(_))), "{:?}", corrupt.err());

    let model = tiny_model();
    let storage = Storage::memory();
    let expect_invalid = |config: TrainConfig, field: &str| {
        let result = train(&model, config, &storage, None).1;
        assert!(
            matches!(result, Err(AdaptError::InvalidArgument(ref m)) if m.contains(field)),
            "{field}: {:?}",
            result.err()
        );
    };
    expect_invalid(TrainConfig { method: "nope".into(), ..config(1) }, "nope");
    expect_invalid(TrainConfig { rank: Some(0), ..config(1) }, "rank");
    expect_invalid(TrainConfig { targets: Some(vec!["zz".into()]), ..config(1) }, "zz");
    expect_invalid(TrainConfig { virtual_tokens: Some(4), ..config(1) }, "virtual_tokens");
    expect_invalid(TrainConfig { lr_schedule: "sometimes".into(), ..config(1) }, "sometimes");
    expect_invalid(TrainConfig { packing: "tight".into(), ..config(1) }, "tight");
    let tight = block_on(model.plan(TrainConfig { memory_budget_mb: Some(1.0), ..config(1) }));
    assert!(
        matches!(tight, Err(AdaptError::MemoryBudget(ref m)) if m.contains("needs")),
        "{:?}",
        tight.err()
    );
    let options = GenerateOptions { top_p: 2.0, ..greedy(4) };
    assert!(matches!(
        block_on(model.generate(text("hi"), options, None, None)),
        Err(AdaptError::InvalidArgument(_))
    ));
    // A prompt of token ids outside the vocabulary names the field.
    let ids = Prompt::Tokens { ids: vec![1, u32::MAX] };
    assert!(matches!(
        block_on(model.generate(ids, greedy(4), None, None)),
        Err(AdaptError::InvalidArgument(ref m)) if m.contains("prompt.tokens")
    ));
    let bad_adapter =
        PeftFiles { config_json: b"{}".to_vec(), safetensors: vec![1, 2, 3], training_json: None };
    assert!(matches!(
        block_on(model.load_adapter(AdapterSource::Peft { files: bad_adapter }, LoadOptions::default())),
        Err(AdaptError::Adapter(_))
    ));
    assert!(
        matches!(inspect(vec![0; 10], "x.akp".into()), Err(AdaptError::Patch(ref m)) if m.contains("x.akp"))
    );
    assert!(
        matches!(verify(vec![], "x.akp".into(), vec!["not a key".into()]), Err(AdaptError::InvalidArgument(ref m)) if m.contains("trusted_keys[0]"))
    );
    assert!(matches!(
        Storage::memory().write("../escape".into(), vec![1]),
        Err(AdaptError::InvalidArgument(_))
    ));
    assert_eq!(generate(&model, "still").tokens.len(), 8, "the model keeps working");
}

#[test]
fn a_released_model_is_an_error_not_a_crash() {
    let model = tiny_model();
    let adapter_storage = Storage::memory();
    model.release();
    assert!(model.is_released());
    assert!(matches!(model.info(), Err(AdaptError::Closed)));
    assert!(matches!(block_on(model.generate(text("hi"), greedy(2), None, None)), Err(AdaptError::Closed)));
    assert!(matches!(train(&model, config(1), &adapter_storage, None).1, Err(AdaptError::Closed)));
    assert!(matches!(block_on(model.fingerprint()), Err(AdaptError::Closed)));
    assert!(matches!(model.detach_all(), Err(AdaptError::Closed)));
    model.release();
}

/// Kotlin cancels a coroutine, Swift a task: uniffi drops the future. The run stops at its
/// next step and saves its checkpoint, and a resumed run finishes it.
#[test]
fn dropping_a_training_call_cancels_it_and_keeps_its_checkpoint() {
    let model = tiny_model();
    let storage = Storage::memory();
    let recorder = Arc::new(Recorder::default());
    {
        let mut call =
            Box::pin(model.train(data(), config(200), storage.clone(), Some(recorder.clone()), None));
        let waker = Waker::noop();
        let started = Instant::now();
        while recorder.losses().is_empty() {
            assert!(call.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
            assert!(started.elapsed() < Duration::from_secs(60), "no step in a minute");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let started = Instant::now();
    while !storage.exists("checkpoint.safetensors".into()).unwrap() {
        assert!(started.elapsed() < Duration::from_secs(60), "the dropped run saved no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let done = recorder.losses().len() as u32;
    assert!(done < 200, "it stopped early ({done} steps)");
    let (rest, resumed) = train(&model, TrainConfig { resume: true, ..config(200) }, &storage, None);
    resumed.unwrap();
    assert_eq!(rest.first().map(|s| s.0), Some(done + 1), "resumed after the last step run");
}

/// A bug behind the boundary — here a listener that panics, as a Kotlin listener that throws
/// does through uniffi — is an error for that call; the model keeps working.
#[test]
fn a_panic_behind_the_boundary_arrives_as_an_error() {
    struct Panics;
    impl GenerationListener for Panics {
        fn on_event(&self, _: GenerationEvent) {
            panic!("the listener failed");
        }
    }
    let model = tiny_model();
    let result = block_on(model.generate(text("hi"), greedy(4), Some(Arc::new(Panics)), None));
    assert!(
        matches!(result, Err(AdaptError::Internal(ref m)) if m.contains("the listener failed")),
        "{result:?}"
    );
    assert_eq!(generate(&model, "hi").tokens.len(), 8);
}
