//! Tiny random Llama models written by the test itself (GGUF in every block format, and HF
//! safetensors), checked against a naive reference forward pass written here independently of
//! burn: loaders agree, quantized kernels agree with their dequantized weights, the KV cache and
//! batching change nothing, and bad models give typed errors.

use adaptkit::adapt::merge::MergedType;
use adaptkit::adapt::{AdapterSet, LoraAdapter, LoraConfig, Method};
use adaptkit::burn::tensor::{Device, Tensor, TensorData};
use adaptkit::format::gguf::{GgufFile, GgufWriter};
use adaptkit::format::safetensors::{Dtype, SafetensorsFile};
use adaptkit::model::{
    Adapters, Decoder, DecoderConfig, HostDecoder, KvCache, LowRankOutput, NoAdapters, Projection,
};
use adaptkit::quant::{self, GgmlType};
use adaptkit::tokenizer::Tokenizer;
use adaptkit::train::{collect_grads, loss_and_gradients, masked_next_token_loss, next_token_loss, AdamW};
use adaptkit::Error;

mod common;
use common::*;

#[test]
fn f32_model_matches_the_naive_reference() {
    let dir = tempdir();
    let weights = Weights::random(1);
    weights.write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let got = all_logits(&load_gguf(&dir.join("m.gguf")), &TOKENS);
    let want: Vec<f32> = weights.reference_logits(&TOKENS).concat();
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-3, "max |logit diff| {diff}");
}

#[test]
fn gguf_and_safetensors_loaders_agree() {
    for family in FAMILIES {
        gguf_and_safetensors_loaders_agree_on(family);
    }
}

fn gguf_and_safetensors_loaders_agree_on(family: Family) {
    let dir = tempdir();
    let weights = Weights::random(2);
    for (dtype, ty) in
        [(Dtype::F32, GgmlType::F32), (Dtype::F16, GgmlType::F16), (Dtype::BF16, GgmlType::BF16)]
    {
        let gguf = dir.join(&format!("{ty}.gguf"));
        let hf = dir.join(&format!("hf-{ty}"));
        weights.write_gguf_as(family, &gguf, ty, None);
        weights.write_hf_as(family, &hf, dtype);
        let from_gguf = all_logits(&load_gguf(&gguf), &TOKENS);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
        let file = SafetensorsFile::open(hf.join("model.safetensors")).unwrap();
        let model =
            Decoder::from_safetensors(DecoderConfig::from_hf_json(&json).unwrap(), &[file], &Device::flex())
                .unwrap();
        assert_eq!(model.blocks()[0].attn_q.weight().ty(), ty, "matrices keep their dtype");
        // The same configuration, but for how each file stores q/k rows and norms.
        let (mut from_json, from_metadata) = (model.config().clone(), load_gguf(&gguf).config().clone());
        from_json.parts.rotary_rows = from_metadata.parts.rotary_rows;
        from_json.parts.norm_offset = from_metadata.parts.norm_offset;
        assert_eq!(from_json, from_metadata, "{family:?}");
        let from_hf = all_logits(&model, &TOKENS);
        // Gemma's norms: `1 + (w - 1)` in f32 may round differently from `w` in its last bit.
        let tolerance = if family == Family::Gemma3 { 1e-4 } else { 0.0 };
        let diff = max_diff(&from_gguf, &from_hf);
        assert!(diff <= tolerance, "{family:?} {ty}: loaders must build the same model ({diff})");
    }
}

#[test]
fn every_block_format_runs_like_its_dequantized_weights() {
    let dir = tempdir();
    let weights = Weights::random(3);
    for ty in quant::SUPPORTED_TYPES {
        let path = dir.join(&format!("{ty}.gguf"));
        weights.write_gguf(&path, ty, None);
        let got = all_logits(&load_gguf(&path), &TOKENS);
        let want: Vec<f32> = weights.round_tripped(ty).reference_logits(&TOKENS).concat();
        let diff = max_diff(&got, &want);
        assert!(diff < 2e-3, "{ty}: max |logit diff| {diff}");
    }
}

#[test]
fn kv_cache_decoding_equals_one_full_pass() {
    for family in FAMILIES {
        kv_cache_decoding_equals_one_full_pass_on(family);
    }
}

fn kv_cache_decoding_equals_one_full_pass_on(family: Family) {
    let dir = tempdir();
    Weights::random(4).write_gguf_as(family, &dir.join("m.gguf"), GgmlType::Q4_1, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let full = all_logits(&model, &TOKENS);
    let mut cache = model.new_cache(1);
    let mut stepwise = Vec::new();
    let hidden = model.forward(&TOKENS[..5], 1, &mut cache).unwrap();
    stepwise.extend(model.logits(hidden, 0..5).unwrap());
    // A several-token chunk after cached ones: the causal mask with an offset.
    let hidden = model.forward(&TOKENS[5..9], 1, &mut cache).unwrap();
    stepwise.extend(model.logits(hidden, 0..4).unwrap());
    for &t in &TOKENS[9..] {
        let hidden = model.forward(&[t], 1, &mut cache).unwrap();
        stepwise.extend(model.logits(hidden, 0..1).unwrap());
    }
    let diff = max_diff(&full, &stepwise);
    assert!(diff < 1e-4, "{family:?}: max |logit diff| {diff}");
}

/// Gemma's sliding window over a long input: one pass (two prefill chunks), the graph's cache
/// stepped token by token after it has dropped what the window hides, and the host decoder's
/// ring all give the same logits; the window changes them (the same model without it differs).
#[test]
fn sliding_window_caches_equal_one_full_pass() {
    let dir = tempdir();
    let weights = Weights::random(23);
    weights.write_gguf_as(Family::Gemma3, &dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let tokens: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % VOCAB as u32).collect();
    let full = all_logits(&model, &tokens);
    let (prefilled, rest) = tokens.split_at(200);
    let tail = &full[prefilled.len() * VOCAB..];

    let mut cache = model.new_cache(1);
    model.forward(prefilled, 1, &mut cache).unwrap();
    assert_eq!(cache.held_from(0), 200 - (GEMMA_WINDOW - 1), "the window's positions and no more");
    let mut host = HostDecoder::continuing(&model, &cache, &NoAdapters, 210).unwrap().unwrap();
    let (mut graph, mut ring) = (Vec::new(), Vec::new());
    for &t in rest {
        let hidden = model.forward(&[t], 1, &mut cache).unwrap();
        graph.extend(model.logits(hidden, 0..1).unwrap());
        ring.extend_from_slice(host.step(t).unwrap());
    }
    let (graph_diff, ring_diff) = (max_diff(&graph, tail), max_diff(&ring, tail));
    assert!(graph_diff < 1e-4 && ring_diff < 1e-4, "graph cache {graph_diff}, host ring {ring_diff}");

    // The same weights with a window as long as the context: other logits past the window.
    let mut w = GgufWriter::new();
    add_tiny_gemma3_metadata(&mut w, Some(CONTEXT), CONTEXT);
    let unwindowed = dir.join("unwindowed.gguf");
    weights.write_gguf_with(w, Family::Gemma3, &unwindowed, GgmlType::Q8_0, None);
    let moved = max_diff(&all_logits(&load_gguf(&unwindowed), &tokens), &full);
    assert!(moved > 0.1, "the window must matter here ({moved})");
}

#[test]
fn a_batch_equals_its_rows_run_alone() {
    let dir = tempdir();
    Weights::random(5).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let (a, b) = (&TOKENS[..6], &TOKENS[6..]);
    let mut cache = model.new_cache(2);
    let hidden = model.forward(&[a, b].concat(), 2, &mut cache).unwrap();
    let batched = model.logits(hidden, 0..6).unwrap();
    let alone = [all_logits(&model, a), all_logits(&model, b)].concat();
    let diff = max_diff(&batched, &alone);
    assert!(diff < 1e-4, "max |logit diff| {diff}");
}

/// Key/value prefixes of every layer (a soft prompt that acts on no token), for the host decoder.
struct KvPrefix(Vec<(Tensor<3>, Tensor<3>)>);

impl Adapters for KvPrefix {
    fn prefix_kv(&self, layer: usize) -> Option<(Tensor<3>, Tensor<3>)> {
        self.0.get(layer).cloned()
    }

    fn host_low_rank(&self) -> Result<Option<Vec<LowRankOutput>>, Error> {
        Ok(Some(Vec::new()))
    }
}

/// An adapter that changes every projection's output in a way that is not a low-rank change.
struct OnEveryToken;

impl Adapters for OnEveryToken {
    fn linear_output(&self, _: usize, _: Projection, _: &Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        y.mul_scalar(1.01)
    }
}

#[test]
fn host_decode_equals_the_burn_graph() {
    for family in FAMILIES {
        host_decode_equals_the_burn_graph_on(family);
    }
}

fn host_decode_equals_the_burn_graph_on(family: Family) {
    let dir = tempdir();
    let weights = Weights::random(12);
    let mut rng = Rng(13);
    let mut random = |n: usize| (0..n).map(|_| rng.next()).collect::<Vec<f32>>();
    let prefix_len = 3;
    let shape = [prefix_len, KV_HEADS, HEAD_DIM];
    let tensor = |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, shape), &Device::flex());
    let prefix = KvPrefix(
        (0..LAYERS)
            .map(|_| (tensor(random(shape.iter().product())), tensor(random(shape.iter().product()))))
            .collect(),
    );
    Lora::random(21, 4, false).write_peft(&dir.join("first"));
    Lora::random(22, 2, false).write_peft(&dir.join("second"));
    for (ty, integer) in
        [(GgmlType::Q4_1, false), (GgmlType::Q4_1, true), (GgmlType::Q8_0, true), (GgmlType::F16, false)]
    {
        let path = dir.join(&format!("{ty}.gguf"));
        weights.write_gguf_as(family, &path, ty, None);
        let model = load_gguf(&path);
        let model = if integer { model.with_integer_activations() } else { model };
        let lora = |name: &str| LoraAdapter::load(&dir.join(name), &model).unwrap();
        let mut set = AdapterSet::new();
        set.push(Box::new(lora("first")) as Box<dyn Method>, 1.0).unwrap();
        set.push(Box::new(lora("second")) as Box<dyn Method>, -0.5).unwrap();
        // PiSSA acts as `s·(B·A − B₀·A₀)`: grown by a tenth, A and B make it nonzero.
        let config = LoraConfig::new(4, 8.0, vec![Projection::Q, Projection::Down]);
        let mut pissa = LoraAdapter::new_pissa(config, &model, 5).unwrap();
        for (_, t) in pissa.parameters_mut() {
            *t = t.clone().mul_scalar(1.1);
        }
        let adapters: [(&str, &dyn Adapters); 5] = [
            ("none", &NoAdapters),
            ("prefix", &prefix),
            ("lora", &lora("first")),
            ("set", &set),
            ("pissa", &pissa),
        ];
        for (name, adapters) in adapters {
            let mut graph = model.new_cache(1);
            model.forward_adapted(&TOKENS[..4], 1, &mut graph, adapters).unwrap();
            // Room for two positions more than cached: the rest makes the host cache grow.
            let expected = graph.len() + 2;
            let mut host = HostDecoder::continuing(&model, &graph, adapters, expected).unwrap().unwrap();
            let mut worst = 0f32;
            for &t in &TOKENS[4..] {
                let hidden = model.forward_adapted(&[t], 1, &mut graph, adapters).unwrap();
                let want = model.logits(hidden, 0..1).unwrap();
                let got = host.step(t).unwrap();
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                worst = worst.max(max_diff(got, &want) / scale);
            }
            assert_eq!(host.len(), graph.len());
            eprintln!(
                "{family:?} {ty} (integer activations: {integer}), {name}: max relative diff {worst:.2e}"
            );
            // On integer activations a last-bit difference in a product's input can move a
            // value across a rounding step of its 8-bit quantization (1/254 of its block's
            // largest value), which both paths then carry on.
            let tolerance = if integer { 1e-2 } else { 1e-5 };
            assert!(
                worst < tolerance,
                "{ty}, {name}: host decode differs from the burn graph by {worst:.2e}"
            );
        }
        // Adapters that act on tokens otherwise keep the burn graph, and so does an empty cache
        // (the graph's first pass writes the soft prompt).
        let mut cache = model.new_cache(1);
        assert!(HostDecoder::continuing(&model, &cache, &NoAdapters, 8).unwrap().is_none());
        model.forward(&TOKENS[..2], 1, &mut cache).unwrap();
        assert!(HostDecoder::continuing(&model, &cache, &OnEveryToken, 8).unwrap().is_none());
        cache.truncate(0);
        assert!(HostDecoder::continuing(&model, &cache, &NoAdapters, 8).unwrap().is_none());
    }
}

#[test]
fn bad_models_and_inputs_give_typed_errors() {
    let dir = tempdir();
    let weights = Weights::random(6);
    weights.write_gguf(&dir.join("missing.gguf"), GgmlType::F32, Some("blk.1.ffn_up.weight"));
    let err = Decoder::from_gguf(&GgufFile::open(dir.join("missing.gguf")).unwrap(), &Device::flex())
        .err()
        .unwrap();
    assert!(matches!(&err, Error::MissingTensor(name) if name == "blk.1.ffn_up.weight"), "{err}");

    weights.write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let mut cache = model.new_cache(1);
    let err = model.forward(&[VOCAB as u32], 1, &mut cache).err().unwrap();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = model.forward(&vec![1; CONTEXT + 1], 1, &mut cache).err().unwrap();
    assert!(
        matches!(err, Error::ContextOverflow { tokens, context: CONTEXT } if tokens == CONTEXT + 1),
        "{err}"
    );
    let other = DecoderConfig { n_layers: LAYERS + 1, ..model.config().clone() };
    let err = model.forward(&[1], 1, &mut KvCache::new(&other, 1)).err().unwrap();
    assert!(err.to_string().contains("another model"), "{err}");

    let mut bad = serde_json::json!({"model_type": "gpt2"});
    let err = DecoderConfig::from_hf_json(&bad).err().unwrap();
    assert!(matches!(&err, Error::UnsupportedArchitecture(a) if a == "gpt2"), "{err}");
    bad = serde_json::json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 3, "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 10,
        "max_position_embeddings": 16});
    let err = DecoderConfig::from_hf_json(&bad).err().unwrap();
    assert!(err.to_string().contains("not a multiple"), "{err}");
    bad["num_attention_heads"] = 4.into();
    bad["attention_bias"] = true.into();
    let err = DecoderConfig::from_hf_json(&bad).err().unwrap();
    assert!(err.to_string().contains("attention_bias"), "{err}");
    bad["attention_bias"] = false.into();
    bad["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 0.0});
    let err = DecoderConfig::from_hf_json(&bad).err().unwrap();
    assert!(err.to_string().contains("RoPE scaling"), "{err}");
    bad["rope_scaling"] = serde_json::json!({"rope_type": "default"});
    assert!(DecoderConfig::from_hf_json(&bad).is_ok());
    bad["num_hidden_layers"] = (1u64 << 62).into();
    bad["hidden_size"] = (1u64 << 40).into();
    let err = DecoderConfig::from_hf_json(&bad).err().unwrap();
    assert!(err.to_string().contains("overflow"), "{err}");
}

/// A file that claims Gemma 3 but lacks one of its parts, a sliding window longer than the
/// context, and a SentencePiece vocabulary without scores: typed errors naming the part.
#[test]
fn bad_gemma3_files_name_what_is_missing() {
    let dir = tempdir();
    let weights = Weights::random(24);
    let open = |name: &str| Decoder::from_gguf(&GgufFile::open(dir.join(name)).unwrap(), &Device::flex());
    for tensor in
        ["blk.1.post_ffw_norm.weight", "blk.0.attn_k_norm.weight", "blk.1.post_attention_norm.weight"]
    {
        weights.write_gguf_as(Family::Gemma3, &dir.join("missing.gguf"), GgmlType::Q8_0, Some(tensor));
        let err = open("missing.gguf").err().unwrap();
        assert!(matches!(&err, Error::MissingTensor(name) if name == tensor), "{err}");
    }
    let with_window = |window: Option<usize>, context: usize| {
        let mut w = GgufWriter::new();
        add_tiny_gemma3_metadata(&mut w, window, context);
        weights.write_gguf_with(w, Family::Gemma3, &dir.join("config.gguf"), GgmlType::Q8_0, None);
        open("config.gguf").err().unwrap().to_string()
    };
    let err = with_window(None, CONTEXT);
    assert!(err.contains("gemma3.attention.sliding_window"), "{err}");
    let err = with_window(Some(CONTEXT + 1), CONTEXT);
    assert!(err.contains("sliding window of 321 positions") && err.contains("context of 320"), "{err}");

    // A checkpoint's config.json asking for what this decoder does not do.
    weights.write_hf_as(Family::Gemma3, &dir.join("hf"), Dtype::F32);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("hf/config.json")).unwrap()).unwrap();
    assert!(DecoderConfig::from_hf_json(&json).is_ok());
    for (key, value, named) in [
        ("final_logit_softcapping", serde_json::json!(30.0), "soft-capping"),
        ("query_pre_attn_scalar", serde_json::json!(100), "query_pre_attn_scalar = 100"),
        ("layer_types", serde_json::json!(["full_attention", "sliding_attention"]), "layer_types"),
        ("hidden_activation", serde_json::json!("gelu"), "hidden_activation = gelu"),
    ] {
        let mut bad = json.clone();
        bad[key] = value;
        let err = DecoderConfig::from_hf_json(&bad).err().unwrap().to_string();
        assert!(err.contains(named), "{key}: {err}");
    }

    let mut w = GgufWriter::new();
    w.add_metadata("tokenizer.ggml.model", "llama").unwrap();
    w.add_metadata("tokenizer.ggml.tokens", vec!["<unk>".to_string(), "a".to_string()]).unwrap();
    w.add_metadata("tokenizer.ggml.add_space_prefix", false).unwrap();
    w.write_file(dir.join("tokenizer.gguf")).unwrap();
    let err = Tokenizer::from_gguf(&GgufFile::open(dir.join("tokenizer.gguf")).unwrap()).err().unwrap();
    assert!(err.to_string().contains("no tokenizer.ggml.scores"), "{err}");
}

#[test]
fn a_long_input_runs_in_chunks_like_the_reference() {
    let dir = tempdir();
    let weights = Weights::random(8);
    weights.write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let tokens: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % VOCAB as u32).collect();
    let got = all_logits(&model, &tokens);
    let want: Vec<f32> = weights.reference_logits(&tokens).concat();
    let diff = max_diff(&got, &want);
    assert!(diff < 2e-3, "max |logit diff| {diff}");
}

#[test]
fn a_peft_lora_runs_like_its_merged_weights() {
    let dir = tempdir();
    let weights = Weights::random(9);
    weights.write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let (first, second) = (Lora::random(10, 4, false), Lora::random(11, 2, false));
    first.write_peft(&dir.join("first"));
    second.write_peft(&dir.join("second"));

    let mut set = AdapterSet::new();
    set.push(Box::new(LoraAdapter::load(&dir.join("first"), &model).unwrap()) as Box<dyn Method>, 1.0)
        .unwrap();
    let mut merged = weights.clone();
    first.merge_into(&mut merged, 1.0);
    let diff = max_diff(&adapted_logits(&model, &TOKENS, &set), &merged.reference_logits(&TOKENS).concat());
    assert!(diff < 1e-3, "one adapter: max |logit diff| {diff}");

    // Two at once with their own scales, against both merged.
    set.push(Box::new(LoraAdapter::load(&dir.join("second"), &model).unwrap()) as Box<dyn Method>, -0.5)
        .unwrap();
    second.merge_into(&mut merged, -0.5);
    let diff = max_diff(&adapted_logits(&model, &TOKENS, &set), &merged.reference_logits(&TOKENS).concat());
    assert!(diff < 1e-3, "two adapters: max |logit diff| {diff}");
}

#[test]
fn lora_round_trips_through_peft_and_a_zero_b_changes_nothing() {
    for family in FAMILIES {
        lora_round_trips_through_peft_and_a_zero_b_changes_nothing_on(family);
    }
}

fn lora_round_trips_through_peft_and_a_zero_b_changes_nothing_on(family: Family) {
    let dir = tempdir();
    Weights::random(12).write_gguf_as(family, &dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_gguf(&dir.join("m.gguf"));
    Lora::random(13, 3, false).write_peft(&dir.join("lora"));
    let loaded = LoraAdapter::load(&dir.join("lora"), &model).unwrap();
    assert_eq!(loaded.config().rank, 3);
    loaded.save(&dir.join("again"), &model).unwrap();
    assert_eq!(
        adapted_logits(&model, &TOKENS, &loaded),
        adapted_logits(&model, &TOKENS, &LoraAdapter::load(&dir.join("again"), &model).unwrap()),
        "save then load must give the same adapter"
    );
    Lora::random(14, 3, true).write_peft(&dir.join("zero"));
    let zero = LoraAdapter::load(&dir.join("zero"), &model).unwrap();
    assert_eq!(adapted_logits(&model, &TOKENS, &zero), all_logits(&model, &TOKENS));
}

#[test]
fn bad_adapters_are_named() {
    let dir = tempdir();
    Weights::random(15).write_gguf(&dir.join("m.gguf"), GgmlType::F32, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let lora = Lora::random(16, 2, false);
    let load = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let path = dir.join(name);
        lora.write_peft(&path);
        let config_path = path.join("adapter_config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(&config_path, config.to_string()).unwrap();
        LoraAdapter::load(&path, &model).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(
        load("prefix", &|c| c["peft_type"] = "PREFIX_TUNING".into()).contains("a prefix adapter, not lora")
    );
    assert!(load("vera", &|c| c["peft_type"] = "VERA".into()).contains("peft_type 'VERA' is not a method"));
    assert!(load("embed", &|c| c["target_modules"] = serde_json::json!(["embed_tokens"]))
        .contains("embed_tokens"));
    assert!(load("rank0", &|c| c["r"] = 0.into()).contains("rank"));
    assert!(load("rank", &|c| c["r"] = 5.into()).contains("expected [5,"));
    assert!(load("dora", &|c| c["use_dora"] = true.into()).contains("a dora adapter, not lora"));
    let missing = LoraAdapter::load(&dir.join("nowhere"), &model).err().unwrap().to_string();
    assert!(missing.contains("adapter_config.json"), "{missing}");
}

#[test]
fn merged_gguf_equals_the_unmerged_adapters() {
    for family in FAMILIES {
        merged_gguf_equals_the_unmerged_adapters_on(family);
    }
}

fn merged_gguf_equals_the_unmerged_adapters_on(family: Family) {
    use adaptkit::runtime::{AdapterSource, Model, OpenOptions};
    let dir = tempdir();
    Weights::random(17).write_gguf_as(family, &dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = Model::open_path(&dir.join("m.gguf"), &OpenOptions::default()).unwrap();
    Lora::random(18, 4, false).write_peft(&dir.join("a"));
    Lora::random(19, 2, false).write_peft(&dir.join("b"));
    for (name, scale) in [("a", 1.0), ("b", 0.5)] {
        let adapter = model.load_adapter(AdapterSource::Path(dir.join(name)), &Default::default()).unwrap();
        model.attach(&adapter, scale).unwrap();
    }
    let unmerged = model.logits(&TOKENS).unwrap();
    let moved = max_diff(&unmerged, &all_logits(model.engine().model(), &TOKENS));
    assert!(moved > 0.05, "the adapters must change the model ({moved})");

    let report = model.export_merged_file(MergedType::Fixed(GgmlType::F32), &dir.join("f32.gguf")).unwrap();
    assert_eq!(report.tensors_merged, LAYERS * 7);
    let diff = max_diff(&all_logits(&load_gguf(&dir.join("f32.gguf")), &TOKENS), &unmerged);
    assert!(diff < 1e-3, "{family:?} merged in f32: max |logit diff| {diff}");

    // Requantized to the base's Q8_0: what remains is Q8_0's rounding of the merged weights.
    model.export_merged_file(MergedType::Same, &dir.join("q8.gguf")).unwrap();
    let merged_q8 = load_gguf(&dir.join("q8.gguf"));
    assert_eq!(merged_q8.blocks()[0].attn_q.weight().ty(), GgmlType::Q8_0);
    let diff = max_diff(&all_logits(&merged_q8, &TOKENS), &unmerged);
    assert!(diff < moved / 5.0, "merged in Q8_0: max |logit diff| {diff}, adapters moved logits by {moved}");
    // Streamed into any writer, the same bytes.
    let mut streamed = Vec::new();
    model.export_merged(MergedType::Same, &mut streamed).unwrap();
    assert_eq!(streamed, std::fs::read(dir.join("q8.gguf")).unwrap());
}

/// The merge checks what it merges: a weight of another size than the adapter's model is an
/// error, not a silent partial update (LoRA zipped over the shorter of the two).
#[test]
fn merging_into_a_weight_of_another_shape_is_refused() {
    let dir = tempdir();
    Weights::random(17).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_gguf(&dir.join("m.gguf"));
    Lora::random(18, 4, false).write_peft(&dir.join("a"));
    let lora = adaptkit::adapt::load(&dir.join("a"), &model).unwrap();
    let (out, inp) = dims(Projection::Q);
    let mut short = vec![0.0; out * inp - inp];
    let err = lora.merge_weight(0, Projection::Q, &mut short).unwrap_err();
    assert!(err.to_string().contains("another model"), "{err}");
    let mut exact = vec![0.0; out * inp];
    assert!(lora.merge_weight(0, Projection::Q, &mut exact).unwrap());
}

#[test]
fn lora_gradients_match_finite_differences_through_the_quantized_base() {
    let dir = tempdir();
    Weights::random(20).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_1, None);
    let model = load_for_training(&dir.join("m.gguf"));
    Lora::random(21, 2, false).write_peft(&dir.join("lora"));
    let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let grads = next_token_loss(&model, &adapter, &TOKENS, 1).unwrap().backward();
    let mut analytic = Vec::new();
    for (name, param) in adapter.parameters_mut() {
        // Layer 0's A and B of q and down: gradients that pass through RoPE, attention, the MLP
        // and every later quantized layer.
        if name.contains("layers.0.self_attn.q_proj") || name.contains("layers.0.mlp.down_proj") {
            let g = param.grad(&grads).expect("tracked").into_data().try_to_vec::<f32>().unwrap();
            let at = (0..g.len()).max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs())).unwrap();
            analytic.push((name, at, g[at]));
        }
    }
    assert_eq!(analytic.len(), 4);
    for (name, at, g) in analytic {
        assert_finite_difference(&model, &mut adapter, &name, at, g, 1e-2);
    }
}

/// Activation checkpointing (blocks rerun in backward from their saved inputs) gives the
/// same loss and gradients as keeping the whole graph, with a mask and a batch of two.
#[test]
fn checkpointed_gradients_equal_the_full_graph() {
    let dir = tempdir();
    Weights::random(25).write_gguf(&dir.join("m.gguf"), GgmlType::Q4K, None);
    let model = load_for_training(&dir.join("m.gguf"));
    Lora::random(26, 2, false).write_peft(&dir.join("lora"));
    let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let counted: Vec<bool> = (0..TOKENS.len()).map(|i| i % 5 != 2).collect();
    let (full_loss, full) =
        loss_and_gradients(&model, &mut adapter, &TOKENS, Some(&counted), 2, false).unwrap();
    let (loss, checkpointed) =
        loss_and_gradients(&model, &mut adapter, &TOKENS, Some(&counted), 2, true).unwrap();
    assert!((loss - full_loss).abs() < 1e-5 * full_loss, "loss {loss} vs {full_loss}");
    assert_same_gradients(&full, &checkpointed);
}

/// Training on bf16 tiles (where the CPU has them) gives the loss and LoRA gradients of the f32
/// products within bf16's rounding: the loss within 0.2%, every gradient within 2% of its
/// largest value (measured: 0.006%, 7.5e-3), with a batch of two and a mask.
#[test]
fn bf16_products_train_like_the_f32_products() {
    let dir = tempdir();
    Weights::random(27).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_1, None);
    let model = load_for_training(&dir.join("m.gguf"));
    let tiled = load_for_training(&dir.join("m.gguf")).with_bf16_products();
    if tiled.output().tile_kernel().is_none() {
        return eprintln!("skipped: no bf16 tile unit on this CPU");
    }
    Lora::random(28, 2, false).write_peft(&dir.join("lora"));
    let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let counted: Vec<bool> = (0..TOKENS.len()).map(|i| i % 5 != 2).collect();
    let (want_loss, want) =
        loss_and_gradients(&model, &mut adapter, &TOKENS, Some(&counted), 2, false).unwrap();
    let (loss, got) = loss_and_gradients(&tiled, &mut adapter, &TOKENS, Some(&counted), 2, false).unwrap();
    let worst = assert_close_gradients(&want, &got, 2e-2);
    eprintln!(
        "bf16 products: loss {loss} vs {want_loss}, gradients within {worst:.2e} of their largest values"
    );
    assert!((loss - want_loss).abs() < 2e-3 * want_loss, "loss {loss} vs {want_loss}");
}

/// LoRA dropout acts only while a seed is set, draws the same masks for the same seed, and
/// the blocks recomputed by activation checkpointing see the masks of the first pass.
#[test]
fn lora_dropout_follows_its_seed_and_survives_recomputation() {
    let dir = tempdir();
    Weights::random(27).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_for_training(&dir.join("m.gguf"));
    Lora::random(28, 2, false).write_peft(&dir.join("lora"));
    let config_path = dir.join("lora/adapter_config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["lora_dropout"] = serde_json::json!(0.3);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let loss = |adapter: &mut LoraAdapter, seed: Option<u64>| {
        adapter.set_dropout_seed(seed);
        loss_and_gradients(&model, adapter, &TOKENS, None, 1, false).unwrap()
    };
    let (plain, _) = loss(&mut adapter, None);
    let (dropped, full) = loss(&mut adapter, Some(7));
    assert_ne!(plain, dropped, "dropout changes the training loss");
    assert_eq!(loss(&mut adapter, Some(7)).0, dropped, "the same seed draws the same masks");
    assert_ne!(loss(&mut adapter, Some(8)).0, dropped);
    adapter.set_dropout_seed(Some(7));
    let (recomputed, checkpointed) =
        loss_and_gradients(&model, &mut adapter, &TOKENS, None, 1, true).unwrap();
    assert!((recomputed - dropped).abs() < 1e-5 * dropped, "{recomputed} vs {dropped}");
    assert_same_gradients(&full, &checkpointed);
}

/// PiSSA: the adapter (principal components minus their frozen copy) starts as the original
/// model, and after training, the saved adapter (converted to rank 2r) on the original base is
/// the trained model (within 1e-5 of the largest logit with an f32 base, 2e-3 with Q4_0).
#[test]
fn pissa_starts_at_the_base_and_saves_for_the_original_base() {
    let dir = tempdir();
    for (ty, relative) in [(GgmlType::F32, 1e-5), (GgmlType::Q4_0, 2e-3)] {
        let path = dir.join(&format!("{ty}.gguf"));
        Weights::random(29).write_gguf(&path, ty, None);
        let original = load_gguf(&path);
        let base = adapted_logits(&original, &TOKENS, &NoAdapters);
        let tolerance = relative * base.iter().fold(0f32, |m, v| m.max(v.abs()));
        let trainable = load_for_training(&path);
        let config = LoraConfig::new(2, 4.0, Projection::ALL.to_vec());
        let mut adapter = LoraAdapter::new_pissa(config, &trainable, 5).unwrap().trainable();
        let started = adapted_logits(&trainable, &TOKENS, &adapter);
        assert!(
            max_diff(&started, &base) < tolerance,
            "{ty}: PiSSA moved the start by {}",
            max_diff(&started, &base)
        );

        let mut optimizer = AdamW::new(0.0);
        for _ in 0..3 {
            let (_, grads) = loss_and_gradients(&trainable, &mut adapter, &TOKENS, None, 1, false).unwrap();
            optimizer.step(&mut adapter, &grads, 1e-2);
        }
        let trained = adapted_logits(&trainable, &TOKENS, &adapter);
        adapter.save(&dir.join("pissa"), &trainable).unwrap();
        let loaded = LoraAdapter::load(&dir.join("pissa"), &original).unwrap();
        assert_eq!(loaded.config().rank, 4);
        let ported = adapted_logits(&original, &TOKENS, &loaded);
        let moved = max_diff(&trained, &base);
        assert!(moved > 10.0 * tolerance, "{ty}: training moved the logits by only {moved}");
        assert!(
            max_diff(&ported, &trained) < tolerance,
            "{ty}: saved adapter off by {}",
            max_diff(&ported, &trained)
        );
    }
    // PEFT's unconverted PiSSA adapters need their residual base: refused by name.
    let config_path = dir.join("pissa/adapter_config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["init_lora_weights"] = serde_json::json!("pissa_niter_4");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = load_gguf(&dir.join("F32.gguf"));
    let error = LoraAdapter::load(&dir.join("pissa"), &model).err().expect("refused").to_string();
    assert!(error.contains("init_lora_weights") && error.contains("residual"), "{error}");
}

#[test]
fn lora_training_memorises_a_sequence() {
    const STEPS: usize = 100;
    let dir = tempdir();
    // Unit-scale random embeddings give logits in the hundreds; a trained model's are O(1).
    let mut weights = Weights::random(22);
    weights.embed.iter_mut().for_each(|v| *v *= 0.05);
    weights.write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_for_training(&dir.join("m.gguf"));
    let config = LoraConfig::new(8, 16.0, Projection::ALL.to_vec());
    let mut adapter = LoraAdapter::new(config, &model, 1).unwrap().trainable();
    let mut optimizer = AdamW::new(0.0);
    let first = scalar(next_token_loss(&model, &adapter, &TOKENS, 1).unwrap());
    let mut last = first;
    for _ in 0..STEPS {
        let loss = next_token_loss(&model, &adapter, &TOKENS, 1).unwrap();
        let grads = loss.backward();
        last = scalar(loss);
        let grads = collect_grads(&adapter, &grads);
        optimizer.step(&mut adapter, &grads, 3e-3);
    }
    eprintln!("memorising {} tokens: loss {first:.4} -> {last:.4} in {STEPS} steps", TOKENS.len());
    assert!(first > 4.0 && last < 0.15, "loss {first} -> {last}");
}

#[test]
fn accumulating_two_micro_batches_is_one_batch_of_two() {
    let dir = tempdir();
    Weights::random(23).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_0, None);
    let model = load_for_training(&dir.join("m.gguf"));
    Lora::random(24, 2, false).write_peft(&dir.join("lora"));
    let load = || LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
    let (rows, row) = (TOKENS.to_vec(), TOKENS.len() / 2);

    let batched = load();
    let grads = next_token_loss(&model, &batched, &rows, 2).unwrap().backward();
    let batched = collect_grads(&batched, &grads);

    let accumulated = load();
    let mut sum: Grads = Default::default();
    for micro in rows.chunks(row) {
        let grads = next_token_loss(&model, &accumulated, micro, 1).unwrap().backward();
        for (name, g) in collect_grads(&accumulated, &grads) {
            let total = sum.remove(&name).map_or(g.clone(), |t| t + g);
            sum.insert(name, total);
        }
    }
    let values = |grads: &Grads, scale: f32| -> Vec<f32> {
        grads
            .values()
            .flat_map(|g| g.clone().mul_scalar(scale).into_data().try_to_vec::<f32>().unwrap())
            .collect()
    };
    let (want, got) = (values(&batched, 1.0), values(&sum, 0.5));
    let largest = want.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    let diff = max_diff(&want, &got);
    assert!(
        largest > 1e-3 && diff < 1e-5 * largest.max(1.0),
        "max |gradient diff| {diff} (largest {largest})"
    );
}

#[test]
fn a_masked_loss_splits_the_full_loss_by_position() {
    let dir = tempdir();
    Weights::random(25).write_gguf(&dir.join("m.gguf"), GgmlType::Q8_0, None);
    let model = load_gguf(&dir.join("m.gguf"));
    let targets: Vec<bool> = (0..TOKENS.len()).map(|i| i % 3 == 0).collect();
    let others: Vec<bool> = targets.iter().map(|t| !t).collect();
    let count = |t: &[bool]| t[1..].iter().filter(|&&x| x).count() as f32;
    let loss =
        |t: Option<&[bool]>| scalar(masked_next_token_loss(&model, &NoAdapters, &TOKENS, t, 1).unwrap());
    let whole = loss(None) * (TOKENS.len() - 1) as f32;
    let split = loss(Some(&targets)) * count(&targets) + loss(Some(&others)) * count(&others);
    assert!((whole - split).abs() < 1e-3 * whole.abs(), "{whole} vs {split}");
    assert_eq!(loss(Some(&vec![true; TOKENS.len()])), loss(None));
    assert!(
        masked_next_token_loss(&model, &NoAdapters, &TOKENS, Some(&vec![false; TOKENS.len()]), 1).is_err()
    );
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_losses() {
    use adaptkit::control::CancelToken;
    use adaptkit::device::wait;
    use adaptkit::train::data::{Window, Windows};
    use adaptkit::train::{checkpoint, fit, Checkpointing, TrainOptions};

    let dir = tempdir();
    Weights::random(26).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_1, None);
    let model = load_for_training(&dir.join("m.gguf"));
    let window = |shift: u32| Window {
        tokens: TOKENS.iter().map(|t| (t + shift) % VOCAB as u32).collect(),
        targets: vec![true; TOKENS.len()],
    };
    let windows =
        Windows { train: (0..5).map(window).collect(), held_out: vec![window(9)], general: Vec::new() };
    let options = TrainOptions {
        steps: 5,
        batch: 2,
        accumulate: 1,
        lr: 1e-2,
        schedule: Default::default(),
        min_lr_ratio: 0.1,
        warmup: 1,
        max_grad_norm: Some(1.0),
        weight_decay: 0.01,
        seed: 4,
        eval_every: 0,
        patience: None,
        checkpoint_activations: false,
    };
    let config = LoraConfig::new(4, 8.0, Projection::ALL.to_vec());
    let fresh =
        || -> Box<dyn Method> { Box::new(LoraAdapter::new(config.clone(), &model, 7).unwrap().trainable()) };

    let mut straight = Vec::new();
    wait(fit(
        &model,
        &mut fresh(),
        &windows,
        &options,
        Checkpointing::default(),
        &CancelToken::new(),
        &mut |s| straight.push(s.loss),
    ))
    .unwrap();

    // Interrupted after step 2, right after its checkpoint was written (as if killed there).
    let store = adaptkit::store::FileStore::new(dir.join("run"));
    let cancel = CancelToken::new();
    let mut first = Vec::new();
    let save = Checkpointing { save: Some((&store, checkpoint::KEY, 2)), ..Default::default() };
    let interrupted = wait(fit(&model, &mut fresh(), &windows, &options, save, &cancel, &mut |s| {
        first.push(s.loss);
        if s.step == 2 {
            cancel.cancel();
        }
    }));
    assert!(matches!(interrupted, Err(adaptkit::Error::Cancelled)));

    let mut resumed = fresh();
    let bytes = std::fs::read(dir.join("run").join(checkpoint::KEY)).unwrap();
    let state = checkpoint::load(bytes, "checkpoint", resumed.as_mut(), &Default::default()).unwrap();
    assert_eq!(state.step, 2);
    let mut rest = Vec::new();
    let from = Checkpointing { resume: Some(state), ..Default::default() };
    wait(fit(&model, &mut resumed, &windows, &options, from, &CancelToken::new(), &mut |s| {
        rest.push(s.loss)
    }))
    .unwrap();
    let joined = [first, rest].concat();
    eprintln!("straight {straight:?}\nresumed  {joined:?}");
    assert_eq!(joined.len(), straight.len());
    assert!(max_diff(&joined, &straight) < 1e-5, "straight {straight:?} vs resumed {joined:?}");
}

// ---- GPU parity (burn-wgpu; Mesa's lavapipe in CI) ----

/// Logits of the whole input at once (the decoded-matrix product) and then token by token
/// through the KV cache (the in-kernel level product).
fn prefill_and_decode_logits(model: &Decoder) -> Vec<f32> {
    let mut logits = all_logits(model, &TOKENS);
    let mut cache = model.new_cache(1);
    for &t in &TOKENS {
        let hidden = model.forward(&[t], 1, &mut cache).unwrap();
        logits.extend(model.logits(hidden, 0..1).unwrap());
    }
    logits
}

#[test]
fn every_block_format_runs_on_the_gpu_like_on_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let dir = tempdir();
    let weights = Weights::random(30);
    // Every format as Llama, and Gemma 3 (its parts, its window) in two.
    let cases = quant::SUPPORTED_TYPES.into_iter().map(|ty| (ty, Family::Llama));
    for (ty, family) in cases.chain([(GgmlType::Q4_1, Family::Gemma3), (GgmlType::Q6K, Family::Gemma3)]) {
        let path = dir.join(&format!("{ty}-{family:?}.gguf"));
        weights.write_gguf_as(family, &path, ty, None);
        let gguf = GgufFile::open(&path).unwrap();
        let cpu = prefill_and_decode_logits(&Decoder::from_gguf(&gguf, &Device::flex()).unwrap());
        let on_gpu = prefill_and_decode_logits(&Decoder::from_gguf(&gguf, &gpu).unwrap());
        let diff = max_diff(&cpu, &on_gpu);
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{family:?} {ty}: max |logit diff| {diff:.2e} of logits up to {scale:.2}");
        assert!(diff < 1e-4 * (1.0 + scale), "{family:?} {ty}: CPU vs GPU max |logit diff| {diff}");
    }
}

/// Gemma's sliding window on the GPU: a long input in one pass (its mask from the keys the
/// cache holds), then token by token after the graph's cache has dropped what the window hides,
/// as on the CPU.
#[test]
fn the_sliding_window_runs_on_the_gpu_like_on_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let dir = tempdir();
    Weights::random(33).write_gguf_as(Family::Gemma3, &dir.join("m.gguf"), GgmlType::Q4_1, None);
    let gguf = GgufFile::open(dir.join("m.gguf")).unwrap();
    let tokens: Vec<u32> = (0..170u32).map(|i| (i * 37 + 11) % VOCAB as u32).collect();
    let run = |device: &Device| {
        let model = Decoder::from_gguf(&gguf, device).unwrap();
        let mut cache = model.new_cache(1);
        let hidden = model.forward(&tokens[..150], 1, &mut cache).unwrap();
        let mut logits = model.logits(hidden, 0..150).unwrap();
        assert!(cache.held_from(0) > 0, "the window's cache was trimmed");
        for &t in &tokens[150..] {
            let hidden = model.forward(&[t], 1, &mut cache).unwrap();
            logits.extend(model.logits(hidden, 0..1).unwrap());
        }
        logits
    };
    let (cpu, on_gpu) = (run(&Device::flex()), run(&gpu));
    let diff = max_diff(&cpu, &on_gpu);
    let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(diff < 1e-4 * (1.0 + scale), "CPU vs GPU max |logit diff| {diff} of logits up to {scale}");
}

/// The training step on the GPU (quantized linear op and its backward, the burn-op loss) gives
/// the CPU's loss and LoRA gradients, with and without activation checkpointing.
#[test]
fn lora_training_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let dir = tempdir();
    Weights::random(31).write_gguf(&dir.join("m.gguf"), GgmlType::Q4_1, None);
    Lora::random(32, 2, false).write_peft(&dir.join("lora"));
    let gguf = GgufFile::open(dir.join("m.gguf")).unwrap();
    let counted: Vec<bool> = (0..TOKENS.len()).map(|i| i % 5 != 2).collect();
    let mut results = Vec::new();
    for device in [Device::flex().autodiff(), gpu.autodiff()] {
        let model = Decoder::from_gguf(&gguf, &device).unwrap();
        let mut adapter = LoraAdapter::load(&dir.join("lora"), &model).unwrap().trainable();
        for recompute in [false, true] {
            results.push(
                loss_and_gradients(&model, &mut adapter, &TOKENS, Some(&counted), 2, recompute).unwrap(),
            );
        }
    }
    let (cpu_loss, cpu_grads) = &results[0];
    for (loss, grads) in &results[1..] {
        assert!((loss - cpu_loss).abs() < 1e-4 * cpu_loss, "loss {loss} vs CPU {cpu_loss}");
        assert_same_gradients(cpu_grads, grads);
    }
}

/// Exhausting GPU memory (a 256 GiB tensor) gives `Error::Device` naming the failure, not a
/// panic or a hang, through a fallible read-back, and the device keeps working afterwards.
#[test]
fn out_of_gpu_memory_is_an_error_and_the_device_recovers() {
    use adaptkit::burn::tensor::Tensor;
    use adaptkit::device::guard;
    use adaptkit::model::linear::host_f32;
    let Some(gpu) = test_compute_gpu() else { return };
    let huge = guard(&gpu, || {
        host_f32(Tensor::<2>::ones([1 << 18, 1 << 18], &gpu.device).add_scalar(1.0).slice([0..1, 0..4]))
    });
    match huge {
        Err(Error::Device(message)) => assert!(message.contains(&gpu.name), "{message}"),
        other => panic!("a 256 GiB tensor gave {other:?}"),
    }
    let small = guard(&gpu, || host_f32(Tensor::<1>::ones([4], &gpu.device).add_scalar(1.0)));
    assert_eq!(small.unwrap(), vec![2.0; 4]);
}

/// The browser suite's fixture (`scripts/browser-test.sh` runs this with the variable set): the
/// tiny model as a Q4_1 GGUF file and the native runtime's logits of every position of
/// `TOKENS`, which the page's CPU path must give within 1e-4.
#[test]
#[ignore = "writes a fixture for the browser suite: ADAPTKIT_BROWSER_FIXTURE=DIR"]
fn write_the_browser_fixture() {
    use adaptkit::runtime::{Model, OpenOptions};
    let dir = std::path::PathBuf::from(
        std::env::var("ADAPTKIT_BROWSER_FIXTURE").expect("ADAPTKIT_BROWSER_FIXTURE=DIR"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    Weights::random(11).write_gguf(&path, GgmlType::Q4_1, None);
    let model = Model::open_path(&path, &OpenOptions { threads: 1, ..Default::default() }).unwrap();
    let logits = model.logits(&TOKENS).unwrap();
    let fixture = serde_json::json!({ "tokens": TOKENS, "vocab_size": VOCAB, "logits": logits });
    std::fs::write(dir.join("tiny-logits.json"), fixture.to_string()).unwrap();
}
