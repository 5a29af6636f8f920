//! `adaptkit train`: fine-tune a LoRA adapter on a text file, with a progress bar, and save it
//! as a Hugging Face PEFT directory.

use std::path::PathBuf;
use std::time::Instant;

use adaptkit::adapt::{LoraAdapter, LoraConfig};
use adaptkit::control::CancelToken;
use adaptkit::engine::{Engine, EngineOptions};
use adaptkit::model::Projection;
use adaptkit::train::{self, checkpoint, data, Checkpointing, TrainOptions};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::commands::resolve_model;
use crate::memory::peak_rss_mb;
use crate::{emit, say, CliError, ModelArgs, Output};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training data: `.txt` (documents separated by blank lines) or `.jsonl` with `{"text"}`,
    /// `{"prompt","completion"}` or `{"messages":[{"role","content"}]}` per line.
    #[arg(long)]
    data: PathBuf,
    /// Directory to write the adapter to (PEFT format).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Projections to adapt, comma-separated.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    targets: String,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per training window.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// Peak learning rate (after warm-up; cosine decay to a tenth by the last step).
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Clip the global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep only each block's input in the forward pass and recompute blocks in backward:
    /// much less memory for about a third more compute.
    #[arg(long)]
    checkpoint_activations: bool,
    /// Write OUT/checkpoint.safetensors every N steps (0 = never).
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,
    /// Continue from OUT/checkpoint.safetensors (same data and options).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    out_format: Output,
}

pub fn run(args: TrainArgs) -> Result<(), CliError> {
    let targets = args
        .targets
        .split(',')
        .map(|t| {
            Projection::parse(t.trim())
                .ok_or_else(|| CliError::msg(format!("--targets: unknown projection '{t}'")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if args.rank == 0 || !(args.lr > 0.0 && args.lr.is_finite()) {
        return Err(CliError::msg("--rank must be at least 1 and --lr positive"));
    }
    let text = std::fs::read_to_string(&args.data).map_err(|e| CliError::io(&args.data, e))?;
    let path = resolve_model(args.model.model.clone())?;
    let engine = Engine::load(&path, &EngineOptions { threads: args.model.threads, trainable: true })?;
    let format = data::Format::of(&args.data);
    let windows = data::windows(&text, format, engine.tokenizer(), args.seq, 0.1, args.seed)?;
    let config = LoraConfig::new(args.rank, args.alpha, targets);
    let mut adapter = LoraAdapter::new(config, engine.model(), args.seed)?.trainable();
    let options = TrainOptions {
        steps: args.steps,
        batch: args.batch,
        accumulate: args.accumulate,
        lr: args.lr,
        warmup: args.warmup,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        weight_decay: 0.0,
        seed: args.seed,
        checkpoint_activations: args.checkpoint_activations,
    };

    std::fs::create_dir_all(&args.out).map_err(|e| CliError::io(&args.out, e))?;
    let checkpoint_path = args.out.join("checkpoint.safetensors");
    let resume = if args.resume { Some(checkpoint::load(&checkpoint_path, &mut adapter)?) } else { None };
    let bar = ProgressBar::new(args.steps as u64).with_style(
        ProgressStyle::with_template("train [{bar:30}] {pos}/{len} steps, {msg} {elapsed}<{eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    // Throughput of the steps after the first (the held-out evaluations before and after, and
    // the first step's warm-up, are not training).
    let mut first: Option<(Instant, usize)> = None;
    let mut tokens_per_s = 0.0;
    let report = engine.run(|engine| {
        let checkpointing =
            Checkpointing { resume, save: Some((checkpoint_path.as_path(), args.checkpoint_every)) };
        train::fit(
            engine.model(),
            &mut adapter,
            &windows,
            &options,
            checkpointing,
            &CancelToken::new(),
            &mut |step| {
                let now = Instant::now();
                let (t0, n0) = *first.get_or_insert((now, step.tokens));
                let secs = (now - t0).as_secs_f64();
                if secs > 0.0 {
                    tokens_per_s = (step.tokens - n0) as f64 / secs;
                }
                bar.set_message(format!(
                    "loss {:.3}, lr {:.1e}, grad norm {:.2}, {tokens_per_s:.0} tok/s",
                    step.loss, step.lr, step.grad_norm
                ));
                bar.set_position(step.step as u64);
            },
        )
    })?;
    bar.finish_and_clear();
    adapter.save(&args.out, engine.model())?;
    let out = args.out.display().to_string();
    emit(
        args.out_format,
        json!({
            "steps": report.steps,
            "train_loss": report.train_loss,
            "eval_loss": report.eval_loss,
            "eval_loss_before": report.eval_loss_before,
            "train_windows": windows.train.len(),
            "eval_windows": windows.held_out.len(),
            "tokens_per_s": tokens_per_s,
            "peak_rss_mb": peak_rss_mb(),
            "out": out,
        }),
        || {
            let eval = |l: Option<f32>| l.map_or("-".to_string(), |l| format!("{l:.3}"));
            say(format_args!(
                "{} steps, train loss {:.3}, held-out loss {} -> {}, {tokens_per_s:.0} tok/s; adapter in {out}\n",
                report.steps,
                report.train_loss,
                eval(report.eval_loss_before),
                eval(report.eval_loss)
            ))
        },
    );
    Ok(())
}
