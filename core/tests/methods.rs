//! The adaptation methods beyond LoRA on the tiny random model: each starts as the base model,
//! merges to what it computes unmerged, survives its save format, trains the same with and
//! without activation checkpointing, and its soft prompt equals the tokens it stands for. The
//! family-independent checks run on both decoder families (Llama, and Gemma 3 with its sliding
//! window, sandwich and q/k norms and rotate-half q/k rows in the file).

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
use adaptkit::model::{Adapters, Decoder, NoAdapters, Projection};
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

fn logits_with(model: &Decoder, method: &dyn Method) -> Vec<f32> {
    adapted_logits(model, &TOKENS, method)
}

fn model_in(dir: &TempDir, ty: GgmlType) -> Decoder {
    family_model_in(dir, ty, Family::Llama)
}

fn family_model_in(dir: &TempDir, ty: GgmlType, family: Family) -> Decoder {
    let path = dir.join(&format!("{}-{family:?}.gguf", ty.name()));
    Weights::random(40).write_gguf_as(family, &path, ty, None);
    load_gguf(&path)
}

fn lora_config() -> LoraConfig {
    LoraConfig::new(4, 8.0, Projection::ALL.to_vec())
}

/// Every method, fresh, on `model` (LoFiT in its offsets stage on two heads).
fn fresh_methods(model: &Decoder) -> Vec<Box<dyn Method>> {
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
    for family in FAMILIES {
        every_method_loads_what_it_saved_on(family);
    }
}

fn every_method_loads_what_it_saved_on(family: Family) {
    let dir = tempdir();
    let model = family_model_in(&dir, GgmlType::Q4_1, family);
    let base = all_logits(&model, &TOKENS);
    for (i, method) in fresh_methods(&model).into_iter().enumerate() {
        let name = &format!("{}-{family:?}", method.kind().name());
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
    for family in FAMILIES {
        mergeable_methods_merge_to_what_they_compute_on(family);
    }
}

fn mergeable_methods_merge_to_what_they_compute_on(family: Family) {
    let dir = tempdir();
    let base_path = dir.join("base.gguf");
    Weights::random(41).write_gguf_as(family, &base_path, GgmlType::Q8_0, None);
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
        let name = format!("{}-{}-{family:?}", method.kind().name(), method.parameters().len());
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
    let formats =
        [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];
    // Gemma in one format: its q/k blocks go back to the file's rotate-half order.
    for (ty, family) in
        formats.map(|ty| (ty, Family::Llama)).into_iter().chain([(GgmlType::Q4_1, Family::Gemma3)])
    {
        let base_path = dir.join(&format!("{}-{family:?}.gguf", ty.name()));
        Weights::random(42).write_gguf_as(family, &base_path, ty, None);
        let model = load_gguf(&base_path);
        let peqa = perturbed(Box::new(PeqaAdapter::new(Projection::ALL.to_vec(), &model).unwrap()), 66, 0.2);
        // Saved and loaded: the factors rounded to what f16 scales can hold.
        peqa.save(&dir.join("peqa"), &model).unwrap();
        let tuned = adapt::load(&dir.join("peqa"), &model).unwrap();
        let unmerged = logits_with(&model, tuned.as_ref());
        let mut set = AdapterSet::new();
        set.push(tuned, 1.0).unwrap();
        let name = format!("{}-{family:?}-tuned.gguf", ty.name());
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
    for family in FAMILIES {
        every_method_trains_the_same_with_activation_checkpointing_on(family);
    }
}

fn every_method_trains_the_same_with_activation_checkpointing_on(family: Family) {
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(43).write_gguf_as(family, &path, GgmlType::Q4_1, None);
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
    for family in FAMILIES {
        method_gradients_match_finite_differences_on(family);
    }
}

fn method_gradients_match_finite_differences_on(family: Family) {
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(44).write_gguf_as(family, &path, GgmlType::Q4_1, None);
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
    let bytes =
        adaptkit::device::wait(checkpoint::to_bytes(&lora, &TrainState::new(3, 0.0), &Default::default()))
            .unwrap();
    let mut ia3 = Ia3Adapter::new(Ia3Config::default(), &model).unwrap();
    let err = checkpoint::load(bytes, "ckpt", &mut ia3, &Default::default()).err().unwrap().to_string();
    assert!(err.contains("the checkpoint is of a lora run; this run trains ia3"), "{err}");
    // Nor does one holding a value that is not finite (a sealed file written from a broken run).
    let mut broken: Box<dyn Method> = Box::new(LoraAdapter::new(lora_config(), &model, 0).unwrap());
    let name = broken.parameters()[0].0.clone();
    let size = broken.parameters()[0].1.dims().iter().product::<usize>();
    set_param(broken.as_mut(), &name, (0..size).map(|i| if i == 5 { f32::INFINITY } else { 0.0 }).collect());
    let bytes = adaptkit::device::wait(checkpoint::to_bytes(
        broken.as_ref(),
        &TrainState::new(3, 0.0),
        &Default::default(),
    ))
    .unwrap();
    let mut lora = LoraAdapter::new(lora_config(), &model, 0).unwrap();
    let err = checkpoint::load(bytes, "ckpt", &mut lora, &Default::default()).err().unwrap().to_string();
    assert!(err.contains(&format!("tensor 'adapter/{name}' holds inf at index 5")), "{err}");

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
    for family in FAMILIES {
        every_method_runs_on_the_gpu_like_on_the_cpu_on(family);
    }
}

fn every_method_runs_on_the_gpu_like_on_the_cpu_on(family: Family) {
    let Some(gpu) = test_gpu() else { return };
    let dir = tempdir();
    let path = dir.join("m.gguf");
    Weights::random(45).write_gguf_as(family, &path, GgmlType::Q4_1, None);
    let gguf = adaptkit::format::gguf::GgufFile::open(&path).unwrap();
    let cpu = Decoder::from_gguf(&gguf, &Device::flex().autodiff()).unwrap();
    let mut names = Vec::new();
    for (i, method) in fresh_methods(&cpu).into_iter().enumerate() {
        let name = method.kind().name();
        perturbed(method, 80 + i as u64, 0.05).save(&dir.join(name), &cpu).unwrap();
        names.push(name);
    }
    let counted: Vec<bool> = (0..TOKENS.len()).map(|i| i % 4 != 1).collect();
    let mut results = Vec::new();
    for device in [Device::flex().autodiff(), gpu.autodiff()] {
        let model = Decoder::from_gguf(&gguf, &device).unwrap();
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
        eprintln!("{name} ({family:?}): GPU vs CPU max |logit diff| {diff:.2e}, loss {loss} vs {cpu_loss}");
        assert!(diff < 1e-3, "{name}: GPU logits differ from the CPU's by {diff}");
        assert!((loss - cpu_loss).abs() < 1e-4 * cpu_loss, "{name}: loss {loss} vs CPU {cpu_loss}");
        assert_same_gradients(cpu_grads, grads);
    }
}

/// A merged LoFiT adds its offsets to the output bias of `o_proj`, also when the base already
/// has that bias and lists it before the weight (the merge makes the weight and the bias together).
#[test]
fn lofit_offsets_merge_into_a_bias_listed_before_its_weight() {
    use adaptkit::format::gguf::{GgufFile, GgufWriter};
    let dir = tempdir();
    let plain = dir.join("plain.gguf");
    Weights::random(46).write_gguf(&plain, GgmlType::Q8_0, None);
    let gguf = GgufFile::open(&plain).unwrap();
    let mut w = GgufWriter::new();
    for (key, value) in gguf.metadata() {
        w.add_metadata(key.clone(), value.clone()).unwrap();
    }
    let mut r = Rng(7);
    for info in gguf.tensors() {
        if info.name == "blk.1.attn_output.weight" {
            let bias: Vec<u8> = r.vec(D, 0.1).iter().flat_map(|v| v.to_le_bytes()).collect();
            w.add_tensor("blk.1.attn_output.bias", GgmlType::F32, &[D as u64], bias).unwrap();
        }
        w.add_tensor(info.name.clone(), info.ty, &info.dims, gguf.tensor_data(info).to_vec()).unwrap();
    }
    let base = dir.join("biased.gguf");
    w.write_file(&base).unwrap();
    let model = load_gguf(&base);
    let lofit = perturbed(Box::new(LofitAdapter::offsets(&[(0, 1), (1, 2)], &model, 9).unwrap()), 70, 0.5);
    let unmerged = logits_with(&model, lofit.as_ref());
    assert!(max_diff(&unmerged, &all_logits(&model, &TOKENS)) > 0.02, "the offsets must act");
    let mut set = AdapterSet::new();
    set.push(lofit, 1.0).unwrap();
    let merged = merged_logits(&dir, &base, &set, MergedType::Fixed(GgmlType::F32), "merged.gguf");
    let diff = max_diff(&merged, &unmerged);
    assert!(diff < 1e-3, "merged with the bias first: logits differ by {diff}");
    // The bias layer 0 lacked is added; layer 1's is summed into the one it had.
    let out = GgufFile::open(dir.join("merged.gguf")).unwrap();
    let biases: Vec<&str> =
        out.tensors().iter().filter(|t| t.name.ends_with(".bias")).map(|t| t.name.as_str()).collect();
    assert_eq!(biases, ["blk.1.attn_output.bias", "blk.0.attn_output.bias"]);
}

/// Sets parameter `name` of `method` to `values`.
fn set_param(method: &mut dyn Method, name: &str, values: Vec<f32>) {
    let (_, param) = method.parameters_mut().into_iter().find(|(n, _)| n == name).unwrap();
    let dims = param.dims();
    *param = Tensor::from_data(TensorData::new(values, dims), &Device::flex());
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// DePT (Shi & Lipani 2024): `E[i] += (α/√r)·(A B)[i]` for input positions `i < max_len`.
/// With r = 2, α = 4 (γ = 2√2), `A = [[1, 0], [0.5, −1], [0, 2]]`, `B` rows `0.1·e₀` and
/// `0.2·e₁`: position 0 gains `γ·0.1` at 0; position 1 `γ·0.05` at 0 and `−γ·0.2` at 1;
/// position 2 `γ·0.4` at 1; position 3 (past max_len) nothing.
#[test]
fn dept_adds_the_scaled_low_rank_rows_of_each_position() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q8_0);
    let config = DeptConfig { tokens: 1, rank: 2, alpha: 4.0, max_len: 3, embedding_lr_ratio: 1.0 };
    let mut dept = DeptAdapter::new(config, PromptInit::SampledVocabulary, &model, 0).unwrap();
    set_param(&mut dept, "lora_embedding_A", vec![1.0, 0.0, 0.5, -1.0, 0.0, 2.0]);
    let mut b = vec![0.0; 2 * D];
    (b[0], b[D + 1]) = (0.1, 0.2);
    set_param(&mut dept, "lora_embedding_B", b);
    let gamma = 4.0 / 2f32.sqrt();
    let got = host(dept.token_embeddings(0, Tensor::zeros([1, 4, D], &Device::flex())));
    let mut want = vec![0.0; 4 * D];
    want[0] = gamma * 0.1;
    (want[D], want[D + 1]) = (gamma * 0.5 * 0.1, -gamma * 0.2);
    want[2 * D + 1] = gamma * 2.0 * 0.2;
    assert!(max_diff(&got, &want) < 1e-6, "{:?}", &got[..4]);
    // Counted from the first real token: positions 1 and 2 alone get their own rows.
    let later = host(dept.token_embeddings(1, Tensor::zeros([1, 2, D], &Device::flex())));
    assert!(max_diff(&later, &want[D..3 * D]) < 1e-6);
}

/// PEQA (Kim et al. 2023) on GGUF blocks: a block's scale becomes `d·(1 + γ)`, so with a
/// Q4_1 block `w = d·q + m` its weights become `d(1 + γ)·q + m = w + γ·(w − m)`, and nothing
/// else moves. Read off the raw block: `d` and `m` (f16), then 32 nibbles.
#[test]
fn peqa_scales_one_block_by_one_plus_gamma() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q4_1);
    let mut peqa = PeqaAdapter::new(vec![Projection::V], &model).unwrap();
    let weight = model.blocks()[1].linear(Projection::V).weight().clone();
    let blocks = D / 32;
    // γ = 0.25 on block 1 of row 2, 0 elsewhere.
    let mut gamma = vec![0.0; weight.rows() * blocks];
    gamma[2 * blocks + 1] = 0.25;
    set_param(&mut peqa, "base_model.model.model.layers.1.self_attn.v_proj.peqa_scale", gamma);
    let block = &weight.data()[(2 * blocks + 1) * 20..][..20];
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let (d, m) = (f16(&block[0..2]), f16(&block[2..4]));
    let q: Vec<f32> =
        (0..32).map(|i| f32::from(if i < 16 { block[4 + i] & 15 } else { block[4 + i - 16] >> 4 })).collect();
    let mut dense = weight.dequantize();
    let before = dense.clone();
    assert!(peqa.merge_weight(1, Projection::V, &mut dense).unwrap());
    // The scale is stored as an f16: γ is what makes `d(1 + γ)` that f16.
    let stored = half::f16::from_f32(d * 1.25).to_f32();
    for (i, &q) in q.iter().enumerate() {
        let at = 2 * D + 32 + i;
        let w = d * q + m;
        assert!((before[at] - w).abs() < 1e-5, "the block read by hand is the weight");
        assert!(
            (dense[at] - (stored * q + m)).abs() < 1e-5,
            "value {i}: {} vs {}",
            dense[at],
            stored * q + m
        );
        assert!((dense[at] - (w + 0.25 * (w - m))).abs() < 2e-3 * w.abs().max(1.0));
    }
    let moved = dense.iter().zip(&before).filter(|(a, b)| a != b).count();
    assert!(moved <= 32, "only that block moves ({moved} values did)");
    // Written into the GGUF's own block: the same bytes but the scale.
    let tuned = peqa.merge_blocks(1, Projection::V).unwrap().unwrap();
    let at = (2 * blocks + 1) * 20;
    assert_eq!(f16(&tuned[at..at + 2]), stored);
    assert_eq!(&tuned[at + 2..at + 20], &weight.data()[at + 2..at + 20]);
}

/// LoFiT (Yin et al. 2024): a head's output `z_h` becomes `(1 + A_h) ⊙ z_h` in the selection
/// stage and `z_h + v_h` in the kept one; merged, `v_h` is the `o_proj` bias `W_o[:, h]·v_h`.
/// With `A` on head 1 of layer 0 starting `[0.5, −0.25]` and an input of ones, head 1 reads
/// `[1.5, 0.75, 1, …]`; every other head is unchanged.
#[test]
fn lofit_scales_then_offsets_each_head() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::F32);
    let mut selection = LofitAdapter::selection(&model, 0.0, 0).unwrap();
    let names: Vec<String> = selection.parameters().into_iter().map(|(name, _)| name).collect();
    for name in names {
        set_param(&mut selection, &name, vec![0.0; HEAD_DIM]);
    }
    let mut a = vec![0.0; HEAD_DIM];
    (a[0], a[1]) = (0.5, -0.25);
    set_param(&mut selection, "lofit.0.1", a);
    let z = host(selection.linear_input(0, Projection::O, Tensor::ones([1, 1, D], &Device::flex())));
    let mut want = vec![1.0; D];
    (want[HEAD_DIM], want[HEAD_DIM + 1]) = (1.5, 0.75);
    assert_eq!(z, want);

    let mut offsets = LofitAdapter::offsets(&[(0, 1)], &model, 0).unwrap();
    let mut v = vec![0.0; HEAD_DIM];
    (v[0], v[3]) = (2.0, -1.0);
    set_param(&mut offsets, "lofit.0.1", v);
    let z = host(offsets.linear_input(0, Projection::O, Tensor::ones([1, 1, D], &Device::flex())));
    let mut want = vec![1.0; D];
    (want[HEAD_DIM], want[HEAD_DIM + 3]) = (3.0, 0.0);
    assert_eq!(z, want);
    // Merged: row r of the bias is `2·W_o[r, 64] − W_o[r, 67]`.
    let w_o = model.blocks()[0].linear(Projection::O).weight().dequantize();
    let bias = offsets.merge_bias(0, Projection::O, &w_o).unwrap().unwrap();
    for (r, b) in bias.iter().enumerate() {
        let hand = 2.0 * w_o[r * D + HEAD_DIM] - w_o[r * D + HEAD_DIM + 3];
        assert!((b - hand).abs() < 1e-6, "row {r}: {b} vs {hand}");
    }
}

/// An adapter file with a NaN or an infinity in any tensor is refused when loaded, naming the
/// tensor, for every method (before, such an adapter loaded and turned outputs into NaN).
#[test]
fn non_finite_adapter_values_are_refused_naming_the_tensor() {
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q8_0);
    for (i, method) in fresh_methods(&model).into_iter().enumerate() {
        let name = method.kind().name();
        for (j, bad) in [f32::NAN, f32::INFINITY].into_iter().enumerate() {
            let saved = dir.join(&format!("{name}-{i}-{j}"));
            method.save(&saved, &model).unwrap();
            // The first value of the data section (of whichever tensor is stored first).
            let file = saved.join("adapter_model.safetensors");
            let mut bytes = std::fs::read(&file).unwrap();
            let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            bytes[8 + header..8 + header + 4].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&file, bytes).unwrap();
            let message = match adapt::load(&saved, &model) {
                Ok(_) => panic!("{name}: an adapter holding {bad} was loaded"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains("tensor '") && message.contains(&bad.to_string()), "{name}: {message}");
        }
    }
}

/// A config field that is present must parse, for every method: a wrong type is an error naming
/// the field, not the default; a LoRA's target_modules must name every module its tensors adapt.
#[test]
fn wrongly_typed_config_fields_are_refused_naming_the_field() {
    use serde_json::json;
    let dir = tempdir();
    let model = model_in(&dir, GgmlType::Q8_0);
    let saved = dir.join("lora");
    Lora::random(7, 2, false).write_peft(&saved);
    for method in fresh_methods(&model).into_iter().skip(1) {
        method.save(&dir.join(method.kind().name()), &model).unwrap();
    }
    for (method, field, value, needle) in [
        ("lora", "lora_alpha", json!("NaN"), "lora_alpha must be a number"),
        ("lora", "lora_dropout", json!("x"), "lora_dropout must be a number"),
        ("lora", "use_rslora", json!("yes"), "use_rslora must be true or false"),
        ("lora", "r", json!("2"), "r must be"),
        ("lora", "fan_in_fan_out", json!(1), "fan_in_fan_out must be true or false"),
        ("lora", "bias", json!(0), "bias must be a string"),
        ("lora", "target_modules", json!([]), "names no module"),
        ("lora", "target_modules", json!(["q_proj", "v_proj"]), "which target_modules does not name"),
        ("dora", "lora_alpha", json!([1]), "lora_alpha must be a number"),
        ("prompt", "num_virtual_tokens", json!("4"), "num_virtual_tokens must be a whole number"),
        (
            "prompt",
            "num_transformer_submodules",
            json!(1.5),
            "num_transformer_submodules must be a whole number",
        ),
        ("prefix", "num_virtual_tokens", json!(-4), "num_virtual_tokens must be a whole number"),
        ("prefix", "prefix_projection", json!("false"), "prefix_projection must be true or false"),
        ("dept", "r", json!("4"), "r must be a whole number"),
        ("dept", "lora_alpha", json!("8"), "lora_alpha must be a number"),
        ("dept", "embedding_lr_ratio", json!(true), "embedding_lr_ratio must be a number"),
        ("lofit", "stage", json!(1), "stage must be a string"),
        ("lofit", "heads", json!([[0, 1], [1]]), "[1] is not a [layer, head] pair"),
        ("lofit", "heads", json!("0,1"), "heads must be a list"),
        ("lofit", "l1", json!("0"), "l1 must be a number"),
    ] {
        let saved = dir.join(method);
        let config_path = saved.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).unwrap();
        let good: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(adapt::load(&saved, &model).is_ok(), "{method} loads as saved");
        let mut config = good.clone();
        config[field] = value.clone();
        std::fs::write(&config_path, config.to_string()).unwrap();
        let message = match adapt::load(&saved, &model) {
            Ok(_) => panic!("{method}: {field} = {value} was accepted"),
            Err(e) => e.to_string(),
        };
        std::fs::write(&config_path, text).unwrap();
        assert!(message.contains(needle), "{method}: {field} = {value}: {message}");
    }
}
