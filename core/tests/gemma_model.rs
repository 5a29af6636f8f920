//! Golden tests on the second family, Gemma 3 270M (GGUF Q4_K_M), against transformers loading
//! the same GGUF dequantized to fp32 (`tests/reference/golden/gemma3`, made by `make_golden.py`):
//! logits, perplexity past the sliding window, greedy tokens; and decode past the window through
//! both KV caches (the burn graph's, which drops what the window hides, and the host decoder's
//! ring); LoRA adapters through Hugging Face PEFT both ways. The model comes from `adaptkit fetch --model gemma3-270m` (see `common::gemma_model`):
//! without it these tests print a note and pass, unless `ADAPTKIT_REQUIRE_MODEL` is set.

use std::sync::OnceLock;

use adaptkit::adapt::{LoraAdapter, Method};
use adaptkit::control::CancelToken;
use adaptkit::device::DeviceChoice;
use adaptkit::model::{Activation, HostDecoder, NoAdapters, RotaryRows};
use adaptkit::{Engine, EngineOptions};

mod common;
use common::golden::{
    check_greedy, check_last_token_logits, check_perplexity, ids, max_diff, Golden, LOGIT_TOLERANCE,
};
use common::{env_flag, gemma_model, tempdir};

fn golden() -> Golden {
    Golden::new("gemma3")
}

/// The engine, loaded once for all tests of this file; `None` when the model is absent.
fn engine() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| Some(Engine::load(&gemma_model()?, &EngineOptions::default()).unwrap())).as_ref()
}

/// What the decoder read from the file and what it derived (the layer pattern and the local
/// RoPE base are not in Gemma 3 GGUFs).
#[test]
fn reads_gemma3_parts_from_the_file() {
    let Some(engine) = engine() else { return };
    let c = engine.model().config();
    assert_eq!((c.architecture.as_str(), c.n_layers, c.d_model, c.ffn_dim), ("gemma3", 18, 640, 2048));
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size), (4, 1, 256, 262_144));
    assert!(c.tied_embeddings);
    let parts = &c.parts;
    assert_eq!(parts.activation, Activation::GeluTanh);
    assert!(parts.scaled_embeddings && parts.sandwich_norms && parts.qk_norms);
    assert_eq!(parts.rotary_rows, RotaryRows::Halves);
    let window = parts.sliding_window.unwrap();
    assert_eq!((window.size, window.global_every, window.local_rope_theta), (512, 6, 10_000.0));
    let globals: Vec<usize> = (0..c.n_layers).filter(|&l| parts.window(l).is_none()).collect();
    assert_eq!(globals, [5, 11, 17]);
    // The tied 262k embedding stays in its Q8_0 blocks: ~178 MB rather than 671 MB of f32.
    assert_eq!(engine.model().token_embedding().ty().name(), "Q8_0");
}

#[test]
fn last_token_logits_match_the_reference() {
    let Some(engine) = engine() else { return };
    let diffs = check_last_token_logits(engine, &golden());
    // The prompt past the window: the reference without its window is far off there, so
    // matching it proves the window.
    let index = golden().json("logits.json");
    let without_window = index["no_window_max_abs_diff"].as_f64().unwrap() as f32;
    let ours = diffs.iter().find(|(name, _)| name == "window").unwrap().1;
    eprintln!("window prompt: ours {ours:.5} from the reference; without the window {without_window:.3}");
    assert!(without_window > 100.0 * LOGIT_TOLERANCE);
}

#[test]
fn perplexity_past_the_window_is_within_one_percent_of_the_reference() {
    let Some(engine) = engine() else { return };
    check_perplexity(engine, &golden());
}

#[test]
fn greedy_continuations_match_until_the_first_near_tie() {
    let Some(engine) = engine() else { return };
    check_greedy(engine, &golden());
}

/// The window prompt (663 tokens) prefilled to position 400, then decoded token by token past
/// the window (512) and the growth step after it, where the graph's cache drops positions:
/// the last logits are the reference's, on the graph's cache and on the host decoder's ring.
#[test]
fn decode_past_the_window_gives_the_reference_logits() {
    let Some(engine) = engine() else { return };
    let (index, vocab, reference) = golden().logits("logits.json");
    let prompt = index["prompts"].as_array().unwrap().iter().find(|p| p["name"] == "window").unwrap();
    let tokens = ids(&prompt["ids"]);
    let want = &reference[prompt["row"].as_u64().unwrap() as usize * vocab..][..vocab];
    let model = engine.model();
    let (prefilled, rest) = tokens.split_at(400);

    let mut cache = model.new_cache(1);
    model.forward(prefilled, 1, &mut cache).unwrap();
    let mut host = HostDecoder::continuing(model, &cache, &NoAdapters, tokens.len()).unwrap().unwrap();
    let mut hidden = None;
    for &token in rest {
        hidden = Some(model.forward(&[token], 1, &mut cache).unwrap());
    }
    assert!(cache.held_from(0) > 0, "the local layers' cache dropped what the window hides");
    assert_eq!(cache.held_from(5), 0, "a global layer keeps every position");
    let graph = model.logits(hidden.unwrap(), 0..1).unwrap();
    let mut last = Vec::new();
    for &token in rest {
        last = host.step(token).unwrap().to_vec();
    }
    let (graph_diff, host_diff) = (max_diff(&graph, want), max_diff(&last, want));
    eprintln!("past the window: graph cache {graph_diff:.5}, host ring {host_diff:.5} from the reference");
    assert!(graph_diff < LOGIT_TOLERANCE && host_diff < LOGIT_TOLERANCE);
}

/// The same model on the GPU (burn-wgpu; lavapipe in CI): a short prompt and the one past the
/// window within the CPU's tolerance of the reference.
#[test]
fn the_gpu_gives_the_reference_logits_too() {
    let Some(path) = gemma_model() else { return };
    let gpu = match Engine::load(&path, &EngineOptions { device: DeviceChoice::Gpu, ..Default::default() }) {
        Ok(gpu) => gpu,
        Err(e) if !env_flag("ADAPTKIT_REQUIRE_GPU") => return eprintln!("skipped, no GPU: {e}"),
        Err(e) => panic!("ADAPTKIT_REQUIRE_GPU is set, but {e}"),
    };
    let (index, vocab, reference) = golden().logits("logits.json");
    for prompt in index["prompts"].as_array().unwrap() {
        let Some(row) = prompt["row"].as_u64().filter(|_| prompt["name"] != "python") else { continue };
        let want = &reference[row as usize * vocab..][..vocab];
        let diff = max_diff(&gpu.last_logits(&ids(&prompt["ids"]), &NoAdapters).unwrap(), want);
        eprintln!("GPU {}: max |logit diff| {diff:.5}", prompt["name"]);
        assert!(diff < LOGIT_TOLERANCE, "{}: GPU max |logit diff| {diff}", prompt["name"]);
    }
}

/// A LoRA that Hugging Face PEFT made on the transformers model built from the same GGUF (layers
/// 0, 9 and 17, all seven projections): PEFT's logits here, and again after our own save and
/// load of it (the round trip through our writer changes nothing beyond 1e-4).
#[test]
fn a_lora_made_by_hugging_face_peft_gives_its_logits_and_round_trips() {
    let Some(engine) = engine() else { return };
    let golden = golden();
    let (index, vocab, rows) = golden.logits("peft_lora.json");
    assert!(index["max_abs_adapted_minus_base"].as_f64().unwrap() > 1.0, "the adapter must move the logits");
    let adapter =
        LoraAdapter::load(&golden.dir.join(index["adapter"].as_str().unwrap()), engine.model()).unwrap();
    let dir = tempdir();
    let saved = dir.join("round-trip");
    adapter.save(&saved, engine.model()).unwrap();
    let reloaded = LoraAdapter::load(&saved, engine.model()).unwrap();
    for (i, prompt) in index["prompts"].as_array().unwrap().iter().enumerate() {
        let tokens = ids(&prompt["ids"]);
        let got = engine.last_logits(&tokens, &adapter).unwrap();
        let diff = max_diff(&got, &rows[i * vocab..][..vocab]);
        let again = max_diff(&engine.last_logits(&tokens, &reloaded).unwrap(), &got);
        eprintln!(
            "PEFT LoRA on Gemma, prompt {i}: {diff:.5} from PEFT's logits, {again:.2e} after our round trip"
        );
        assert!(diff < LOGIT_TOLERANCE, "prompt {i}: max |logit diff| {diff} against PEFT");
        assert!(again < 1e-4, "prompt {i}: our save and load moved the logits by {again}");
    }
}

/// PEFT scores an adapter adaptkit trained on Gemma (`golden/gemma3/adaptkit_lora`) as we do.
#[test]
fn hugging_face_peft_scores_an_adaptkit_trained_adapter_like_we_do() {
    let Some(engine) = engine() else { return };
    let golden = golden();
    let reference = golden.json("peft_loads_adaptkit.json");
    let adapter =
        LoraAdapter::load(&golden.dir.join(reference["adapter"].as_str().unwrap()), engine.model()).unwrap();
    let text = std::fs::read_to_string(golden.dir.join("../..").join("ppl_text.txt")).unwrap();
    let seq = reference["seq_len"].as_u64().unwrap() as usize;
    let got =
        engine.perplexity(&text, seq, &adapter, &CancelToken::new(), &mut |_, _| {}).unwrap().perplexity;
    let (want, base) = (
        reference["perplexity_with_adapter"].as_f64().unwrap(),
        reference["perplexity_base"].as_f64().unwrap(),
    );
    assert!((want - base).abs() / base > 0.005, "the adapter must matter: {want} vs base {base}");
    let relative = (got - want).abs() / want;
    eprintln!(
        "adaptkit-trained Gemma adapter: perplexity {got:.5} here, {want:.5} in PEFT ({:.4}%)",
        relative * 100.0
    );
    assert!(relative < 1e-3, "perplexity {got} vs PEFT {want}");
}
