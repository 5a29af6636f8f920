//! Golden tests on the real model (SmolLM2-135M-Instruct, GGUF Q4_1) against transformers
//! loading the same GGUF dequantized to fp32. The reference data and the script that made it
//! are in `tests/reference/` (`make_golden.py`).
//!
//! The model comes from `scripts/fetch-model.sh` (see `common::real_model`). Without it these
//! tests print a note and pass, unless `ADAPTKIT_REQUIRE_MODEL` is set (by `scripts/test.sh`,
//! so CI never skips them silently).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use adaptkit::adapt::{self, LoraAdapter};
use adaptkit::control::CancelToken;
use adaptkit::device::DeviceChoice;
use adaptkit::generate::{GenerateOptions, SamplingParams};
use adaptkit::model::NoAdapters;
use adaptkit::tokenizer::Message;
use adaptkit::{Engine, EngineOptions};
use serde_json::Value;

mod common;
use common::golden::{check_greedy, check_last_token_logits, check_perplexity, ids, Golden, LOGIT_TOLERANCE};
use common::{env_flag, real_model};

fn golden() -> Golden {
    Golden::new("")
}

fn golden_dir() -> PathBuf {
    golden().dir
}

fn golden_logits(name: &str) -> (Value, usize, Vec<f32>) {
    golden().logits(name)
}

/// The engine, loaded once for all tests of this file; `None` when the model is absent.
fn engine() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let path = real_model()?;
            Some(
                Engine::load(&path, &EngineOptions { threads: 0, trainable: false, ..Default::default() })
                    .unwrap(),
            )
        })
        .as_ref()
}

#[test]
fn last_token_logits_match_the_reference() {
    let Some(engine) = engine() else { return };
    check_last_token_logits(engine, &golden());
}

#[test]
fn perplexity_is_within_one_percent_of_the_reference() {
    let Some(engine) = engine() else { return };
    check_perplexity(engine, &golden());
}

#[test]
fn greedy_continuations_match_until_the_first_near_tie() {
    let Some(engine) = engine() else { return };
    check_greedy(engine, &golden());
}

#[test]
fn a_lora_made_by_hugging_face_peft_gives_its_logits() {
    let Some(engine) = engine() else { return };
    let (index, vocab, rows) = golden_logits("peft_lora.json");
    let adapter =
        LoraAdapter::load(&golden_dir().join(index["adapter"].as_str().unwrap()), engine.model()).unwrap();
    let prompts = index["prompts"].as_array().unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let tokens = ids(&prompt["ids"]);
        let (adapted, base) = (&rows[i * vocab..][..vocab], &rows[(prompts.len() + i) * vocab..][..vocab]);
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        let got = engine.last_logits(&tokens, &adapter).unwrap();
        assert!(max_diff(adapted, base) > 1.0, "the reference adapter must move the logits");
        let diff = max_diff(&got, adapted);
        eprintln!(
            "PEFT LoRA, prompt {i}: max |logit diff| {diff:.5} (the adapter moves logits by up to {:.2})",
            max_diff(adapted, base)
        );
        assert!(diff < LOGIT_TOLERANCE, "prompt {i}: max |logit diff| {diff} against PEFT");
    }
}

/// Prompt tuning, prefix tuning, IA3 and DoRA, both ways through Hugging Face PEFT
/// (`tests/reference/peft_methods.py`): adapters PEFT made give PEFT's logits here, and PEFT
/// gives the adapters adaptkit trained the logits they give here.
#[test]
fn peft_methods_give_the_same_logits_both_ways() {
    let Some(engine) = engine() else { return };
    for file in ["peft_methods.json", "peft_loads_adaptkit_methods.json"] {
        let (index, vocab, rows) = golden_logits(file);
        let prompts: Vec<Vec<u32>> = index["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
        let entries = index["rows"].as_array().unwrap();
        let mut methods = 0;
        for (r, entry) in entries.iter().enumerate() {
            let want = &rows[r * vocab..][..vocab];
            let prompt = r % prompts.len();
            let base = &rows[prompt * vocab..][..vocab];
            let max_diff =
                |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            let (name, got) = match entry["adapter"].as_str() {
                None => ("base", engine.last_logits(&prompts[prompt], &NoAdapters).unwrap()),
                Some(name) => {
                    let adapter = adapt::load(&golden_dir().join(name), engine.model()).unwrap();
                    assert!(max_diff(want, base) > 0.1, "{name}: the reference adapter must move the logits");
                    methods += 1;
                    (name, engine.last_logits(&prompts[prompt], adapter.as_ref()).unwrap())
                }
            };
            let diff = max_diff(&got[..vocab], want);
            eprintln!(
                "{file} {name}, prompt {prompt}: max |logit diff| {diff:.5} (moved by {:.2})",
                max_diff(want, base)
            );
            assert!(
                diff < LOGIT_TOLERANCE,
                "{file} {name}, prompt {prompt}: max |logit diff| {diff} against PEFT"
            );
        }
        assert_eq!(methods, 8, "{file}: four methods on two prompts");
    }
}

#[test]
fn hugging_face_peft_scores_an_adaptkit_trained_adapter_like_we_do() {
    let Some(engine) = engine() else { return };
    let reference = golden().json("peft_loads_adaptkit.json");
    let adapter =
        LoraAdapter::load(&golden_dir().join(reference["adapter"].as_str().unwrap()), engine.model())
            .unwrap();
    let text_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(reference["text_file"].as_str().unwrap());
    let text = std::fs::read_to_string(text_path).unwrap();
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
        "adaptkit-trained adapter: perplexity {got:.5} here, {want:.5} in PEFT ({:.4}%)",
        relative * 100.0
    );
    assert!(relative < 1e-3, "perplexity {got} vs PEFT {want}");
}

#[test]
fn jsonl_examples_count_only_completion_and_assistant_tokens() {
    use adaptkit::train::data::{pack, Format};
    let Some(engine) = engine() else { return };
    let t = engine.tokenizer();
    let encode = |s: &str| t.encode(s, false).unwrap();
    let eos = t.eos().unwrap();

    let stream = pack(r#"{"prompt": "Q: 2+2?", "completion": " A: 4"}"#, Format::JsonLines, t).unwrap();
    let (prompt, completion) = (encode("Q: 2+2?"), encode(" A: 4"));
    assert_eq!(stream.tokens, [prompt.clone(), completion.clone(), vec![eos]].concat());
    let expected: Vec<bool> =
        prompt.iter().map(|_| false).chain(completion.iter().chain([&eos]).map(|_| true)).collect();
    assert_eq!(stream.targets, expected);

    let line =
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#;
    let stream = pack(line, Format::JsonLines, t).unwrap();
    let messages = [Message::new("user", "Hi"), Message::new("assistant", "Hello!")];
    let template = t.chat_template().unwrap();
    assert_eq!(stream.tokens, encode(&template.render(&messages, false).unwrap()));
    let learned: Vec<u32> =
        stream.tokens.iter().zip(&stream.targets).filter(|(_, &on)| on).map(|(&id, _)| id).collect();
    // Exactly the assistant's reply and its end-of-turn markup.
    assert_eq!(t.decode(&learned, false).unwrap(), "Hello!<|im_end|>\n");

    let err = pack("{\"text\": \"ok\"}\n\n{\"oops\": 1}", Format::JsonLines, t).err().unwrap().to_string();
    assert!(err.contains("data line 3") && err.contains("expected"), "{err}");
    let err = pack("{\"text\": ", Format::JsonLines, t).err().unwrap().to_string();
    assert!(err.contains("data line 1"), "{err}");
}

/// The same golden logits on the GPU (burn-wgpu; lavapipe in CI): every prompt within the CPU's
/// tolerance of the reference, and the generation loop's device-side sampling (top few logits
/// read back) picks the CPU's greedy tokens.
#[test]
fn the_gpu_gives_the_reference_logits_too() {
    let Some(cpu) = engine() else { return };
    let path = PathBuf::from(&cpu.origin().label);
    let gpu = match Engine::load(&path, &EngineOptions { device: DeviceChoice::Gpu, ..Default::default() }) {
        Ok(gpu) => gpu,
        Err(e) if !env_flag("ADAPTKIT_REQUIRE_GPU") => return eprintln!("skipped, no GPU: {e}"),
        Err(e) => panic!("ADAPTKIT_REQUIRE_GPU is set, but {e}"),
    };
    eprintln!("GPU: {}", gpu.compute_device().name);
    let (index, vocab, reference) = golden_logits("logits.json");
    let mut worst = 0.0f32;
    // Every third prompt (plain text, code, chat; 1 to 143 tokens): lavapipe is slow.
    for prompt in index["prompts"].as_array().unwrap().iter().step_by(3) {
        let row = prompt["row"].as_u64().unwrap() as usize;
        let want = &reference[row * vocab..][..vocab];
        let got = gpu.last_logits(&ids(&prompt["ids"]), &NoAdapters).unwrap();
        let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        worst = worst.max(diff);
        assert!(diff < LOGIT_TOLERANCE, "{}: GPU max |logit diff| {diff}", prompt["name"]);
    }
    eprintln!("GPU: worst max |logit diff| {worst:.5} against the reference");
    let prompt = cpu.tokenizer().encode("The capital of France is", true).unwrap();
    let options = GenerateOptions { max_tokens: 6, sampling: SamplingParams::greedy(), ..Default::default() };
    let run = |engine: &Engine| {
        engine.generate(&prompt, &options, &NoAdapters, &CancelToken::new(), &mut |_| {}).unwrap().tokens
    };
    assert_eq!(run(&gpu), run(cpu));
}

/// The GGUF reader on the real file: its metadata and tensor table as llama.cpp wrote them.
#[test]
fn opens_the_real_model() {
    use adaptkit::format::gguf::GgufFile;
    use adaptkit::quant::GgmlType;
    let Some(path) = real_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.metadata().len(), 33);
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(file.get_u64("llama.context_length").unwrap(), 8192);
    assert_eq!(file.get_u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(file.get_u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 100_000.0);
    assert!(!file.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(file.get_string_array("tokenizer.ggml.tokens").unwrap().len(), 49_152);
    assert_eq!(file.get_string_array("tokenizer.ggml.merges").unwrap().len(), 48_900);
    assert!(file.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));
    assert_eq!(file.data_offset(), 1_785_664);
    let tensors = file.tensors();
    assert_eq!(tensors.len(), 272);
    let count = |ty| tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32), count(GgmlType::Q8_0)), (210, 61, 1));
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.ty, &embd.dims[..]), (GgmlType::Q8_0, &[576, 49_152][..]));
    assert!(file.tensor("output.weight").is_none(), "embeddings are tied");
    for block in 0..30 {
        let n = tensors.iter().filter(|t| t.name.starts_with(&format!("blk.{block}."))).count();
        assert_eq!(n, 9, "blk.{block}");
    }
    let end = tensors.iter().map(|t| t.offset + t.n_bytes()).max().unwrap();
    assert_eq!(file.data_offset() + end, std::fs::metadata(&path).unwrap().len());
    for t in tensors {
        assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes(), "{}", t.name);
    }
}

/// Decode on integer activations (opt-in) stays close to the f32-activation reference:
/// teacher-forced through the KV cache token by token over 160 tokens of English, the
/// perplexity within 3% and the argmax the same at 90% of positions or more (measured: +1.6%,
/// 92.5%; llama.cpp quantizes its activations the same way).
#[test]
fn integer_activations_decode_close_to_the_reference() {
    let Some(reference) = engine() else { return };
    let path = PathBuf::from(&reference.origin().label);
    let fast =
        Engine::load(&path, &EngineOptions { integer_activations: true, ..Default::default() }).unwrap();
    // Where the CPU has no integer kernels the two engines are the same and the test is moot.
    if !fast.model().output().kernel().contains("i8") {
        return eprintln!("skipped: no integer kernels on this CPU ({})", fast.model().output().kernel());
    }
    let text = std::fs::read_to_string(golden_dir().join("../ppl_text.txt")).unwrap();
    let tokens = reference.tokenizer().encode(&text, true).unwrap();
    let tokens = &tokens[..161];
    let decode = |engine: &Engine| -> Vec<Vec<f32>> {
        let model = engine.model();
        let mut cache = model.new_cache(1);
        let mut rows = Vec::new();
        for &t in &tokens[..tokens.len() - 1] {
            let hidden = model.forward(&[t], 1, &mut cache).unwrap();
            rows.push(model.logits(hidden, 0..1).unwrap());
        }
        rows
    };
    let (want, got) = (decode(reference), decode(&fast));
    let (ppl_ref, ppl_fast, same) = compare_logits("integer activations", &want, &got, &tokens[1..]);
    assert!((ppl_fast / ppl_ref - 1.0).abs() < 0.03, "perplexity {ppl_fast} vs {ppl_ref}");
    assert!(same * 100 >= 90 * want.len(), "argmax same at {same} of {}", want.len());
}

/// Prefill on bf16 tiles (opt-in) stays close to the f32 products: one pass over 160 tokens of
/// English, the perplexity within 1% and the argmax the same at 95% of positions or more
/// (measured: -0.1%, 160 of 160, the largest logit change 0.31).
#[test]
fn bf16_products_prefill_close_to_the_reference() {
    let Some(reference) = engine() else { return };
    let path = PathBuf::from(&reference.origin().label);
    let fast = Engine::load(&path, &EngineOptions { bf16_products: true, ..Default::default() }).unwrap();
    if fast.model().output().tile_kernel().is_none() {
        return eprintln!("skipped: no bf16 tile unit on this CPU");
    }
    let text = std::fs::read_to_string(golden_dir().join("../ppl_text.txt")).unwrap();
    let tokens = reference.tokenizer().encode(&text, true).unwrap();
    let tokens = &tokens[..161];
    let prefill = |engine: &Engine| -> Vec<Vec<f32>> {
        let model = engine.model();
        let hidden = model.forward(&tokens[..160], 1, &mut model.new_cache(1)).unwrap();
        let logits = model.logits(hidden, 0..160).unwrap();
        logits.chunks_exact(logits.len() / 160).map(<[f32]>::to_vec).collect()
    };
    let (want, got) = (prefill(reference), prefill(&fast));
    let (ppl_ref, ppl_fast, same) = compare_logits("bf16 products", &want, &got, &tokens[1..]);
    assert!((ppl_fast / ppl_ref - 1.0).abs() < 0.01, "perplexity {ppl_fast} vs {ppl_ref}");
    assert!(same * 100 >= 95 * want.len(), "argmax same at {same} of {}", want.len());
}

/// Perplexities of `next` under the reference rows `want` and the rows `got` of a faster path,
/// and at how many positions their argmax agrees; prints them with the largest logit change.
fn compare_logits(path: &str, want: &[Vec<f32>], got: &[Vec<f32>], next: &[u32]) -> (f64, f64, usize) {
    let nll = |rows: &[Vec<f32>]| -> f64 {
        let total: f64 = rows
            .iter()
            .zip(next)
            .map(|(l, &next)| {
                let max = l.iter().fold(f32::MIN, |m, &v| m.max(v));
                let sum: f64 = l.iter().map(|&v| f64::from(v - max).exp()).sum();
                sum.ln() - f64::from(l[next as usize] - max)
            })
            .sum();
        total / rows.len() as f64
    };
    let argmax = |l: &[f32]| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
    let same = want.iter().zip(got).filter(|(a, b)| argmax(a) == argmax(b)).count();
    let worst = want
        .iter()
        .zip(got)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f32::max);
    let (ppl_ref, ppl_got) = (nll(want).exp(), nll(got).exp());
    eprintln!(
        "{path}: perplexity {ppl_got:.4} vs {ppl_ref:.4} (f32), argmax same at {same} of {} positions, max |logit diff| {worst:.3}",
        want.len()
    );
    (ppl_ref, ppl_got, same)
}
