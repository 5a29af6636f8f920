//! The runtime API as an app uses it: the whole user journey with no CLI and no file system (the
//! model from bytes, storage in memory), and the review's fixes that live at this level. The
//! journey also compiles for wasm32 (`scripts/test.sh` checks this file for it).

use adaptkit::adapt::prompt::{PromptAdapter, PromptInit};
use adaptkit::adapt::{LoraAdapter, LoraConfig, Method, MethodKind, MethodOptions};
use adaptkit::control::CancelToken;
use adaptkit::generate::{GenerateOptions, GenerationEvent, SamplingParams, StopReason};
use adaptkit::model::Projection;
use adaptkit::patch::keys::{parse_public_key, parse_secret_key};
use adaptkit::patch::DenseType;
use adaptkit::quant::GgmlType;
use adaptkit::runtime::patches::{self, CompressOptions, Density};
use adaptkit::runtime::{
    AdapterSource, Dataset, GenerateRequest, LoadOptions, MemoryStore, Model, ModelSource, OpenOptions,
    Prompt, Store, TrainConfig, TrainEvent, TrainingData,
};
use adaptkit::tokenizer::Message;
use adaptkit::train::data::Format;
use adaptkit::{Engine, EngineOptions, Error};

mod common;
use common::*;

/// Notes in the tiny tokenizer's ASCII, a few hundred tokens.
const NOTES: &str = "the bees are out in the sun and the hive is warm.\n\n\
saturday is bread day: i feed the starter at seven and bake at noon.\n\n\
the starter is called henrik, and henrik is old, calm and a little sour.\n\n\
on sunday we walk to the market and buy apples, pears and honey for the week.\n\n\
in the autumn the bees slow down and the hive gets quiet before the frost.\n\n\
at the market the baker asks about henrik, and i say the starter is doing well.";

fn tiny_model(trainable: bool) -> Model {
    let bytes = Weights::random(50).gguf_bytes(GgmlType::Q8_0);
    Model::open(ModelSource::Gguf(bytes), &OpenOptions { trainable, threads: 2, ..Default::default() })
        .unwrap()
}

fn greedy(prompt: Prompt, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        options: GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() },
    }
}

/// Generates, checking that the streamed text is the report's.
fn generate(model: &Model, request: &GenerateRequest) -> Vec<u32> {
    let mut streamed = String::new();
    let report = model
        .generate(request, &CancelToken::new(), &mut |event| match event {
            GenerationEvent::Token { text, .. } | GenerationEvent::Tail { text } => streamed.push_str(text),
            _ => {}
        })
        .unwrap();
    assert_eq!(streamed, report.text);
    report.tokens
}

fn notes() -> TrainingData {
    TrainingData { train: Dataset::new("notes.txt", NOTES, Format::Text), eval: None, general: None }
}

/// Trains with `config` into `store`, cancelling after step `cancel_at` when given; returns
/// the losses of the steps it ran and the outcome.
fn train(
    model: &Model,
    config: &TrainConfig,
    store: &dyn Store,
    cancel_at: Option<usize>,
) -> (Vec<(usize, f32)>, Result<adaptkit::runtime::Trained, Error>) {
    let cancel = CancelToken::new();
    let mut steps = Vec::new();
    let mut stages = Vec::new();
    let result = model.train(&notes(), config, store, &cancel, &mut |event| match event {
        TrainEvent::Stage { name, .. } => stages.push(name.to_string()),
        TrainEvent::Step { step, .. } => {
            steps.push((step.step, step.loss));
            if Some(step.step) == cancel_at {
                cancel.cancel();
            }
        }
        _ => {}
    });
    assert_eq!(stages.last().map(String::as_str), Some("train"));
    (steps, result)
}

#[test]
fn the_whole_journey_runs_from_bytes_in_memory() {
    let model = tiny_model(true);
    let info = model.info();
    assert_eq!((info.layers, info.vocab_size, info.format), (LAYERS, VOCAB, "gguf"));
    let chat = greedy(Prompt::Chat(vec![Message::new("user", "what is the starter called?")]), 12);
    let before = generate(&model, &chat);

    // LoRA: trained for a few steps, cancelled, resumed to the losses of a straight run.
    let lora = TrainConfig {
        steps: 6,
        batch: 2,
        seq: 16,
        lr: Some(1e-2),
        eval_every: 2,
        checkpoint_every: 0,
        options: MethodOptions { rank: Some(4), ..Default::default() },
        ..TrainConfig::default()
    };
    let straight_store = MemoryStore::new();
    let (straight, trained) = train(&model, &lora, &straight_store, None);
    let trained = trained.unwrap();
    assert_eq!(trained.report.steps, 6);
    assert!(trained.report.eval_loss.unwrap() < trained.report.eval_loss_before.unwrap(), "it learns");
    let store = MemoryStore::new();
    let (first, cancelled) = train(&model, &lora, &store, Some(3));
    assert!(matches!(cancelled, Err(Error::Cancelled)));
    assert!(store.exists("checkpoint.safetensors").unwrap(), "cancelling saves the run");
    let (rest, resumed) = train(&model, &TrainConfig { resume: true, ..lora.clone() }, &store, None);
    let resumed = resumed.unwrap();
    assert_eq!([first, rest].concat(), straight, "resumed = straight");

    // Saved to bytes and back.
    let files = resumed.adapter.peft_files().unwrap();
    let reloaded = model.load_adapter(AdapterSource::Peft(files.clone()), &LoadOptions::default()).unwrap();
    assert_eq!(reloaded.info().training, resumed.adapter.info().training);
    let id = model.attach(&reloaded, 1.0).unwrap();
    let with_lora = model.logits(&TOKENS).unwrap();
    model.detach(id).unwrap();
    assert!(max_diff(&with_lora, &model.logits(&TOKENS).unwrap()) > 1e-3, "the adapter acts");

    // Compressed into a signed patch, verified, attached: it generates.
    let keys = patches::keygen().unwrap();
    let (secret, public) = (parse_secret_key(&keys.secret).unwrap(), parse_public_key(&keys.public).unwrap());
    assert_eq!(
        (secret.to_bytes(), public),
        (keys.signing_key.to_bytes(), keys.public_key),
        "the files hold the keys"
    );
    let source = patches::patch_of(&model, AdapterSource::Peft(files), DenseType::F16).unwrap();
    let options = CompressOptions { density: Density::Fraction(0.3), ..Default::default() };
    let compressed = patches::compress(&model, &source, &options, Some(&secret), &mut |_| {}).unwrap();
    assert!(compressed.report.ratio_vs_f16 > 1.0 && compressed.report.signed);
    let verified = patches::verify(&compressed.bytes, "notes.akp", &[public]).unwrap();
    assert_eq!(verified.signer.as_deref(), Some(keys.public_hex.as_str()));
    let trusted = LoadOptions { trusted_keys: vec![public], allow_port: false };
    let patch = model
        .load_adapter(AdapterSource::Patch { bytes: compressed.bytes, label: "notes.akp".into() }, &trusted)
        .unwrap();
    model.attach(&patch, 1.0).unwrap();
    generate(&model, &chat);
    let moved = max_diff(&with_lora, &all_logits(model.engine().model(), &TOKENS));
    assert!(
        max_diff(&model.logits(&TOKENS).unwrap(), &with_lora) < 0.5 * moved,
        "the patch acts like the adapter"
    );
    model.detach_all();
    assert_eq!(generate(&model, &chat), before, "detached, the model is the base again");

    // Prompt tuning the same way, saved into and loaded from a store.
    let prompt = TrainConfig {
        method: "prompt".parse().unwrap(),
        options: MethodOptions {
            virtual_tokens: Some(4),
            prompt_init: Some("notes:".into()),
            ..Default::default()
        },
        steps: 3,
        batch: 2,
        seq: 16,
        eval_every: 0,
        ..TrainConfig::default()
    };
    let run = MemoryStore::new();
    let (_, trained) = train(&model, &prompt, &run, None);
    let saved = std::sync::Arc::new(MemoryStore::new());
    trained.unwrap().adapter.save(saved.as_ref()).unwrap();
    assert_eq!(saved.keys(), ["adapter_config.json", "adapter_model.safetensors", "training.json"]);
    let soft = model.load_adapter(AdapterSource::Store(saved), &LoadOptions::default()).unwrap();
    assert_eq!(soft.method(), "prompt".parse::<MethodKind>().unwrap());
    model.attach(&soft, 1.0).unwrap();
    generate(&model, &chat);
}

/// A soft prompt takes positions in the cache: generation near the end of the context stops
/// with `ContextFull` (keeping the text so far) instead of failing, and a prompt that does not
/// fit with it is refused up front.
#[test]
fn a_soft_prompt_counts_against_the_context() {
    let model = tiny_model(false);
    let llama = model.engine().model();
    let dir = tempdir();
    PromptAdapter::new(20, PromptInit::SampledVocabulary, llama, 1).unwrap().save(&dir.0, llama).unwrap();
    let adapter = model.load_adapter(AdapterSource::Path(dir.0.clone()), &LoadOptions::default()).unwrap();
    model.attach(&adapter, 1.0).unwrap();
    let room = CONTEXT - 20;
    let ids: Vec<u32> = (0..room - 5).map(|i| 3 + (i % 100) as u32).collect();
    let options = GenerateOptions {
        max_tokens: 50,
        sampling: SamplingParams::greedy(),
        stop_at_eos: false,
        ..Default::default()
    };
    let report = model.generate_ids(&ids, &options, &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(report.stop, StopReason::ContextFull);
    assert_eq!(report.tokens.len(), 5, "the tokens that fit were generated");
    let full: Vec<u32> = (0..room).map(|i| 3 + (i % 100) as u32).collect();
    let err = model.generate_ids(&full, &options, &CancelToken::new(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::ContextOverflow { tokens, .. } if tokens == CONTEXT + 1), "{err}");
}

/// A soft prompt is on (1) or off (0); a scale in between is refused, naming it, and changes
/// nothing; 0 is the base model.
#[test]
fn a_soft_prompt_has_no_scale_between_off_and_on() {
    let model = tiny_model(false);
    let llama = model.engine().model();
    let dir = tempdir();
    PromptAdapter::new(4, PromptInit::SampledVocabulary, llama, 1).unwrap().save(&dir.0, llama).unwrap();
    let adapter = model.load_adapter(AdapterSource::Path(dir.0.clone()), &LoadOptions::default()).unwrap();
    let base = model.logits(&TOKENS).unwrap();
    let err = model.attach(&adapter, 0.5).unwrap_err();
    assert!(matches!(&err, Error::InvalidOption { field, .. } if field == "scale"), "{err}");
    assert!(model.attached().is_empty());
    let id = model.attach(&adapter, 0.0).unwrap();
    assert_eq!(model.logits(&TOKENS).unwrap(), base, "scale 0 is the base model");
    model.set_scale(id, 1.0).unwrap();
    assert_ne!(model.logits(&TOKENS).unwrap(), base);
    assert!(model.set_scale(id, 2.0).is_err());
    assert_eq!(model.attached()[0].scale, 1.0, "a refused change leaves the scale");
}

/// Training a PiSSA adapter leaves the model it trained on as it was, for every other caller.
#[test]
fn pissa_training_leaves_the_shared_model_unchanged() {
    let model = tiny_model(true);
    let before = model.logits(&TOKENS).unwrap();
    let config = TrainConfig {
        options: MethodOptions {
            rank: Some(4),
            init: Some(adaptkit::adapt::LoraInit::Pissa),
            ..Default::default()
        },
        steps: 2,
        batch: 2,
        seq: 16,
        lr: Some(1e-3),
        eval_every: 0,
        ..TrainConfig::default()
    };
    let (_, trained) = train(&model, &config, &MemoryStore::new(), None);
    let trained = trained.unwrap();
    assert_eq!(model.logits(&TOKENS).unwrap(), before, "the base model changed");
    // Saved as PEFT saves a converted PiSSA adapter: rank 2r, for the original base.
    let config: serde_json::Value =
        serde_json::from_slice(&trained.adapter.peft_files().unwrap().config_json).unwrap();
    assert_eq!(config["r"], 8);
    // And at the start it is exactly the base model (no requantized residual).
    let fresh =
        LoraAdapter::new_pissa(LoraConfig::new(4, 8.0, Projection::ALL.to_vec()), model.engine().model(), 0)
            .unwrap();
    assert_eq!(adapted_logits(model.engine().model(), &TOKENS, &fresh), before);
}

/// The thread count is checked before the model is read: a bad option is named even when the
/// model is missing.
#[test]
fn the_thread_count_is_checked_before_loading() {
    let err = Engine::load(
        "/nonexistent/m.gguf".as_ref(),
        &EngineOptions { threads: 100_000, ..Default::default() },
    )
    .err()
    .unwrap();
    assert!(matches!(&err, Error::InvalidOption { field, .. } if field == "threads"), "{err}");
}

/// Forward passes on a trainable model (evaluation, generation, a training run's held-out
/// evaluation) keep no memory after them: burn's autodiff registrations of passes that never
/// see a backward are released as they go, so memory stays flat however many windows there are.
#[test]
fn evaluating_and_generating_on_a_trainable_model_keep_no_memory() {
    use adaptkit::runtime::memory::rss_mb;
    let model = tiny_model(true);
    let text = NOTES.repeat(20);
    let data = TrainingData { eval: Some(Dataset::new("eval.txt", text.clone(), Format::Text)), ..notes() };
    let config = TrainConfig { steps: 1, batch: 1, seq: 16, eval_every: 0, ..Default::default() };
    let run = || {
        model.train(&data, &config, &MemoryStore::new(), &CancelToken::new(), &mut |_| {}).unwrap();
        model.perplexity(&text, 16, &CancelToken::new(), &mut |_, _| {}).unwrap();
        let ids: Vec<u32> = (0..20).map(|i| 3 + i).collect();
        let options = GenerateOptions {
            max_tokens: 250,
            sampling: SamplingParams::greedy(),
            stop_at_eos: false,
            ..Default::default()
        };
        model.generate_ids(&ids, &options, &CancelToken::new(), &mut |_| {}).unwrap();
    };
    run();
    let Some(before) = rss_mb() else { return eprintln!("skipped: no memory figure on this OS") };
    for _ in 0..3 {
        run();
    }
    let grown = rss_mb().unwrap() - before;
    eprintln!("resident memory grew by {grown:.1} MiB over 3 x (~1,100 windows + 250 tokens)");
    assert!(grown < 20.0, "resident memory grew by {grown:.1} MiB");
}

/// The README's library example is `core/examples/quickstart.rs`, which `cargo test` builds.
#[test]
fn the_readme_shows_the_quickstart_that_compiles() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/quickstart.rs");
    assert!(
        readme.contains(&format!("```rust\n{example}```")),
        "README.md's library example differs from core/examples/quickstart.rs"
    );
}

/// An app asks before it trains whether the run fits its memory: the plan is the one training
/// then follows, and a budget nothing fits is refused by name.
#[test]
fn the_plan_is_known_before_training() {
    let model = tiny_model(true);
    let config = TrainConfig {
        steps: 1,
        batch: 2,
        seq: 16,
        eval_every: 0,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    let planned = model.plan(&config).unwrap();
    let mut reported = None;
    let trained = model.train(&notes(), &config, &MemoryStore::new(), &CancelToken::new(), &mut |event| {
        if let TrainEvent::Plan(plan) = event {
            reported = Some(plan.clone());
        }
    });
    trained.unwrap();
    assert_eq!(reported, Some(planned));
    let tight = TrainConfig { memory_budget_mb: Some(1.0), ..config };
    assert!(
        matches!(model.plan(&tight), Err(Error::InvalidOption { field, .. }) if field == "memory_budget")
    );
}

/// A prompt of token ids generates what its text does; an id outside the vocabulary is an
/// error naming it.
#[test]
fn a_prompt_of_token_ids_is_its_text() {
    let model = tiny_model(false);
    let text = "saturday is bread day";
    let ids = model.tokenize(text, true).unwrap();
    assert_eq!(
        generate(&model, &greedy(Prompt::Tokens(ids), 8)),
        generate(&model, &greedy(Prompt::Text(text.into()), 8))
    );
    let bad = Prompt::Tokens(vec![1, VOCAB as u32]);
    let err = model.generate(&greedy(bad, 4), &CancelToken::new(), &mut |_| {}).unwrap_err();
    assert!(matches!(&err, Error::InvalidOption { field, .. } if field == "prompt.tokens"), "{err}");
}

/// `bytes` with the first `from` replaced by `to` (of the same length).
fn replaced(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at =
        bytes.windows(from.len()).position(|w| w == from.as_bytes()).unwrap_or_else(|| panic!("no {from}"));
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

/// A checkpoint resumes only whole and only into the run it belongs to: a damaged or edited one
/// fails its checksum, one of a run with other settings is refused naming the setting, and a
/// resumed run reports the whole run (its tokens, its first held-out loss, each evaluation
/// once), also when it had already finished.
#[test]
fn a_checkpoint_resumes_only_intact_and_into_its_own_run() {
    use adaptkit::train::checkpoint::KEY;
    let model = tiny_model(true);
    let config =
        TrainConfig { steps: 4, batch: 2, seq: 16, eval_every: 2, checkpoint_every: 2, ..Default::default() };
    let straight = train(&model, &config, &MemoryStore::new(), None).1.unwrap().report;
    let store = MemoryStore::new();
    assert!(matches!(train(&model, &config, &store, Some(2)).1, Err(Error::Cancelled)));
    let good = store.read(KEY).unwrap().unwrap();
    let resume = TrainConfig { resume: true, ..config.clone() };
    let refused = |bytes: &[u8], config: &TrainConfig| -> String {
        store.write(KEY, bytes).unwrap();
        let result = model.train(&notes(), config, &store, &CancelToken::new(), &mut |_| {});
        let err = result.err().expect("refused").to_string();
        assert!(err.contains("memory:checkpoint.safetensors"), "names the checkpoint: {err}");
        err
    };

    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    for damaged in [flipped, replaced(&good, r#"\"step\":2"#, r#"\"step\":1"#)] {
        let err = refused(&damaged, &resume);
        assert!(err.contains("fails its checksum"), "{err}");
    }
    let other = |options: MethodOptions| TrainConfig { options, ..resume.clone() };
    let targets =
        other(MethodOptions { targets: Some(vec![Projection::Q, Projection::V]), ..Default::default() });
    for (config, setting) in [
        (targets, "options.targets = \"q,k,v,o,gate,up,down\" (this run: \"q,v\")"),
        (
            other(MethodOptions { alpha: Some(32.0), ..Default::default() }),
            "options.alpha = \"16\" (this run: \"32\")",
        ),
        (TrainConfig { seed: 1, ..resume.clone() }, "seed = 0 (this run: 1)"),
    ] {
        let err = refused(&good, &config);
        assert!(err.contains(&format!("started with {setting}")), "{err}");
    }
    // Options as given or as defaulted are the same options.
    let explicit = other(MethodOptions {
        rank: Some(8),
        targets: Some(vec![
            Projection::Down,
            Projection::Q,
            Projection::K,
            Projection::V,
            Projection::O,
            Projection::Gate,
            Projection::Up,
        ]),
        ..Default::default()
    });
    store.write(KEY, &good).unwrap();
    let resumed = train(&model, &explicit, &store, None).1.unwrap().report;
    let finished = train(&model, &resume, &store, None).1.unwrap().report;
    for report in [&resumed, &finished] {
        assert_eq!(report.tokens, straight.tokens);
        assert_eq!(report.eval_loss_before, straight.eval_loss_before);
        assert_eq!(report.train_loss, straight.train_loss);
        let steps =
            |r: &adaptkit::runtime::TrainingReport| r.evaluations.iter().map(|e| e.step).collect::<Vec<_>>();
        assert_eq!(steps(report), vec![0, 2, 4]);
        assert_eq!(report.eval_loss, straight.eval_loss);
    }
}

/// A scale that drives the model's output to infinity or NaN is an error naming the adapter and
/// its scale, in generation and in perplexity alike, never empty text or a NaN figure.
#[test]
fn a_scale_that_makes_outputs_non_finite_is_an_error_naming_the_adapter() {
    let model = tiny_model(true);
    let config = TrainConfig { steps: 2, batch: 2, seq: 16, ..Default::default() };
    let lora = train(&model, &config, &MemoryStore::new(), None).1.unwrap().adapter;
    model.attach(&lora, 1e30).unwrap();
    let request = greedy(Prompt::Text("the bees".into()), 4);
    let err = model.generate(&request, &CancelToken::new(), &mut |_| {}).expect_err("refused");
    let message = err.to_string();
    assert_eq!(err.kind(), adaptkit::ErrorKind::Adapter, "{message}");
    assert!(message.starts_with("the next-token logits (with lora trained lora at scale 1000"), "{message}");
    let err = model.perplexity(&NOTES.repeat(2), 16, &CancelToken::new(), &mut |_, _| {}).err().unwrap();
    assert!(err.to_string().starts_with("the loss of window 1 (with lora"), "{err}");
    model.detach_all();
    model.generate(&request, &CancelToken::new(), &mut |_| {}).unwrap();
}
