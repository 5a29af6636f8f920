//! The runtime's benchmark in the page (prefill, decode and LoRA training speed), the same code
//! `adaptkit bench` runs natively, so the two compare like for like (`scripts/bench-web.sh`).

use adaptkit::runtime::bench::{self, BenchOptions};
use adaptkit::runtime::{ModelSource, OpenOptions};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::error::{bad_json, json, to_js};

/// What to measure, as JSON; every field optional (the CLI's defaults).
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Request {
    prompt_tokens: Option<usize>,
    gen_tokens: Option<usize>,
    repeats: Option<usize>,
    train_steps: Option<usize>,
}

/// Benchmarks the GGUF model `gguf` on the CPU; `on_progress` gets a line per run. Returns the
/// `BenchReport` as JSON.
#[wasm_bindgen]
pub fn bench(gguf: Vec<u8>, options: &str, on_progress: Option<js_sys::Function>) -> Result<String, JsValue> {
    let request: Request = serde_json::from_str(options).map_err(|e| bad_json("bench options", e))?;
    let defaults = BenchOptions::default();
    let options = BenchOptions {
        prompt_tokens: request.prompt_tokens.unwrap_or(defaults.prompt_tokens),
        gen_tokens: request.gen_tokens.unwrap_or(defaults.gen_tokens),
        repeats: request.repeats.unwrap_or(defaults.repeats),
        train_steps: request.train_steps.unwrap_or(defaults.train_steps),
        ..defaults
    };
    let progress = crate::listener::OneThread(on_progress);
    let report = bench::bench(
        ModelSource::Gguf(gguf),
        &OpenOptions { threads: 1, ..Default::default() },
        &options,
        &mut |line| {
            if let Some(callback) = &progress.0 {
                // Progress is informational: a callback that throws does not stop the benchmark.
                let _ = callback.call1(&JsValue::NULL, &JsValue::from_str(line));
            }
        },
    );
    Ok(json(&report.map_err(to_js)?))
}
