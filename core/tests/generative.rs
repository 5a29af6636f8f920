//! The context-to-adapter generator (`methods.md` §1.7) on the tiny random model: a zero `B`
//! or an empty context is the base model; the state is a sum over tokens however they are
//! split; the generated LoRA computes exactly what the generator does and merges to it;
//! gradients match finite differences; training lowers the held-out reconstruction loss and
//! resumes exactly; and the runtime refuses bad generators, bases and contexts without changing
//! the model.

use adaptkit::adapt::generative::{BatchContexts, ContextState, Generator, GeneratorConfig};
use adaptkit::adapt::merge::MergedType;
use adaptkit::adapt::{AdapterSet, Method};
use adaptkit::burn::tensor::{Device, Tensor, TensorData};
use adaptkit::control::CancelToken;
use adaptkit::device::wait;
use adaptkit::engine::ModelSource;
use adaptkit::model::{Decoder, Projection};
use adaptkit::quant::GgmlType;
use adaptkit::runtime::personalize::GeneratorSource;
use adaptkit::runtime::{Context, Model, OpenOptions};
use adaptkit::store::MemoryStore;
use adaptkit::train::generator::{fit_generator, GeneratorTrainOptions};
use adaptkit::train::{checkpoint, next_token_loss, Checkpointing, TrainState};
use adaptkit::Error;

mod common;
use common::*;

const CONTEXT_TOKENS: [u32; 16] = [5, 9, 33, 2, 71, 8, 8, 120, 14, 3, 66, 91, 40, 7, 23, 100];

fn config(window: usize) -> GeneratorConfig {
    GeneratorConfig { r1: 6, r2: 4, alpha: 8.0, targets: vec![Projection::O, Projection::Down], window }
}

/// A generator with every parameter moved (so `B` is not zero and it changes the model).
fn moved_generator(model: &Decoder, window: usize) -> Generator {
    let mut generator = Generator::new(config(window), model, 3).unwrap();
    let mut r = Rng(81);
    for (_, param) in generator.parameters_mut() {
        let dims = param.dims();
        let mut values = param.clone().into_data().try_to_vec::<f32>().unwrap();
        values.iter_mut().for_each(|v| *v += 0.3 * r.next());
        *param = Tensor::from_data(TensorData::new(values, dims), &param.device());
    }
    generator
}

/// The block inputs of `tokens` as `rows` rows, for a training-style context.
fn hidden_of(model: &Decoder, tokens: &[u32], rows: usize) -> Vec<Tensor<3>> {
    let mut hidden = Vec::new();
    Generator::block_inputs(model, tokens, rows, &mut |_, x| {
        hidden.push(x.clone());
        Ok(())
    })
    .unwrap();
    hidden
}

fn select(values: Vec<f32>, rows: usize, chunks: usize) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, chunks]), &Device::flex())
}

fn encoded(generator: &Generator, model: &Decoder, pieces: &[&[u32]]) -> ContextState {
    let mut state = generator.empty_state();
    for piece in pieces {
        wait(generator.encode(model, piece, &mut state, &CancelToken::new())).unwrap();
    }
    state
}

fn tiny(dir: &TempDir, seed: u64) -> (std::path::PathBuf, Decoder) {
    let path = dir.join(&format!("tiny-{seed}.gguf"));
    Weights::random(seed).write_gguf(&path, GgmlType::Q8_0, None);
    let model = load_gguf(&path);
    (path, model)
}

#[test]
fn a_fresh_generator_and_an_empty_context_leave_the_model_as_it_was() {
    let dir = tempdir();
    let (_, model) = tiny(&dir, 60);
    let base = all_logits(&model, &TOKENS);
    // B = 0: whatever the context, the update is zero, bit for bit.
    let mut fresh = Generator::new(config(8), &model, 1).unwrap();
    let hidden = hidden_of(&model, &CONTEXT_TOKENS, 2);
    fresh.set_contexts(Some(BatchContexts { hidden, select: select(vec![1.0, 1.0], 1, 2) })).unwrap();
    assert_eq!(adapted_logits(&model, &TOKENS, &fresh), base);
    // A trained generator with nothing read: a zero update.
    let generator = moved_generator(&model, 8);
    let lora = generator.generate(&generator.empty_state(), &model).unwrap();
    assert!(max_diff(&adapted_logits(&model, &TOKENS, &lora), &base) < 1e-6);
    // While it has read something, it changes the model.
    let lora = generator.generate(&encoded(&generator, &model, &[&CONTEXT_TOKENS]), &model).unwrap();
    assert!(max_diff(&adapted_logits(&model, &TOKENS, &lora), &base) > 1e-2);
}

#[test]
fn the_state_is_a_sum_over_tokens_however_they_are_split() {
    let dir = tempdir();
    let (_, model) = tiny(&dir, 61);
    let generator = moved_generator(&model, 8);
    // Two windows of 8 read at once, or as two pieces: the same windows, the same state.
    let whole = encoded(&generator, &model, &[&CONTEXT_TOKENS]);
    let pieces = encoded(&generator, &model, &[&CONTEXT_TOKENS[..8], &CONTEXT_TOKENS[8..]]);
    assert_eq!(whole.tokens, 16);
    for (site, sum) in &whole.sums {
        let scale = sum.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        assert!(max_diff(sum, &pieces.sums[site]) <= 1e-5 * scale, "{site:?}");
    }
    // Given the same block inputs, the state of the tokens split into chunks equals the state
    // of all of them as one sequence (the training path's sum over chunks): same logits.
    let hidden = hidden_of(&model, &CONTEXT_TOKENS[..8], 1);
    let as_one: Vec<Tensor<3>> = hidden.iter().map(|h| Tensor::cat(vec![h.clone(), h.clone()], 1)).collect();
    let as_chunks: Vec<Tensor<3>> =
        hidden.iter().map(|h| Tensor::cat(vec![h.clone(), h.clone()], 0)).collect();
    let mut one = moved_generator(&model, 8);
    one.set_contexts(Some(BatchContexts { hidden: as_one, select: select(vec![1.0], 1, 1) })).unwrap();
    let mut chunked = moved_generator(&model, 8);
    chunked
        .set_contexts(Some(BatchContexts { hidden: as_chunks, select: select(vec![1.0, 1.0], 1, 2) }))
        .unwrap();
    let diff = max_diff(&adapted_logits(&model, &TOKENS, &one), &adapted_logits(&model, &TOKENS, &chunked));
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn the_generated_lora_is_the_generator_closed_form_and_merges() {
    let dir = tempdir();
    let (path, model) = tiny(&dir, 62);
    let base = all_logits(&model, &TOKENS);
    let generator = moved_generator(&model, 8);
    // The generator's own path: the context's two windows as two chunks of one row.
    let mut states_path = generator.clone();
    let hidden = hidden_of(&model, &CONTEXT_TOKENS, 2);
    states_path.set_contexts(Some(BatchContexts { hidden, select: select(vec![1.0, 1.0], 1, 2) })).unwrap();
    let want = adapted_logits(&model, &TOKENS, &states_path);
    // The weights path: the LoRA it generates from the streamed state.
    let lora = generator.generate(&encoded(&generator, &model, &[&CONTEXT_TOKENS]), &model).unwrap();
    assert_eq!(lora.config().rank, 4);
    let got = adapted_logits(&model, &TOKENS, &lora);
    let moved = max_diff(&want, &base);
    assert!(moved > 1e-2, "{moved}");
    assert!(max_diff(&got, &want) < 1e-4 * moved.max(1.0), "{} vs moved {moved}", max_diff(&got, &want));
    // Merged into the weights, it gives the same logits.
    let mut set = AdapterSet::new();
    set.push(Box::new(lora) as Box<dyn Method>, 1.0).unwrap();
    let merged_path = dir.join("merged.gguf");
    write_merged(&path, &set, MergedType::Fixed(GgmlType::F32), &merged_path);
    let merged = all_logits(&load_gguf(&merged_path), &TOKENS);
    assert!(max_diff(&merged, &got) < 1e-3, "{}", max_diff(&merged, &got));
}

#[test]
fn generator_gradients_match_finite_differences() {
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(63).write_gguf(&path, GgmlType::Q8_0, None);
    let model = load_for_training(&path);
    let mut generator = moved_generator(&model, 8);
    let hidden: Vec<Tensor<3>> =
        hidden_of(&model, &CONTEXT_TOKENS, 2).into_iter().map(|h| h.set_require_grad(false)).collect();
    let chunks = select(vec![1.0, 1.0], 1, 2);
    generator.set_contexts(Some(BatchContexts { hidden, select: chunks })).unwrap();
    for (_, p) in generator.parameters_mut() {
        *p = p.clone().require_grad();
    }
    let grads = next_token_loss(&model, &generator, &TOKENS, 1).unwrap().backward();
    // The context side (norm, A₂, A₃) and the applied side (A₁, B) of both targets.
    let names = [
        "layers.0.o_proj.a2",
        "layers.1.o_proj.a3",
        "layers.0.down_proj.norm",
        "layers.1.down_proj.a1",
        "layers.0.down_proj.b",
    ];
    let params = generator.parameters();
    let picks: Vec<(String, usize, f32)> = params
        .iter()
        .filter(|(name, _)| names.contains(&name.as_str()))
        .map(|(name, param)| {
            let g = param.grad(&grads).expect("tracked").into_data().try_to_vec::<f32>().unwrap();
            let at = (0..g.len()).max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs())).unwrap();
            (name.clone(), at, g[at])
        })
        .collect();
    drop(params);
    assert_eq!(picks.len(), 5, "{picks:?}");
    for (name, at, g) in picks {
        assert!(g != 0.0, "{name} has no gradient");
        assert_finite_difference(&model, &mut generator, &name, at, g, 1e-2);
    }
    // Activation checkpointing (blocks recomputed in backward) gives the same gradients.
    let (_, kept) =
        adaptkit::train::loss_and_gradients(&model, &mut generator, &TOKENS, None, 1, false).unwrap();
    let (_, recomputed) =
        adaptkit::train::loss_and_gradients(&model, &mut generator, &TOKENS, None, 1, true).unwrap();
    assert_same_gradients(&kept, &recomputed);
}

/// Documents for the tiny model: each a few random words repeated, so what a context holds
/// says what its reconstruction windows hold.
fn documents(seed: u64, count: usize, len: usize) -> Vec<Vec<u32>> {
    let mut r = Rng(seed);
    (0..count)
        .map(|_| {
            let words: Vec<u32> = (0..6).map(|_| ((r.next() * 0.5 + 0.5) * 127.0) as u32 + 1).collect();
            (0..len).map(|i| words[(i * 7 + i / 5) % words.len()]).collect()
        })
        .collect()
}

fn train_options(steps: usize) -> GeneratorTrainOptions {
    GeneratorTrainOptions {
        steps,
        documents: 2,
        chunks: 3,
        chunk_len: 8,
        lr: 1e-2,
        warmup: 2,
        eval_every: 0,
        eval_samples: 4,
        ..GeneratorTrainOptions::default()
    }
}

fn trainable_generator(model: &Decoder) -> Generator {
    let mut generator = Generator::new(config(8), model, 5).unwrap();
    for (_, p) in generator.parameters_mut() {
        *p = p.clone().require_grad();
    }
    generator
}

#[test]
fn training_lowers_the_reconstruction_loss_and_resumes_exactly() {
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(64).write_gguf(&path, GgmlType::Q8_0, None);
    let model = load_for_training(&path);
    let (docs, held_out) = (documents(1, 24, 40), documents(2, 6, 40));
    let cancel = CancelToken::new();
    let mut generator = trainable_generator(&model);
    let report = wait(fit_generator(
        &model,
        &mut generator,
        &docs,
        &held_out,
        &train_options(40),
        Checkpointing::default(),
        &cancel,
        &mut |_| {},
    ))
    .unwrap();
    let (first, last) = (report.evaluations[0], *report.evaluations.last().unwrap());
    eprintln!("{first:?} -> {last:?}");
    assert_eq!(first.reconstruction, first.reconstruction_base, "a fresh generator is the base");
    assert!(
        last.reconstruction < 0.9 * last.reconstruction_base,
        "reconstruction {} vs base {}",
        last.reconstruction,
        last.reconstruction_base
    );

    // Stopped after 3 of 6 steps and resumed from the checkpoint: the same generator as 6 in one go.
    let store = MemoryStore::new();
    let mut straight = trainable_generator(&model);
    wait(fit_generator(
        &model,
        &mut straight,
        &docs,
        &held_out,
        &train_options(6),
        Checkpointing::default(),
        &cancel,
        &mut |_| {},
    ))
    .unwrap();
    let mut stopped = trainable_generator(&model);
    let stop = CancelToken::new();
    let result = wait(fit_generator(
        &model,
        &mut stopped,
        &docs,
        &held_out,
        &train_options(6),
        Checkpointing { save: Some((&store, checkpoint::KEY, 100)), ..Default::default() },
        &stop,
        &mut |step| {
            if step.step == 3 {
                stop.cancel();
            }
        },
    ));
    assert!(matches!(result, Err(Error::Cancelled)));
    let mut resumed = trainable_generator(&model);
    let bytes = adaptkit::store::Store::read(&store, checkpoint::KEY).unwrap().unwrap();
    let state: TrainState = checkpoint::load(bytes, "checkpoint", &mut resumed, &Default::default()).unwrap();
    assert_eq!(state.step, 3);
    wait(fit_generator(
        &model,
        &mut resumed,
        &docs,
        &held_out,
        &train_options(6),
        Checkpointing { resume: Some(state), ..Default::default() },
        &cancel,
        &mut |_| {},
    ))
    .unwrap();
    let host = |t: &Tensor<2>| t.clone().into_data().try_to_vec::<f32>().unwrap();
    for ((name, a), (_, b)) in straight.parameters().into_iter().zip(resumed.parameters()) {
        assert!(max_diff(&host(a), &host(b)) < 1e-6, "{name}");
    }
}

fn tiny_runtime_model(seed: u64) -> Model {
    let bytes = Weights::random(seed).gguf_bytes(GgmlType::Q8_0);
    Model::open(ModelSource::Gguf(bytes), &OpenOptions { threads: 2, ..Default::default() }).unwrap()
}

/// A trained generator's file for `model`, through the runtime (a short run on the corpus).
fn generator_file(model: &Model, seed: u64) -> Vec<u8> {
    let docs: Vec<String> = (0..12)
        .map(|i| format!("note {i}: the bees are out and henrik the starter is fed at seven. ").repeat(3))
        .collect();
    let trainable = Model::open(
        ModelSource::Gguf(Weights::random(70).gguf_bytes(GgmlType::Q8_0)),
        &OpenOptions { threads: 2, trainable: true, ..Default::default() },
    )
    .unwrap();
    assert_eq!(trainable.fingerprint().unwrap().id, model.fingerprint().unwrap().id);
    let options = GeneratorTrainOptions { seed, ..train_options(2) };
    let (bytes, _) = trainable
        .train_generator(
            &config(8),
            &docs,
            6,
            &options,
            None,
            serde_json::json!({"corpus": "test"}),
            &CancelToken::new(),
            &mut |_| {},
        )
        .unwrap();
    bytes
}

#[test]
fn the_runtime_personalizes_and_refuses_what_it_cannot_use() {
    let model = tiny_runtime_model(70);
    let bytes = generator_file(&model, 0);
    let generator =
        model.load_generator(GeneratorSource::Bytes { bytes: bytes.clone(), label: "g".into() }).unwrap();
    let training = generator.info().training.clone().unwrap();
    assert_eq!(training["run"]["corpus"], "test");
    assert_eq!(
        (training["run"]["documents"].as_u64(), training["run"]["held_out_documents"].as_u64()),
        (Some(10), Some(2))
    );
    let cancel = CancelToken::new();
    let text = "the starter is called henrik and the bees are warm. ".repeat(4);
    let (adapter, context, report) = model.personalize(&generator, &text, &cancel).unwrap();
    assert_eq!(report.tokens, context.tokens());
    // Streaming: the state survives bytes and takes more text.
    let mut restored = Context::from_bytes(context.to_bytes().unwrap(), "state", &generator).unwrap();
    assert_eq!(restored, context);
    model.read_context(&generator, &mut restored, "more text about the hive.", &cancel).unwrap();
    assert!(restored.tokens() > context.tokens());
    // Generated adapters compose with each other and with a LoRA from PEFT like any LoRA.
    let dir = tempdir();
    Lora::random(9, 2, false).write_peft(&dir.0);
    let loaded = model
        .load_adapter(adaptkit::runtime::AdapterSource::Path(dir.0.clone()), &Default::default())
        .unwrap();
    let id = model.attach(&adapter, 1.0).unwrap();
    let more = model.generated_adapter(&generator, &restored).unwrap();
    model.attach(&more, 0.5).unwrap();
    let base_only = tiny_runtime_model(70).logits(&TOKENS).unwrap();
    let two = model.logits(&TOKENS).unwrap();
    model.attach(&loaded, 1.0).unwrap();
    assert_eq!(model.attached().len(), 3);
    let three = model.logits(&TOKENS).unwrap();
    assert!(max_diff(&two, &base_only) > 0.0 && max_diff(&three, &two) > 1e-3);
    model.detach(id).unwrap();
    let before = model.logits(&TOKENS).unwrap();
    let attached = model.attached().len();

    let refused = |result: Result<(), Error>, needle: &str| {
        let message = result.expect_err("refused").to_string();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    };
    refused(model.personalize(&generator, "", &cancel).map(|_| ()), "empty");
    let huge = "a".repeat(adaptkit::runtime::personalize::MAX_CONTEXT_TOKENS + 1);
    refused(model.personalize(&generator, &huge, &cancel).map(|_| ()), "at most");
    let mut corrupt = bytes.clone();
    let at = corrupt.len() - 5;
    corrupt.truncate(at);
    refused(
        model.load_generator(GeneratorSource::Bytes { bytes: corrupt, label: "cut".into() }).map(|_| ()),
        "cut",
    );
    refused(
        model
            .load_generator(GeneratorSource::Bytes { bytes: b"not a file".to_vec(), label: "junk".into() })
            .map(|_| ()),
        "junk",
    );
    // A generator whose stated rank is not its tensors' (same header length: 4 → 5).
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    assert!(header.contains(r#"\"r2\":4"#), "{header}");
    let mut other_rank = bytes[..8].to_vec();
    other_rank.extend(header.replace(r#"\"r2\":4"#, r#"\"r2\":5"#).into_bytes());
    other_rank.extend(&bytes[8 + header_len..]);
    refused(
        model.load_generator(GeneratorSource::Bytes { bytes: other_rank, label: "rank".into() }).map(|_| ()),
        "expected [",
    );
    let other_base = tiny_runtime_model(71);
    refused(
        other_base
            .load_generator(GeneratorSource::Bytes { bytes: bytes.clone(), label: "g".into() })
            .map(|_| ()),
        "trained for base model",
    );
    // A state another generator made.
    let other = GeneratorSource::Bytes { bytes: generator_file(&model, 1), label: "other".into() };
    let other = model.load_generator(other).unwrap();
    assert_ne!(other.info().id, generator.info().id);
    refused(
        Context::from_bytes(context.to_bytes().unwrap(), "state", &other).map(|_| ()),
        "made by generator",
    );
    // Training needs a trainable model, and a checkpoint resumes only the run that made it.
    let docs: Vec<String> = (0..12).map(|i| format!("note {i}: the hive is warm. ").repeat(6)).collect();
    let train = |model: &Model, config: &GeneratorConfig, store: &MemoryStore| {
        let options = train_options(1);
        let record = serde_json::Value::Null;
        model
            .train_generator(config, &docs, 6, &options, Some(store), record, &cancel, &mut |_| {})
            .map(|_| ())
    };
    let store = MemoryStore::new();
    refused(train(&model, &config(8), &store), "opened for inference");
    let trainable = Model::open(
        ModelSource::Gguf(Weights::random(70).gguf_bytes(GgmlType::Q8_0)),
        &OpenOptions { threads: 2, trainable: true, ..Default::default() },
    )
    .unwrap();
    train(&trainable, &config(8), &store).unwrap();
    refused(
        train(&trainable, &GeneratorConfig { alpha: 4.0, ..config(8) }, &store),
        "started with generator.alpha = 8.0 (this run: 4.0)",
    );
    // Nothing about the model changed.
    assert_eq!(model.attached().len(), attached);
    assert_eq!(model.logits(&TOKENS).unwrap(), before);
}

/// The generator committed for the demo model: an adapter generated from the first part of the
/// sample journal (text it never saw in training) lowers the perplexity of the journal's last
/// entries below the base model's.
#[test]
fn the_committed_generator_lowers_the_perplexity_of_the_rest_of_its_context() {
    let Some(path) = real_model() else { return };
    let generator_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(generator_file_name());
    let model = Model::open(ModelSource::Path(path), &OpenOptions::default()).unwrap();
    let generator = model.load_generator(GeneratorSource::Path(generator_path)).unwrap();
    let journal =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/sample/journal.txt")).unwrap();
    let (context, held_out) =
        (&journal[..entry_break(&journal, 8000)], &journal[entry_break(&journal, 60000)..]);
    let cancel = CancelToken::new();
    let base = model.perplexity(held_out, 256, &cancel, &mut |_, _| {}).unwrap().perplexity;
    let (adapter, context, _) = model.personalize(&generator, context, &cancel).unwrap();
    assert!(context.tokens() > 1500, "{}", context.tokens());
    model.attach(&adapter, 1.0).unwrap();
    let adapted = model.perplexity(held_out, 256, &cancel, &mut |_, _| {}).unwrap().perplexity;
    eprintln!("held-out perplexity: base {base:.3}, with the generated adapter {adapted:.3}");
    // Measured: 10.529 -> 10.275 (2.4% lower; README, "Personalize from a context").
    assert!(adapted < 0.99 * base, "base {base} vs generated {adapted}");
}

/// The generator's file name, from `scripts/model.env` (where `adaptkit fetch` reads it).
fn generator_file_name() -> &'static str {
    include_str!("../../scripts/model.env").lines().find_map(|l| l.strip_prefix("GENERATOR=")).unwrap()
}

/// The byte index just after the first blank line (an entry break) at or after `at`.
fn entry_break(text: &str, at: usize) -> usize {
    let at = (0..=at.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    text[at..].find("\n\n").map_or(text.len(), |i| at + i + 2)
}

/// On the GPU (lavapipe in CI) the generator trains like on the CPU (loss and gradients with a
/// batch of contexts) and generates the same adapter from a streamed context.
#[test]
fn the_gpu_trains_and_generates_like_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(65).write_gguf(&path, GgmlType::Q4_1, None);
    let gguf = adaptkit::format::gguf::GgufFile::open(&path).unwrap();
    let saved = dir.join("generator");
    let cpu = Decoder::from_gguf(&gguf, &Device::flex().autodiff()).unwrap();
    moved_generator(&cpu, 8).save(&saved, &cpu).unwrap();
    let mut results = Vec::new();
    for device in [Device::flex().autodiff(), gpu.autodiff()] {
        let model = Decoder::from_gguf(&gguf, &device).unwrap();
        let peft = adaptkit::format::peft::PeftDir::read(&saved).unwrap();
        let mut generator = Generator::from_peft(&peft, &model).unwrap();
        let lora = generator.generate(&encoded(&generator, &model, &[&CONTEXT_TOKENS]), &model).unwrap();
        let logits = adapted_logits(&model, &TOKENS, &lora);
        let hidden = hidden_of(&model, &CONTEXT_TOKENS, 2);
        let select = Tensor::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0, 1.0], [2, 2]), &device);
        generator.set_contexts(Some(BatchContexts { hidden, select })).unwrap();
        for (_, p) in generator.parameters_mut() {
            *p = p.clone().require_grad();
        }
        let rows: Vec<u32> = TOKENS.iter().chain(TOKENS.iter().rev()).copied().collect();
        let (loss, grads) =
            adaptkit::train::loss_and_gradients(&model, &mut generator, &rows, None, 2, false).unwrap();
        results.push((logits, loss, grads));
    }
    let ((cpu_logits, cpu_loss, cpu_grads), (gpu_logits, gpu_loss, gpu_grads)) = (&results[0], &results[1]);
    assert!(max_diff(cpu_logits, gpu_logits) < 2e-4, "{}", max_diff(cpu_logits, gpu_logits));
    assert!((cpu_loss - gpu_loss).abs() < 1e-4 * cpu_loss.abs(), "{cpu_loss} vs {gpu_loss}");
    assert_same_gradients(cpu_grads, gpu_grads);
}
