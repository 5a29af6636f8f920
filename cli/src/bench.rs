//! `adaptkit bench`: prefill and decode speed (batch 1) and peak memory of a model, as the median
//! of several runs after a warm-up. Compare with peers through `scripts/bench.sh`.

use std::time::Instant;

use adaptkit::adapt::{LoraAdapter, LoraConfig, Method};
use adaptkit::control::CancelToken;
use adaptkit::engine::Engine;
use adaptkit::generate::{GenerateOptions, SamplingParams};
use adaptkit::model::NoAdapters;
use adaptkit::model::Projection;
use adaptkit::train::data::{Window, Windows};
use adaptkit::train::{self, Checkpointing, TrainOptions};
use clap::Args;
use serde_json::json;

use crate::commands::{load_engine, open_engine, run_timed};
use crate::memory::peak_rss_mb;
use crate::{emit, say, CliError, ModelArgs, Output};

/// Varied prose so the prompt tokenizes like real text; repeated to the requested length.
const BENCH_TEXT: &str = "The harbour town woke slowly. Fishing boats came in under a grey sky, \
and the market filled with the smell of salt, bread and coffee. A child counted gulls on the \
sea wall while her grandfather mended a net, telling her how the storm of 1987 had carried \
away the old lighthouse keeper's cottage. ";

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Timed runs after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Timed LoRA training steps (r=8, all seven projections, batch 4 x 128) after one warm-up
    /// step; 0 skips training.
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
    /// Train with activation checkpointing (see `train --checkpoint-activations`).
    #[arg(long)]
    checkpoint_activations: bool,
    #[command(flatten)]
    out: Output,
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.prompt_tokens == 0 || args.gen_tokens < 2 || args.repeats == 0 {
        return Err(CliError::msg("bench needs --prompt-tokens >= 1, --gen-tokens >= 2, --repeats >= 1"));
    }
    let engine = load_engine(&args.model)?;
    let tokenizer = engine.tokenizer();
    let mut ids = Vec::new();
    while ids.len() < args.prompt_tokens {
        ids.extend(tokenizer.encode(BENCH_TEXT, false).map_err(adaptkit::Error::from)?);
    }
    ids.truncate(args.prompt_tokens);
    let options = GenerateOptions {
        max_tokens: args.gen_tokens,
        sampling: SamplingParams::greedy(),
        stop_strings: Vec::new(),
        stop_at_eos: false,
    };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=args.repeats {
        let timed = run_timed(&engine, &ids, &options, &NoAdapters, |_| {})?;
        eprintln!(
            "{} prefill {:.1} tok/s, decode {:.1} tok/s",
            if run == 0 { "warm-up".to_string() } else { format!("run {run}") },
            timed.prefill_tok_s,
            timed.decode_tok_s
        );
        if run > 0 {
            prefill.push(timed.prefill_tok_s);
            decode.push(timed.decode_tok_s);
        }
    }
    // Inference's peak, before training raises the high-water mark.
    let inference_rss = peak_rss_mb();
    let inference_gpu = gpu_reserved_mb(&engine);
    let (source, threads) = (engine.source().to_path_buf(), engine.threads());
    let device = engine.compute_device().name.clone();
    drop(engine);
    let (train_tok_s, train_gpu) = match args.train_steps {
        0 => (None, None),
        _ => {
            let (rate, gpu) = train_speed(&args, &source, &ids)?;
            (Some(rate), gpu)
        }
    };
    let report = json!({
        "model": source.display().to_string(),
        "device": device,
        "threads": threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "prefill_tok_s": median(&mut prefill),
        "decode_tok_s": median(&mut decode),
        "peak_rss_mb": inference_rss,
        "train_tok_s": train_tok_s,
        "train_peak_rss_mb": train_tok_s.and(peak_rss_mb()),
        "gpu_reserved_mb": inference_gpu,
        "train_gpu_reserved_mb": train_gpu,
        "train_config": "LoRA r=8 alpha=16 on q,k,v,o,gate,up,down; batch 4 x 128 tokens; AdamW",
        "checkpoint_activations": args.checkpoint_activations,
    });
    emit(args.out, report.clone(), || say(format_args!("{report}\n")));
    Ok(())
}

/// MiB the GPU allocator holds for this engine's device (it keeps freed pages for reuse, so
/// after a run this is close to the run's peak); `None` on the CPU.
fn gpu_reserved_mb(engine: &Engine) -> Option<f64> {
    if !engine.compute_device().gpu {
        return None;
    }
    engine.model().device().memory_pool_usage().map(|usage| usage.bytes_reserved as f64 / (1 << 20) as f64)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Training tokens/s of LoRA r=8 on every projection, batch 4 x 128, over `train_steps` steps
/// after a warm-up step (the same configuration as `scripts/bench_torch_peft.py`), and the GPU
/// memory it took.
fn train_speed(
    args: &BenchArgs,
    model: &std::path::Path,
    text_ids: &[u32],
) -> Result<(f64, Option<f64>), CliError> {
    const BATCH: usize = 4;
    const SEQ: usize = 128;
    let engine = open_engine(model, &args.model, true)?;
    let window = |i: usize| Window {
        tokens: (0..SEQ).map(|j| text_ids[(i * 7 + j) % text_ids.len()]).collect(),
        targets: vec![true; SEQ],
    };
    let windows =
        Windows { train: (0..BATCH).map(window).collect(), held_out: Vec::new(), general: Vec::new() };
    let config = LoraConfig::new(8, 16.0, Projection::ALL.to_vec());
    let mut adapter: Box<dyn Method> = Box::new(LoraAdapter::new(config, engine.model(), 0)?.trainable());
    let options = TrainOptions {
        steps: args.train_steps + 1,
        batch: BATCH,
        accumulate: 1,
        lr: 1e-4,
        warmup: 0,
        max_grad_norm: Some(1.0),
        weight_decay: 0.0,
        seed: 0,
        eval_every: 0,
        patience: None,
        checkpoint_activations: args.checkpoint_activations,
    };
    let mut first: Option<Instant> = None;
    let mut rate = 0.0;
    engine.run(|engine| {
        train::fit(
            engine.model(),
            &mut adapter,
            &windows,
            &options,
            Checkpointing::default(),
            &CancelToken::new(),
            &mut |step| {
                let now = Instant::now();
                let start = *first.get_or_insert(now);
                if step.step > 1 {
                    rate = ((step.step - 1) * BATCH * SEQ) as f64 / (now - start).as_secs_f64();
                }
                eprintln!("train step {}/{}: loss {:.3}", step.step, step.steps, step.loss);
            },
        )
    })?;
    Ok((rate, gpu_reserved_mb(&engine)))
}
