//! The adaptation methods beyond LoRA on the tiny random model: each starts as the base model,
//! merges to what it computes unmerged, survives its save format, trains the same with and
//! without activation checkpointing, and its soft prompt equals the tokens it stands for.

use adaptkit::adapt::dept::{DeptAdapter, DeptConfig};
use adaptkit::adapt::dora::DoraAdapter;
use adaptkit::adapt::ia3::{Ia3Adapter, Ia3Config};
use adaptkit::adapt::lofit::LofitAdapter;
use adaptkit::adapt::merge::MergedType;
use adaptkit::adapt::peqa::PeqaAdapter;
use adaptkit::adapt::prefix::PrefixAdapter;
use adaptkit::adapt::prompt::{PromptAdapter, PromptInit};
use adaptkit::adapt::{self, AdapterSet, LoraAdapter, LoraConfig, Method, MethodKind};
use adaptkit::burn::tensor::{Device, Tensor, TensorData};
use adaptkit::model::{Llama, NoAdapters, Projection};
use adaptkit::quant::GgmlType;
use adaptkit::train::{checkpoint, loss_and_gradients, next_token_loss, TrainState};
use adaptkit::Error;

mod common;
use common::*;

/// `method` with every parameter moved by up to `±scale`, so that it changes the model.
fn perturbed(mut method: Box<dyn Method>, seed: u64, scale: f32) -> Box<dyn Method> {
    let mut r = Rng(seed);
    for (_, param) in method.parameters_mut() {
        let dims = param.dims();
        let mut values = param.clone().into_data().try_to_vec::<f32>().unwrap();
        values.iter_mut().for_each(|v| *v += scale * r.next());
        *param = Tensor::from_data(TensorData::new(values, dims), &param.device());
    }
    method
}

fn logits_with(model: &Llama, method: &dyn Method) -> Vec<f32> {
    adapted_logits(model, &TOKENS, method)
}

fn model_in(dir: &TempDir, ty: GgmlType) -> Llama {
    let path = dir.join(&format!("{}.gguf", ty.name()));
    Weights::random(40).write_gguf(&path, ty, None);
    load_gguf(&path)
}

fn lora_config() -> LoraConfig {
    LoraConfig::new(4, 8.0, Projection::ALL.to_vec())
}

/// Every method, fresh, on `model` (LoFiT in its offsets stage on two heads).
fn fresh_methods(model: &Llama) -> Vec<Box<dyn Method>> {
    let dept = DeptConfig { tokens: 3, rank: 4, alpha: 8.0, max_len: 8, embedding_lr_ratio: 0.1 };
    vec![
        Box::new(LoraAdapter::new(lora_config(), model, 1).unwrap()),
        Box::new(DoraAdapter::new(lora_config(), model, 2).unwrap()),
        Box::new(Ia3Adapter::new(Ia3Config::default(), model).unwrap()),
        Box::new(PromptAdapter::new(4, PromptInit::SampledVocabulary, model, 3).unwrap()),
        Box::new(PrefixAdapter::new(4, model, 4).unwrap()),
        Box::new(DeptAdapter::new(dept, PromptInit::SampledVocabulary, model, 5).unwrap()),
        Box::new(PeqaAdapter::new(Projection::ALL.to_vec(), model).unwrap()),
        Box::new(LofitAdapter::offsets(&[(0, 1), (1, 3)], model, 6).unwrap()),
    ]
}

#[test]
fn the_registry_names_every_method_once() {
    for kind in MethodKind::all() {
        assert_eq!(kind.name().parse::<MethodKind>().unwrap(), kind);
    }
    let unknown = "lorra".parse::<MethodKind>().unwrap_err().to_string();
    assert!(unknown.contains("method = lorra: unknown method") && unknown.contains("dept"), "{unknown}");
    // Every fresh method is the registry's, by kind.
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q4_1);
    let kinds: Vec<MethodKind> = fresh_methods(&model).iter().map(|m| m.kind()).collect();
    assert_eq!(kinds, MethodKind::all().collect::<Vec<_>>());
}

#[test]
fn new_adapters_leave_the_model_as_it_was() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q4_1);
    let base = all_logits(&model, &TOKENS);
    for method in fresh_methods(&model) {
        let kind = method.kind();
        // Soft prompts add positions by design; the rest start at the identity.
        if matches!(kind.name(), "prompt" | "prefix" | "dept" | "lofit") {
            continue;
        }
        let diff = max_diff(&logits_with(&model, method.as_ref()), &base);
        assert!(diff < 1e-4, "{}: a new adapter moved the logits by {diff}", kind.name());
    }
    // A soft prompt of length 0 is the base model.
    let empty = PromptAdapter::new(0, PromptInit::SampledVocabulary, &model, 0).unwrap();
    assert_eq!(logits_with(&model, &empty), base);
}

#[test]
fn every_method_loads_what_it_saved() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q4_1);
    let base = all_logits(&model, &TOKENS);
    for (i, method) in fresh_methods(&model).into_iter().enumerate() {
        let name = method.kind().name();
        let method = perturbed(method, 50 + i as u64, 0.05);
        let path = dir.join(name);
        method.save(&path, &model).unwrap();
        let loaded = adapt::load(&path, &model).unwrap();
        assert_eq!(loaded.kind(), method.kind());
        let want = logits_with(&model, loaded.as_ref());
        assert!(max_diff(&want, &base) > 1e-3, "{name}: the perturbed adapter must change the model");
        loaded.save(&dir.join(&format!("{name}-again")), &model).unwrap();
        let again = adapt::load(&dir.join(&format!("{name}-again")), &model).unwrap();
        assert_eq!(logits_with(&model, again.as_ref()), want, "{name}: a second round trip changed it");
        let diff = max_diff(&logits_with(&model, method.as_ref()), &want);
        assert!(diff < 1e-4, "{name}: saved and loaded, the logits moved by {diff}");
    }
}

/// Writes the merged GGUF of `set` in F32 and returns its logits.
fn merged_logits(
    dir: &TempDir,
    base: &std::path::Path,
    set: &AdapterSet,
    ty: MergedType,
    name: &str,
) -> Vec<f32> {
    let out = dir.join(name);
    write_merged(base, set, ty, &out);
    all_logits(&load_gguf(&out), &TOKENS)
}

#[test]
fn mergeable_methods_merge_to_what_they_compute() {
    let dir = tempdir();
    let base_path = dir.join("base.gguf");
    Weights::random(41).write_gguf(&base_path, GgmlType::Q8_0, None);
    let model = load_gguf(&base_path);
    let base = all_logits(&model, &TOKENS);
    let methods: Vec<Box<dyn Method>> = vec![
        perturbed(Box::new(DoraAdapter::new(lora_config(), &model, 2).unwrap()), 60, 0.05),
        perturbed(Box::new(Ia3Adapter::new(Ia3Config::default(), &model).unwrap()), 61, 0.3),
        perturbed(Box::new(PeqaAdapter::new(Projection::ALL.to_vec(), &model).unwrap()), 62, 0.1),
        perturbed(Box::new(LofitAdapter::selection(&model, 0.0, 7).unwrap()), 63, 0.3),
        perturbed(Box::new(LofitAdapter::offsets(&[(0, 0), (1, 2), (1, 3)], &model, 8).unwrap()), 64, 0.5),
    ];
    for method in methods {
        let name = format!("{}-{}", method.kind().name(), method.parameters().len());
        let unmerged = logits_with(&model, method.as_ref());
        let moved = max_diff(&unmerged, &base);
        assert!(moved > 0.02, "{name}: the adapter must change the model ({moved})");
        let mut set = AdapterSet::new();
        set.push(method, 1.0).unwrap();
        let merged =
            merged_logits(&dir, &base_path, &set, MergedType::Fixed(GgmlType::F32), &format!("{name}.gguf"));
        let diff = max_diff(&merged, &unmerged);
        assert!(diff < 1e-3, "{name}: merged logits differ by {diff} (the adapter moved them by {moved})");
    }
}

#[test]
fn a_merged_dora_weight_has_the_trained_magnitudes_as_row_norms() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::F32);
    let dora = perturbed(Box::new(DoraAdapter::new(lora_config(), &model, 9).unwrap()), 65, 0.1);
    let mut weight = model.blocks()[1].linear(Projection::Up).weight().dequantize();
    assert!(dora.merge_weight(1, Projection::Up, &mut weight).unwrap());
    let magnitudes = dora
        .parameters()
        .into_iter()
        .find(|(name, _)| name.contains("layers.1.mlp.up_proj.lora_magnitude_vector"))
        .map(|(_, m)| m.clone().into_data().try_to_vec::<f32>().unwrap())
        .unwrap();
    for (row, m) in weight.chunks_exact(D).zip(magnitudes) {
        let norm = row.iter().map(|w| w * w).sum::<f32>().sqrt();
        assert!((norm - m).abs() < 1e-4 * m.abs().max(1.0), "row norm {norm}, magnitude {m}");
    }
}

/// PEQA's patch written into the GGUF's own block scales gives the model that was trained, in
/// every format with a block scale.
#[test]
fn peqa_scales_written_into_the_gguf_give_the_tuned_model() {
    let dir = tempdir();
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
        let base_path = dir.join(&format!("{}.gguf", ty.name()));
        Weights::random(42).write_gguf(&base_path, ty, None);
        let model = load_gguf(&base_path);
        let peqa = perturbed(Box::new(PeqaAdapter::new(Projection::ALL.to_vec(), &model).unwrap()), 66, 0.2);
        // Saved and loaded: the factors rounded to what f16 scales can hold.
        peqa.save(&dir.join("peqa"), &model).unwrap();
        let tuned = adapt::load(&dir.join("peqa"), &model).unwrap();
        let unmerged = logits_with(&model, tuned.as_ref());
        let mut set = AdapterSet::new();
        set.push(tuned, 1.0).unwrap();
        let name = format!("{}-tuned.gguf", ty.name());
        let merged = merged_logits(&dir, &base_path, &set, MergedType::Same, &name);
        let tuned_model = load_gguf(&dir.join(&name));
        assert_eq!(tuned_model.blocks()[0].attn_q.weight().ty(), ty, "still the base's block format");
        let diff = max_diff(&merged, &unmerged);
        assert!(diff < 2e-4, "{}: the GGUF with tuned scales differs by {diff}", ty.name());
        let moved = max_diff(&unmerged, &all_logits(&model, &TOKENS));
        assert!(moved > 0.05, "{}: PEQA must change the model ({moved})", ty.name());
    }
    let float = model_in(&dir, GgmlType::F16);
    let err = PeqaAdapter::new(vec![Projection::Q], &float).err().unwrap().to_string();
    assert!(err.contains("blk.0.attn_q.weight is F16"), "{err}");
}

/// The soft prompts stand for tokens: virtual tokens that are a text's embeddings, and
/// key/value prefixes that are a text's keys and values, give the logits of that text
/// prepended; DePT with `B = 0` is prompt tuning with the same prompt.
#[test]
fn soft_prompts_equal_the_tokens_they_stand_for() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q8_0);
    let text = [5u32, 90, 33];
    let joined: Vec<u32> = text.iter().chain(&TOKENS).copied().collect();
    let want = &all_logits(&model, &joined)[text.len() * VOCAB..];

    let prompt = PromptAdapter::new(3, PromptInit::Text(text.to_vec()), &model, 0).unwrap();
    let diff = max_diff(&logits_with(&model, &prompt), want);
    assert!(diff < 1e-4, "virtual tokens vs the text prepended: {diff}");

    let prefix = PrefixAdapter::from_tokens(&text, &model).unwrap();
    let diff = max_diff(&logits_with(&model, &prefix), want);
    assert!(diff < 1e-4, "key/value prefix vs the text prepended: {diff}");

    let config = DeptConfig { tokens: 3, rank: 2, alpha: 8.0, max_len: 5, embedding_lr_ratio: 1.0 };
    let dept = DeptAdapter::new(config, PromptInit::Text(text.to_vec()), &model, 1).unwrap();
    assert_eq!(logits_with(&model, &dept), logits_with(&model, &prompt), "DePT with B = 0");
    let moved = perturbed(Box::new(dept), 67, 0.05);
    let diff = max_diff(&logits_with(&model, moved.as_ref()), &logits_with(&model, &prompt));
    assert!(diff > 1e-3, "DePT's embedding update must act ({diff})");
}

/// Decoding token by token after a soft prompt (written into the cache once) equals one pass.
#[test]
fn soft_prompts_are_cached_once_per_session() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q4K);
    let config = DeptConfig { tokens: 2, rank: 2, alpha: 8.0, max_len: 6, embedding_lr_ratio: 1.0 };
    let dept = perturbed(
        Box::new(DeptAdapter::new(config, PromptInit::SampledVocabulary, &model, 2).unwrap()),
        68,
        0.05,
    );
    let mut set = AdapterSet::new();
    set.push(Box::new(PrefixAdapter::new(3, &model, 3).unwrap()) as Box<dyn Method>, 1.0).unwrap();
    set.push(dept, 1.0).unwrap();
    let whole = adapted_logits(&model, &TOKENS, &set);
    let mut cache = model.new_cache(1);
    let mut stepped = Vec::new();
    for &token in &TOKENS {
        let hidden = model.forward_adapted(&[token], 1, &mut cache, &set).unwrap();
        stepped.extend(model.logits(hidden, 0..1).unwrap());
    }
    assert_eq!(cache.prompt_len(), 5, "3 prefix positions and 2 virtual tokens");
    assert_eq!(cache.len(), 5 + TOKENS.len());
    let diff = max_diff(&stepped, &whole);
    assert!(diff < 1e-4, "token by token vs one pass: {diff}");
}

/// Activation checkpointing gives every method the gradients of the full graph (soft prompts
/// and embedding updates through the rebuilt first block, prefixes through each block's cache).
#[test]
fn every_method_trains_the_same_with_activation_checkpointing() {
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(43).write_gguf(&path, GgmlType::Q4_1, None);
    let model = load_for_training(&path);
    let counted: Vec<bool> = (0..TOKENS.len()).map(|i| i % 4 != 1).collect();
    let mut methods = fresh_methods(&model);
    methods.push(Box::new(LofitAdapter::selection(&model, 1e-3, 10).unwrap()));
    for method in methods {
        let name = method.kind().name();
        let mut method = adapt::trainable(perturbed(method, 69, 0.05));
        let (full_loss, full) =
            loss_and_gradients(&model, method.as_mut(), &TOKENS, Some(&counted), 2, false).unwrap();
        let (loss, checkpointed) =
            loss_and_gradients(&model, method.as_mut(), &TOKENS, Some(&counted), 2, true).unwrap();
        assert!((loss - full_loss).abs() < 1e-5 * full_loss, "{name}: loss {loss} vs {full_loss}");
        assert_eq!(full.len(), method.parameters().len(), "{name}: every parameter gets a gradient");
        assert_same_gradients(&full, &checkpointed);
    }
}

/// Gradients of PEQA's block scales and of the other methods' parameters match finite
/// differences of the loss.
#[test]
fn method_gradients_match_finite_differences() {
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(44).write_gguf(&path, GgmlType::Q4_1, None);
    let model = load_for_training(&path);
    let dept = DeptConfig { tokens: 2, rank: 2, alpha: 8.0, max_len: 8, embedding_lr_ratio: 1.0 };
    let methods: Vec<Box<dyn Method>> = vec![
        Box::new(PeqaAdapter::new(Projection::ALL.to_vec(), &model).unwrap()),
        Box::new(DoraAdapter::new(lora_config(), &model, 11).unwrap()),
        Box::new(Ia3Adapter::new(Ia3Config::default(), &model).unwrap()),
        Box::new(PrefixAdapter::new(2, &model, 12).unwrap()),
        Box::new(DeptAdapter::new(dept, PromptInit::SampledVocabulary, &model, 13).unwrap()),
        Box::new(LofitAdapter::offsets(&[(0, 2), (1, 0)], &model, 14).unwrap()),
    ];
    for method in methods {
        let mut method = adapt::trainable(perturbed(method, 70, 0.02));
        let grads = next_token_loss(&model, method.as_ref(), &TOKENS, 1).unwrap().backward();
        // The largest gradient entry of the first and the last parameter tensor.
        let params = method.parameters();
        let picks: Vec<(String, usize, f32)> = [0, params.len() - 1]
            .into_iter()
            .map(|i| {
                let (name, param) = &params[i];
                let g = param.grad(&grads).expect("tracked").into_data().try_to_vec::<f32>().unwrap();
                let at = (0..g.len()).max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs())).unwrap();
                (name.clone(), at, g[at])
            })
            .collect();
        drop(params);
        // PEQA's forward rounds each block's scale to an f16 (steps of about 1e-3 in γ): a wider
        // difference keeps that rounding a small part of it.
        let eps = if method.kind().name() == "peqa" { 5e-2 } else { 1e-2 };
        for (name, at, g) in picks {
            assert_finite_difference(&model, method.as_mut(), &name, at, g, eps);
        }
    }
}

/// LoFiT keeps the heads whose scaling vectors are largest, the same ones every time.
#[test]
fn lofit_selects_the_heads_with_the_largest_scales() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q8_0);
    let mut selection: Box<dyn Method> = Box::new(LofitAdapter::selection(&model, 5e-4, 15).unwrap());
    for (name, param) in selection.parameters_mut() {
        let big = name == "lofit.1.2" || name == "lofit.0.3";
        let value = if big {
            0.5
        } else if name == "lofit.0.0" {
            0.2
        } else {
            0.01
        };
        *param = Tensor::from_data(TensorData::new(vec![value; HEAD_DIM], [1, HEAD_DIM]), model.device());
    }
    assert_eq!(LofitAdapter::select(selection.as_ref(), 2).unwrap(), vec![(0, 3), (1, 2)]);
    assert_eq!(LofitAdapter::select(selection.as_ref(), 3).unwrap(), vec![(0, 0), (0, 3), (1, 2)]);
    let penalty = scalar(selection.penalty().unwrap());
    let want = 5e-4 * HEAD_DIM as f32 * (2.0 * 0.5 + 0.2 + 5.0 * 0.01);
    assert!((penalty - want).abs() < 1e-6, "L1 penalty {penalty}, expected {want}");
}

#[test]
fn bad_adapters_and_prompts_are_clear_errors() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q8_0);
    Ia3Adapter::new(Ia3Config::default(), &model).unwrap().save(&dir.join("ia3"), &model).unwrap();
    let err = LoraAdapter::load(&dir.join("ia3"), &model).err().unwrap().to_string();
    assert!(err.contains("this is a ia3 adapter, not lora"), "{err}");

    // A checkpoint of one method does not resume another.
    let lora = LoraAdapter::new(lora_config(), &model, 0).unwrap();
    let bytes = checkpoint::to_bytes(&lora, &TrainState::new(3, 0.0)).unwrap();
    let mut ia3 = Ia3Adapter::new(Ia3Config::default(), &model).unwrap();
    let err = checkpoint::load(bytes, "ckpt", &mut ia3).err().unwrap().to_string();
    assert!(err.contains("the checkpoint is of a lora run; this run trains ia3"), "{err}");

    // Prompts past the context.
    let err = PromptAdapter::new(CONTEXT + 1, PromptInit::SampledVocabulary, &model, 0).err().unwrap();
    assert!(matches!(err, Error::ContextOverflow { .. }), "{err}");
    let long = PromptAdapter::new(CONTEXT - 4, PromptInit::SampledVocabulary, &model, 0).unwrap();
    let mut cache = model.new_cache(1);
    let err = model.forward_adapted(&TOKENS, 1, &mut cache, &long).err().unwrap();
    assert!(
        matches!(err, Error::ContextOverflow { tokens, .. } if tokens == CONTEXT - 4 + TOKENS.len()),
        "{err}"
    );

    // A saved prefix for another model shape.
    let prefix = PrefixAdapter::new(2, &model, 0).unwrap();
    prefix.save(&dir.join("prefix"), &model).unwrap();
    let config_path = dir.join("prefix/adapter_config.json");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("\"num_virtual_tokens\": 2", "\"num_virtual_tokens\": 3");
    std::fs::write(&config_path, text).unwrap();
    let err = adapt::load(&dir.join("prefix"), &model).err().unwrap().to_string();
    assert!(err.contains("prompt_embeddings") && err.contains("expected [3,"), "{err}");

    // Options that make no sense for a method.
    let err = Ia3Adapter::new(
        Ia3Config { targets: vec![Projection::K], feedforward: vec![Projection::Down] },
        &model,
    );
    assert!(err.err().unwrap().to_string().contains("feed-forward module down_proj is not a target"));
    let err = LofitAdapter::offsets(&[(LAYERS, 0)], &model, 0).err().unwrap().to_string();
    assert!(err.contains("the model has 2 layers of 4 heads"), "{err}");
    let plain = all_logits(&model, &TOKENS);
    assert_eq!(adapted_logits(&model, &TOKENS, &NoAdapters), plain);
}

/// Every method computes on the GPU what it computes on the CPU: the same saved adapter gives
/// the same logits, loss and gradients on both devices.
#[test]
fn every_method_runs_on_the_gpu_like_on_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(45).write_gguf(&path, GgmlType::Q4_1, None);
    let gguf = adaptkit::format::gguf::GgufFile::open(&path).unwrap();
    let cpu = Llama::from_gguf(&gguf, &Device::flex().autodiff()).unwrap();
    let mut names = Vec::new();
    for (i, method) in fresh_methods(&cpu).into_iter().enumerate() {
        let name = method.kind().name();
        perturbed(method, 80 + i as u64, 0.05).save(&dir.join(name), &cpu).unwrap();
        names.push(name);
    }
    let counted: Vec<bool> = (0..TOKENS.len()).map(|i| i % 4 != 1).collect();
    let mut results = Vec::new();
    for device in [Device::flex().autodiff(), gpu.autodiff()] {
        let model = Llama::from_gguf(&gguf, &device).unwrap();
        for name in &names {
            let mut method = adapt::trainable(adapt::load(&dir.join(name), &model).unwrap());
            let logits = logits_with(&model, method.as_ref());
            let (loss, grads) =
                loss_and_gradients(&model, method.as_mut(), &TOKENS, Some(&counted), 2, false).unwrap();
            results.push((logits, loss, grads));
        }
    }
    let (on_cpu, on_gpu) = results.split_at(names.len());
    for ((name, (cpu_logits, cpu_loss, cpu_grads)), (logits, loss, grads)) in
        names.iter().zip(on_cpu).zip(on_gpu)
    {
        let diff = max_diff(logits, cpu_logits);
        eprintln!("{name}: GPU vs CPU max |logit diff| {diff:.2e}, loss {loss} vs {cpu_loss}");
        assert!(diff < 1e-3, "{name}: GPU logits differ from the CPU's by {diff}");
        assert!((loss - cpu_loss).abs() < 1e-4 * cpu_loss, "{name}: loss {loss} vs CPU {cpu_loss}");
        assert_same_gradients(cpu_grads, grads);
    }
}
