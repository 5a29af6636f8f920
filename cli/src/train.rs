//! `adaptkit train`: the runtime's training (`Model::train`) with flags, progress bars, Ctrl-C,
//! a loss plot, and the adapter saved as a Hugging Face PEFT directory.

use std::path::PathBuf;

use adaptkit::control::CancelToken;
use adaptkit::runtime::memory::rss_mb;
use adaptkit::runtime::plan::parse_size_mb;
use adaptkit::runtime::train::{Dataset, TrainConfig, TrainEvent, TrainingData};
use adaptkit::store::{FileStore, Store};
use adaptkit::train::data::Packing;
use adaptkit::train::{checkpoint, Evaluation, LrSchedule, FORGETTING_LIMIT};
use clap::Args;
use indicatif::ProgressBar;
use serde_json::json;

use crate::args::{parse, ModelArgs};
use crate::method::MethodArgs;
use crate::plot::{self, Series};
use crate::{emit, interrupt, progress, say, CliError, Output};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training data: `.txt` (documents separated by blank lines) or `.jsonl` with `{"text"}`,
    /// `{"prompt","completion"}` or `{"messages":[{"role","content"}]}` per line.
    #[arg(long)]
    data: PathBuf,
    /// Held-out data in the same formats (default: --held-out of --data's windows).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Fraction of --data's windows held out for evaluation when --eval is not given; 0 trains
    /// on all of them (a few notes to remember) [default: 0.1].
    #[arg(long)]
    held_out: Option<f32>,
    /// Unrelated general text (.txt or .jsonl) whose perplexity is watched for forgetting: a
    /// warning when it rises more than 5% over the base model's.
    #[arg(long)]
    general_eval: Option<PathBuf>,
    /// Directory to write the adapter to (PEFT format), with the run's checkpoint.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    method: MethodArgs,
    /// Optimizer steps [default: 60].
    #[arg(long)]
    steps: Option<usize>,
    /// Windows per micro-batch [default: 4].
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per training window [default: 128].
    #[arg(long)]
    seq: Option<usize>,
    /// How examples become windows: `stream` (one stream cut every --seq tokens) or `documents`
    /// (whole documents, padded, so that nothing is learned without its context) [default: stream].
    #[arg(long, value_parser = parse::<Packing>)]
    pack: Option<Packing>,
    /// Micro-batches per optimizer step (gradient accumulation) [default: 1].
    #[arg(long)]
    accumulate: Option<usize>,
    /// Peak learning rate (after warm-up) [default: per method, `adaptkit methods`: lora, dora
    /// 2e-4; ia3 3e-3; prefix, lofit 1e-2; prompt, dept 3e-2; peqa 1e-4].
    #[arg(long)]
    lr: Option<f32>,
    /// How the learning rate moves after warm-up (Hugging Face Trainer's names): constant,
    /// linear, cosine or cosine_with_min_lr (down to --min-lr-ratio of the peak)
    /// [default: cosine_with_min_lr].
    #[arg(long, value_parser = parse::<LrSchedule>)]
    lr_schedule: Option<LrSchedule>,
    /// The floor of cosine_with_min_lr, as a fraction of the peak [default: 0.1].
    #[arg(long)]
    min_lr_ratio: Option<f32>,
    /// Warm-up steps (linear from 0) [default: 0].
    #[arg(long)]
    warmup: Option<usize>,
    /// Clip the global gradient norm (0 = off) [default: 1].
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// [default: 0].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate held-out (and general) loss every N steps (0 = only before and after) [default: 10].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Stop when the held-out loss has not improved for N evaluations, keeping the best adapter.
    #[arg(long)]
    patience: Option<usize>,
    /// Keep only each block's input in the forward pass and recompute blocks in backward:
    /// a quarter of the memory for about 45% more time.
    #[arg(long)]
    checkpoint_activations: bool,
    /// Write OUT/checkpoint.safetensors every N steps (0 = only on Ctrl-C) [default: 10].
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Peak memory to stay within (600M, 1.5G): the planner splits the batch into micro-batches
    /// and turns on activation checkpointing as needed, or says what budget would fit.
    #[arg(long, value_parser = parse_size_mb_flag)]
    memory_budget: Option<f64>,
    /// Continue from OUT/checkpoint.safetensors (same data and options).
    #[arg(long)]
    resume: bool,
    /// Write the loss curve (train, held-out, general) to this .svg file.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    out_format: Output,
}

fn parse_size_mb_flag(text: &str) -> Result<f64, String> {
    parse_size_mb(text).map_err(|e| match e {
        adaptkit::Error::InvalidOption { message, .. } => message,
        other => other.to_string(),
    })
}

impl TrainArgs {
    /// The runtime's config: the library's defaults for every flag not given.
    fn config(&self) -> TrainConfig {
        let d = TrainConfig::default();
        TrainConfig {
            method: self.method.method,
            options: self.method.options(),
            steps: self.steps.unwrap_or(d.steps),
            batch: self.batch.unwrap_or(d.batch),
            seq: self.seq.unwrap_or(d.seq),
            packing: self.pack.unwrap_or(d.packing),
            accumulate: self.accumulate.unwrap_or(d.accumulate),
            lr: self.lr,
            lr_schedule: self.lr_schedule.unwrap_or(d.lr_schedule),
            min_lr_ratio: self.min_lr_ratio.unwrap_or(d.min_lr_ratio),
            warmup: self.warmup.unwrap_or(d.warmup),
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            seed: self.seed.unwrap_or(d.seed),
            eval_every: self.eval_every.unwrap_or(d.eval_every),
            patience: self.patience,
            checkpoint_activations: self.checkpoint_activations,
            checkpoint_every: self.checkpoint_every.unwrap_or(d.checkpoint_every),
            held_out_fraction: self.held_out.unwrap_or(d.held_out_fraction),
            memory_budget_mb: self.memory_budget,
            resume: self.resume,
        }
    }
}

pub fn run(args: TrainArgs) -> Result<(), CliError> {
    let config = args.config();
    if let Some(plot) = args.plot.as_ref().filter(|p| p.extension().and_then(|e| e.to_str()) != Some("svg")) {
        return Err(CliError::msg(format!("--plot {}: only .svg plots are written", plot.display())));
    }
    // What can be checked without the model is, before it loads.
    config.check(usize::MAX)?;
    let model = args.model.open(true)?;
    let data = TrainingData {
        train: Dataset::read(&args.data)?,
        eval: args.eval.as_deref().map(Dataset::read).transpose()?,
        general: args.general_eval.as_deref().map(Dataset::read).transpose()?,
    };
    let store = FileStore::new(&args.out);
    let cancel = CancelToken::new();
    interrupt::cancel_on_ctrl_c(&cancel);
    let mut progress = Progress::default();
    let result = model.train(&data, &config, &store, &cancel, &mut |event| progress.on(event));
    let losses = progress.finish();
    let checkpoint = store.locate(checkpoint::KEY);
    let trained = match result {
        Err(adaptkit::Error::Cancelled) => {
            return Err(CliError::interrupted(format!(
                "interrupted; the run is saved in {checkpoint} (continue with --resume)"
            )))
        }
        // A non-finite loss, or a GPU that failed mid-run (lost, out of memory): the last
        // checkpoint stands, and `--resume` continues from it (on another device if need be).
        Err(e @ (adaptkit::Error::NonFiniteLoss { .. } | adaptkit::Error::Device(_))) => {
            let kept = if store.exists(checkpoint::KEY)? {
                format!("the last good checkpoint is {checkpoint} (continue with --resume)")
            } else {
                "no checkpoint was written yet".to_string()
            };
            return Err(CliError::msg(format!("{e}; {kept}; nothing else was written")));
        }
        other => other?,
    };
    trained.adapter.save(&store)?;
    let report = &trained.report;
    if let Some(plot) = &args.plot {
        let evals = |f: fn(&Evaluation) -> Option<f32>| -> Vec<(f32, f32)> {
            report.evaluations.iter().filter_map(|e| Some((e.step as f32, f(e)?))).collect()
        };
        let series = [
            Series { name: "train", color: "#d62728", points: losses, markers: false },
            Series { name: "held-out", color: "#1f77b4", points: evals(|e| e.held_out), markers: true },
            Series { name: "general text", color: "#2ca02c", points: evals(|e| e.general), markers: true },
        ];
        plot::write_svg(plot, &format!("adaptkit train: {}", args.data.display()), &series)?;
    }
    let out = args.out.display().to_string();
    emit(args.out_format, report, &[("out", json!(out))], || {
        let eval = |l: Option<f32>| l.map_or("-".to_string(), |l| format!("{l:.3}"));
        if let Some(best) = report.best_step {
            say(format_args!(
                "stopped early at step {}: the held-out loss stopped improving; kept the adapter of step {best}\n",
                report.steps
            ));
        }
        if let Some(last) = report.evaluations.last().filter(|e| e.general.is_some()) {
            say(format_args!("{}\n", describe(last)));
        }
        say(format_args!(
            "{} {} steps ({} trainable values), train loss {:.3}, held-out loss {} -> {}, {:.0} tok/s; adapter in {out}\n",
            report.method,
            report.steps,
            report.trainable_parameters,
            report.train_loss,
            eval(report.eval_loss_before),
            eval(report.eval_loss),
            report.tokens_per_s
        ))
    });
    Ok(())
}

/// A training run on the terminal: a progress bar per stage with the loss, learning rate,
/// gradient norm, speed and memory, evaluations and warnings above it.
#[derive(Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
    stage: String,
    /// `(step, loss)` of the training stage, for the plot.
    losses: Vec<(f32, f32)>,
}

impl Progress {
    pub fn on(&mut self, event: TrainEvent) {
        match event {
            TrainEvent::Plan(plan) => {
                if plan.budget_mb.is_some() {
                    eprintln!(
                        "memory plan: micro-batches of {} x {} with{} activation checkpointing, predicted peak {:.0} MiB",
                        plan.batch,
                        plan.accumulate,
                        if plan.checkpoint_activations { "" } else { "out" },
                        plan.predicted_peak_mb
                    );
                }
            }
            TrainEvent::Stage { name, steps } => {
                if let Some(done) = self.bar.take() {
                    done.finish_and_clear();
                }
                self.stage = name.to_string();
                self.bar = Some(progress::bar(name, steps as u64, "steps"));
            }
            TrainEvent::Step { step, tokens_per_s } => {
                let Some(bar) = &self.bar else { return };
                if self.stage == "train" {
                    self.losses.push((step.step as f32, step.loss));
                }
                if let Some(eval) = &step.eval {
                    progress::println(bar, &describe(eval));
                }
                let memory = rss_mb().map_or(String::new(), |mb| format!(", {mb:.0} MiB"));
                bar.set_message(format!(
                    "loss {:.3}, lr {:.1e}, grad norm {:.2}, {tokens_per_s:.0} tok/s{memory}",
                    step.loss, step.lr, step.grad_norm
                ));
                bar.set_position(step.step as u64);
            }
            TrainEvent::StageRecord { name, record } => eprintln!("{name}: {record}"),
            TrainEvent::Checkpoint { .. } => {}
            TrainEvent::Warning(message) => match &self.bar {
                Some(bar) => progress::println(bar, &format!("warning: {message}")),
                None => eprintln!("warning: {message}"),
            },
        }
    }

    /// Clears the bar; the training stage's losses.
    pub fn finish(self) -> Vec<(f32, f32)> {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        self.losses
    }
}

/// One evaluation as a line: losses, perplexities and the rise over the base model.
fn describe(eval: &Evaluation) -> String {
    let mut line = format!("step {}:", eval.step);
    if let Some(l) = eval.held_out {
        line += &format!(" held-out loss {l:.3} (ppl {:.2})", l.exp());
    }
    if let Some(g) = eval.general {
        line += &format!(" general-text ppl {:.2}", g.exp());
    }
    if let Some(rise) = eval.general_rise {
        line += &format!(" ({:+.1}% vs the base model)", 100.0 * rise);
    }
    if eval.forgetting() {
        line += &format!(" [forgetting: more than {:.0}% up]", 100.0 * FORGETTING_LIMIT);
    }
    line
}
