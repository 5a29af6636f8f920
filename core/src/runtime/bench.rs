//! Speed and memory of a model: prefill and decode (batch 1, greedy, the median of several runs
//! after a warm-up), LoRA training throughput, and peak memory. Compare with peers measured in
//! the same run (`scripts/bench.sh`).

use serde::Serialize;
use web_time::Instant;

use super::memory::peak_rss_mb;
use super::model::{Model, OpenOptions};
use crate::adapt::{LoraAdapter, LoraConfig, Method};
use crate::control::CancelToken;
use crate::engine::ModelSource;
use crate::error::Error;
use crate::generate::{GenerateOptions, SamplingParams};
use crate::model::Projection;
use crate::train::data::{Window, Windows};
use crate::train::{self, Checkpointing, TrainOptions};

/// Varied prose so the prompt tokenizes like real text; repeated to the requested length.
const BENCH_TEXT: &str = "The harbour town woke slowly. Fishing boats came in under a grey sky, \
and the market filled with the smell of salt, bread and coffee. A child counted gulls on the \
sea wall while her grandfather mended a net, telling her how the storm of 1987 had carried \
away the old lighthouse keeper's cottage. ";

/// The training benchmark's batch (the same as `scripts/bench_torch_peft.py`).
const TRAIN_BATCH: usize = 4;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Timed runs after one warm-up; the median is reported.
    pub repeats: usize,
    /// Timed LoRA training steps after one warm-up step; 0 skips training.
    pub train_steps: usize,
    /// Tokens per training sequence (the batch is 4 of them).
    pub train_seq: usize,
    pub checkpoint_activations: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            prompt_tokens: 128,
            gen_tokens: 128,
            repeats: 3,
            train_steps: 3,
            train_seq: 128,
            checkpoint_activations: false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// The CPU kernels decode's block products run on (`avx2+fma`, `…, i8 activations`).
    pub decode_kernel: String,
    /// What prefill's and training's products run on (`avx2+fma, avx-512 products`, `amx bf16
    /// tiles`).
    pub product_kernel: String,
    /// Inference's peak, before training raises the high-water mark.
    pub peak_rss_mb: Option<f64>,
    pub train_tok_s: Option<f64>,
    pub train_peak_rss_mb: Option<f64>,
    /// MiB the GPU allocator holds after inference and after training (it keeps freed pages
    /// for reuse, so this is close to the peak); `None` on the CPU.
    pub gpu_reserved_mb: Option<f64>,
    pub train_gpu_reserved_mb: Option<f64>,
    pub train_config: String,
    pub checkpoint_activations: bool,
}

/// Benchmarks the model `source`, opened as `open` says (inference, then a trainable copy for
/// the training figures). `on_progress` sees a line per run.
pub fn bench(
    source: ModelSource,
    open: &OpenOptions,
    options: &BenchOptions,
    on_progress: &mut (dyn FnMut(&str) + Send),
) -> Result<BenchReport, Error> {
    if options.prompt_tokens == 0 {
        return Err(Error::option("prompt_tokens", 0, "must be at least 1"));
    }
    if options.gen_tokens < 2 {
        return Err(Error::option(
            "gen_tokens",
            options.gen_tokens,
            "must be at least 2 (decode speed needs two tokens)",
        ));
    }
    if options.repeats == 0 {
        return Err(Error::option("repeats", 0, "must be at least 1"));
    }
    if options.train_steps > 0 && options.train_seq < 2 {
        return Err(Error::option(
            "train_seq",
            options.train_seq,
            "must be at least 2 (a token and its target)",
        ));
    }
    let model = Model::open(source.clone(), &OpenOptions { trainable: false, ..open.clone() })?;
    let mut ids = Vec::new();
    while ids.len() < options.prompt_tokens {
        ids.extend(model.tokenize(BENCH_TEXT, false)?);
    }
    ids.truncate(options.prompt_tokens);
    let generate = GenerateOptions {
        max_tokens: options.gen_tokens,
        sampling: SamplingParams::greedy(),
        stop_strings: Vec::new(),
        stop_at_eos: false,
    };
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for run in 0..=options.repeats {
        let timed = model.generate_ids(&ids, &generate, &CancelToken::new(), &mut |_| {})?;
        let name = if run == 0 { "warm-up".to_string() } else { format!("run {run}") };
        on_progress(&format!(
            "{name} prefill {:.1} tok/s, decode {:.1} tok/s",
            timed.prefill_tok_s, timed.decode_tok_s
        ));
        if run > 0 {
            prefill.push(timed.prefill_tok_s);
            decode.push(timed.decode_tok_s);
        }
    }
    let info = model.info();
    let llama = model.engine().model();
    let weight = llama.blocks().first().map_or(llama.output(), |b| b.attn_q.weight());
    let decode_kernel = weight.kernel().to_string();
    let product_kernel = weight.tile_kernel().unwrap_or(weight.isa_name()).to_string();
    let peak_rss = peak_rss_mb();
    let gpu_reserved = gpu_reserved_mb(&model);
    drop(model);
    let (train_tok_s, train_gpu) = match options.train_steps {
        0 => (None, None),
        _ => {
            let (rate, gpu) = train_speed(source, open, options, &ids, on_progress)?;
            (Some(rate), gpu)
        }
    };
    Ok(BenchReport {
        model: info.model,
        device: info.device,
        threads: info.threads,
        prompt_tokens: options.prompt_tokens,
        gen_tokens: options.gen_tokens,
        prefill_tok_s: median(&mut prefill),
        decode_tok_s: median(&mut decode),
        decode_kernel,
        product_kernel,
        peak_rss_mb: peak_rss,
        train_tok_s,
        train_peak_rss_mb: train_tok_s.and(peak_rss_mb()),
        gpu_reserved_mb: gpu_reserved,
        train_gpu_reserved_mb: train_gpu,
        train_config: format!(
            "LoRA r=8 alpha=16 on q,k,v,o,gate,up,down; batch {TRAIN_BATCH} x {} tokens; AdamW",
            options.train_seq
        ),
        checkpoint_activations: options.checkpoint_activations,
    })
}

/// MiB the GPU allocator holds for the model's device; `None` on the CPU.
fn gpu_reserved_mb(model: &Model) -> Option<f64> {
    let engine = model.engine();
    if !engine.compute_device().gpu {
        return None;
    }
    engine.model().device().memory_pool_usage().map(|usage| usage.bytes_reserved as f64 / (1 << 20) as f64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Training tokens/s of LoRA r=8 on every projection, batch 4 x `train_seq`, over `train_steps` steps
/// after a warm-up step, and the GPU memory it took.
fn train_speed(
    source: ModelSource,
    open: &OpenOptions,
    options: &BenchOptions,
    text_ids: &[u32],
    on_progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(f64, Option<f64>), Error> {
    let model = Model::open(source, &OpenOptions { trainable: true, ..open.clone() })?;
    let seq = options.train_seq;
    let window = |i: usize| Window {
        tokens: (0..seq).map(|j| text_ids[(i * 7 + j) % text_ids.len()]).collect(),
        targets: vec![true; seq],
    };
    let windows =
        Windows { train: (0..TRAIN_BATCH).map(window).collect(), held_out: Vec::new(), general: Vec::new() };
    let train_options = TrainOptions {
        steps: options.train_steps + 1,
        batch: TRAIN_BATCH,
        accumulate: 1,
        lr: 1e-4,
        schedule: Default::default(),
        min_lr_ratio: 0.1,
        warmup: 0,
        max_grad_norm: Some(1.0),
        weight_decay: 0.0,
        seed: 0,
        eval_every: 0,
        patience: None,
        checkpoint_activations: options.checkpoint_activations,
    };
    let mut first: Option<Instant> = None;
    let mut rate = 0.0;
    model.engine().run(|engine| {
        let config = LoraConfig::new(8, 16.0, Projection::ALL.to_vec());
        let mut adapter: Box<dyn Method> = Box::new(LoraAdapter::new(config, engine.model(), 0)?.trainable());
        crate::device::wait(train::fit(
            engine.model(),
            &mut adapter,
            &windows,
            &train_options,
            Checkpointing::default(),
            &CancelToken::new(),
            &mut |step| {
                let now = Instant::now();
                let start = *first.get_or_insert(now);
                if step.step > 1 {
                    rate = ((step.step - 1) * TRAIN_BATCH * seq) as f64 / (now - start).as_secs_f64();
                }
                on_progress(&format!("train step {}/{}: loss {:.3}", step.step, step.steps, step.loss));
            },
        ))
    })?;
    Ok((rate, gpu_reserved_mb(&model)))
}
