//! The golden data of `tests/reference/make_golden.py` (transformers fp32 on the same GGUF) and
//! the checks every real model passes against it: last-token logits, perplexity, greedy tokens.

use std::path::{Path, PathBuf};

use adaptkit::control::CancelToken;
use adaptkit::generate::{GenerateOptions, SamplingParams};
use adaptkit::model::NoAdapters;
use adaptkit::Engine;
use serde_json::Value;

/// Largest |logit - reference| allowed. Logits are 10-40 in magnitude and the measured worst
/// case is ~1e-4, from f32 summation order (ours: blocked SIMD dot products; torch: BLAS).
pub const LOGIT_TOLERANCE: f32 = 1e-3;

/// One model's golden directory under `tests/reference/golden`.
pub struct Golden {
    pub dir: PathBuf,
}

impl Golden {
    /// `subdir` of the golden directory ("" for the demo model's, at its top).
    pub fn new(subdir: &str) -> Self {
        Self { dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/golden").join(subdir) }
    }

    pub fn json(&self, name: &str) -> Value {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// A golden index, its vocabulary size, and the little-endian f32 logits file it names.
    pub fn logits(&self, name: &str) -> (Value, usize, Vec<f32>) {
        let index = self.json(name);
        let vocab = index["vocab_size"].as_u64().unwrap() as usize;
        let bytes = std::fs::read(self.dir.join(index["file"].as_str().unwrap())).unwrap();
        let logits = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        (index, vocab, logits)
    }
}

pub fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// Largest |a - b|.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Every golden prompt's last-token logits within [`LOGIT_TOLERANCE`]: the whole vocabulary
/// where the reference stored it, its top 5 elsewhere; the same argmax; and the reference's ids
/// our tokenizer's for every plain-text prompt. Returns the worst difference per prompt name.
pub fn check_last_token_logits(engine: &Engine, golden: &Golden) -> Vec<(String, f32)> {
    let (index, vocab, reference) = golden.logits("logits.json");
    let prompts = index["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 8);
    let mut diffs = Vec::new();
    for prompt in prompts {
        let name = prompt["name"].as_str().unwrap();
        let tokens = ids(&prompt["ids"]);
        // Tokenizer and model are tested apart: the reference ids must also be ours.
        if !prompt["chat"].as_bool().unwrap() {
            let ours = engine.tokenizer().encode(prompt["text"].as_str().unwrap(), true).unwrap();
            assert_eq!(ours, tokens, "{name}");
        }
        let got = engine.last_logits(&tokens, &NoAdapters).unwrap();
        let top5: Vec<(usize, f32)> = prompt["top5_last"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32))
            .collect();
        let diff = match prompt["row"].as_u64() {
            Some(row) => max_diff(&got, &reference[row as usize * vocab..][..vocab]),
            None => top5.iter().map(|&(id, want)| (got[id] - want).abs()).fold(0.0, f32::max),
        };
        assert!(diff < LOGIT_TOLERANCE, "{name}: max |logit diff| {diff}");
        let argmax = (0..got.len()).max_by(|&a, &b| got[a].total_cmp(&got[b])).unwrap();
        assert_eq!(argmax, top5[0].0, "{name}: argmax");
        diffs.push((name.to_string(), diff));
    }
    let worst = diffs.iter().map(|d| d.1).fold(0.0, f32::max);
    eprintln!("{} prompts, worst max |logit diff| {worst:.5}", prompts.len());
    diffs
}

/// The perplexity of the reference text (windows of the reference's length) within 1%.
pub fn check_perplexity(engine: &Engine, golden: &Golden) {
    let reference = golden.json("perplexity.json");
    let text_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(reference["text_file"].as_str().unwrap());
    let text = std::fs::read_to_string(text_path).unwrap();
    let seq = reference["seq_len"].as_u64().unwrap() as usize;
    let got = engine.perplexity(&text, seq, &NoAdapters, &CancelToken::new(), &mut |_, _| {}).unwrap();
    let want = reference["perplexity"].as_f64().unwrap();
    assert_eq!(got.windows as u64, reference["windows"].as_u64().unwrap());
    let relative = (got.perplexity - want).abs() / want;
    eprintln!(
        "perplexity {:.5} vs reference {want:.5} ({:.4}%), windows of {seq}",
        got.perplexity,
        relative * 100.0
    );
    assert!(relative < 0.01, "perplexity {} vs reference {want}", got.perplexity);
}

/// `--temperature 0` with every other option at its default is transformers' greedy decoding
/// (the repetition penalty defaults to 1, as there): the golden continuations, token for token
/// until a near-tie of the reference's top two logits.
pub fn check_greedy(engine: &Engine, golden: &Golden) {
    let reference = golden.json("greedy.json");
    let threshold = reference["near_tie_threshold"].as_f64().unwrap();
    let cases = reference.as_object().unwrap().values().find_map(|v| v.as_array()).unwrap();
    let options = GenerateOptions {
        max_tokens: reference["max_new_tokens"].as_u64().unwrap() as usize,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        stop_strings: Vec::new(),
        stop_at_eos: false,
    };
    let mut compared = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let want = ids(&case["tokens"]);
        let got = engine
            .generate(&ids(&case["prompt_ids"]), &options, &NoAdapters, &CancelToken::new(), &mut |_| {})
            .unwrap()
            .tokens;
        // Where the reference's top two logits are at least `threshold` apart the argmax is
        // unambiguous and must be ours too; only at a near-tie may fp32 summation order pick the
        // other token, after which the continuations legitimately differ.
        let steps = case["steps"].as_array().unwrap();
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        if same < want.len() {
            let gap = steps[same]["gap"].as_f64().unwrap();
            assert!(gap < threshold, "{name}: diverged at step {same} where the reference gap is {gap}");
        }
        compared += same;
    }
    let total = cases.len() * options.max_tokens;
    eprintln!("{} continuations: {compared} of {total} greedy tokens identical", cases.len());
    // Near-ties are rare: a run that diverges early everywhere proves nothing.
    assert!(cases.len() >= 8 && compared * 10 >= total * 9, "only {compared} of {total} tokens compared");
}
