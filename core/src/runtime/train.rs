//! Training through the runtime API: one options struct for every method ([`TrainConfig`], with
//! each method's defaults from the registry), data as text (`.txt` documents or JSONL), the
//! held-out split, the memory-budget plan, a method's first stage (LoFiT's head selection),
//! checkpoints in a [`Store`] (resumable, whole or not at all), events, and the report.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use web_time::Instant;

use super::adapter::Adapter;
use super::memory::peak_rss_mb;
use super::model::Model;
use super::plan::{self, MemoryPlan, Request};
use crate::adapt::registry::BuildContext;
use crate::adapt::{parameter_count, to_host, trainable, Method, MethodKind, MethodOptions};
use crate::control::CancelToken;
use crate::device::wait;
use crate::engine::Engine;
use crate::error::Error;
use crate::model::Decoder;
use crate::store::Store;
use crate::train::data::{self, Format, Packing, Windows};
use crate::train::{
    self, checkpoint, Checkpointing, Evaluation, LrSchedule, StepReport, TrainOptions, FORGETTING_LIMIT,
};

/// How to train. Every field has a default; unset method options take the method's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub method: MethodKind,
    pub options: MethodOptions,
    /// Optimizer steps (for a staged method, of its last stage).
    pub steps: usize,
    /// Windows per micro-batch.
    pub batch: usize,
    /// Tokens per window.
    pub seq: usize,
    /// How examples become windows: one cut stream, or whole documents padded.
    pub packing: Packing,
    /// Micro-batches per optimizer step.
    pub accumulate: usize,
    /// The peak learning rate (default: the method's).
    pub lr: Option<f32>,
    pub lr_schedule: LrSchedule,
    /// The floor of `cosine_with_min_lr`, as a fraction of the peak.
    pub min_lr_ratio: f32,
    pub warmup: usize,
    /// Clip the global gradient norm to this; 0 = off.
    pub max_grad_norm: f32,
    pub weight_decay: f32,
    pub seed: u64,
    /// Evaluate every this many steps (0: only before and after).
    pub eval_every: usize,
    /// Stop once the held-out loss has not improved for this many evaluations, keeping the
    /// best adapter.
    pub patience: Option<usize>,
    pub checkpoint_activations: bool,
    /// Save a checkpoint every this many steps (0: only when cancelled).
    pub checkpoint_every: usize,
    /// Of the training windows, the fraction held out when no evaluation data is given.
    pub held_out_fraction: f32,
    /// Peak memory allowed, in MiB: the planner picks micro-batches and checkpointing to fit.
    pub memory_budget_mb: Option<f64>,
    /// Continue from the checkpoint in the store.
    pub resume: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: MethodKind::default(),
            options: MethodOptions::default(),
            steps: 60,
            batch: 4,
            seq: 128,
            packing: Packing::Stream,
            accumulate: 1,
            lr: None,
            lr_schedule: LrSchedule::default(),
            min_lr_ratio: 0.1,
            warmup: 0,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: 0,
            eval_every: 10,
            patience: None,
            checkpoint_activations: false,
            checkpoint_every: 10,
            held_out_fraction: 0.1,
            memory_budget_mb: None,
            resume: false,
        }
    }
}

impl TrainConfig {
    /// The peak learning rate: the one given or the method's default.
    pub fn lr(&self) -> f32 {
        self.lr.unwrap_or(self.method.spec().default_lr)
    }

    /// Refuses values out of range, naming the field.
    pub fn check(&self, context_len: usize) -> Result<(), Error> {
        self.options.check(self.method)?;
        for (field, value) in [("steps", self.steps), ("batch", self.batch), ("accumulate", self.accumulate)]
        {
            if value == 0 {
                return Err(Error::option(field, value, "must be at least 1"));
            }
        }
        if self.seq < 2 {
            return Err(Error::option("seq", self.seq, "a window needs at least 2 tokens"));
        }
        if self.seq > context_len {
            return Err(Error::ContextOverflow { tokens: self.seq, context: context_len });
        }
        let lr = self.lr();
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::option("lr", lr, "must be positive"));
        }
        if self.patience == Some(0) || (self.patience.is_some() && self.eval_every == 0) {
            return Err(Error::option(
                "patience",
                self.patience.unwrap_or(0),
                "needs to be at least 1, with eval_every above 0",
            ));
        }
        let non_negative = |field: &str, v: f32| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(Error::option(field, v, "must be finite and at least 0"))
            }
        };
        non_negative("max_grad_norm", self.max_grad_norm)?;
        non_negative("weight_decay", self.weight_decay)?;
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::option("min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]"));
        }
        if !(0.0..1.0).contains(&self.held_out_fraction) {
            return Err(Error::option("held_out_fraction", self.held_out_fraction, "must be in [0, 1)"));
        }
        if let Some(budget) = self.memory_budget_mb.filter(|b| !(*b > 0.0 && b.is_finite())) {
            return Err(Error::option("memory_budget", budget, "must be a positive size"));
        }
        Ok(())
    }
}

/// Training text: `.txt` documents (split at blank lines) or JSONL examples.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// What names it in messages and in the adapter's training record (a file name).
    pub name: String,
    pub text: String,
    pub format: Format,
}

impl Dataset {
    pub fn new(name: impl Into<String>, text: impl Into<String>, format: Format) -> Self {
        Self { name: name.into(), text: text.into(), format }
    }

    /// Reads a file: `.jsonl`/`.json` as JSON lines; `.txt`, `.text`, `.md`, `.rst` or no
    /// extension as text, which must be UTF-8; any other extension is refused.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let format = Format::of(path).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: not a data format adaptkit reads: give .txt (plain text, documents separated by blank lines) or .jsonl (one JSON object per line)",
                path.display()
            ))
        })?;
        let text = crate::format::read_text(path)?;
        let name =
            path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { name, text, format })
    }

    /// Its windows of `seq` tokens, `held_out` of them held out.
    fn windows(&self, model: &Model, config: &TrainConfig, held_out: f32) -> Result<Windows, Error> {
        let tokenizer = model.engine().tokenizer();
        data::windows(&self.text, self.format, tokenizer, config.seq, config.packing, held_out, config.seed)
            .map_err(|e| match e {
                Error::InvalidArgument(message) => {
                    Error::InvalidArgument(format!("{}: {message}", self.name))
                }
                other => other,
            })
    }
}

/// What a run trains on: the training data, held-out data (default: a fraction of the
/// training windows) and general text watched for forgetting.
#[derive(Clone, Debug)]
pub struct TrainingData {
    pub train: Dataset,
    pub eval: Option<Dataset>,
    pub general: Option<Dataset>,
}

impl TrainingData {
    /// Texts as a run's data, as an app holds them: the training text (`jsonl`: JSON lines, else
    /// plain text named `name`), and optional held-out and general texts.
    pub fn of_texts(
        name: &str,
        text: String,
        jsonl: bool,
        eval: Option<String>,
        general: Option<String>,
    ) -> Self {
        let format = if jsonl { Format::JsonLines } else { Format::Text };
        Self {
            train: Dataset::new(name, text, format),
            eval: eval.map(|t| Dataset::new("eval", t, Format::Text)),
            general: general.map(|t| Dataset::new("general", t, Format::Text)),
        }
    }
}

/// What a training run reports as it goes.
pub enum TrainEvent<'a> {
    /// The memory plan, before anything trains.
    Plan(&'a MemoryPlan),
    /// A stage begins: a method's first stage (`select heads`), then `train`.
    Stage { name: &'a str, steps: usize },
    /// A step is done; `tokens_per_s` is the stage's throughput so far (after its first step).
    Step { step: &'a StepReport, tokens_per_s: f64 },
    /// A stage's choice (LoFiT's heads), recorded in the store.
    StageRecord { name: &'a str, record: &'a Value },
    /// A checkpoint was saved at `key` after step `step`.
    Checkpoint { step: usize, key: &'a str },
    /// Something the caller should know (forgetting, a changed schedule on resume).
    Warning(&'a str),
}

/// A trained adapter and the report of its run.
pub struct Trained {
    pub adapter: Adapter,
    pub report: TrainingReport,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainingReport {
    pub method: MethodKind,
    /// The step the run ended at.
    pub steps: usize,
    /// Set when early stopping ended the run: the step of the adapter kept.
    pub best_step: Option<usize>,
    pub train_loss: f32,
    pub eval_loss: Option<f32>,
    pub eval_loss_before: Option<f32>,
    pub general_loss_base: Option<f32>,
    pub general_loss: Option<f32>,
    /// How much the general text's perplexity exceeds the base model's (0.05 = 5%).
    pub general_ppl_rise: Option<f32>,
    pub forgetting: Option<bool>,
    pub evaluations: Vec<Evaluation>,
    pub trainable_parameters: usize,
    pub train_windows: usize,
    pub eval_windows: usize,
    pub tokens: usize,
    /// Training throughput over the steps after the first (evaluations excluded).
    pub tokens_per_s: f64,
    pub peak_rss_mb: Option<f64>,
    pub lr: f32,
    pub lr_schedule: LrSchedule,
    pub plan: MemoryPlan,
    /// A staged method's choice (LoFiT: the heads).
    pub stage: Option<Value>,
}

fn build_context<'a>(engine: &'a Engine, config: &'a TrainConfig) -> BuildContext<'a> {
    BuildContext {
        method: config.method,
        model: engine.model(),
        tokenizer: engine.tokenizer(),
        options: &config.options,
        seq: config.seq,
        lr: config.lr(),
        seed: config.seed,
    }
}

/// The plan a run of `config` follows: within its memory budget, or the prediction when it has none.
fn plan_of(model: &Decoder, adapter: &dyn Method, config: &TrainConfig) -> Result<MemoryPlan, Error> {
    let request = Request {
        batch: config.batch,
        accumulate: config.accumulate,
        seq: config.seq,
        checkpoint_activations: config.checkpoint_activations,
    };
    match config.memory_budget_mb {
        Some(budget) => plan::choose(model, adapter, request, budget),
        None => Ok(plan::unbudgeted(model, adapter, request)),
    }
}

impl Model {
    /// The memory plan a run of `config` would follow, without training: an app asks before
    /// it starts whether a budget fits ([`Error::InvalidOption`] on `memory_budget` when none
    /// does, naming the smallest budget that would). The model need not be trainable.
    pub fn plan(&self, config: &TrainConfig) -> Result<MemoryPlan, Error> {
        let engine = self.engine();
        config.check(engine.model().config().context_len)?;
        engine.run(|engine| {
            let adapter = (config.method.spec().build)(&build_context(engine, config))?;
            plan_of(engine.model(), adapter.as_ref(), config)
        })
    }

    /// Trains an adapter of `config.method` on `data`, reporting through `on_event`. The
    /// model must be open with `trainable`. Checkpoints (and a first stage's record) go to
    /// `store`: every `config.checkpoint_every` steps and when `cancel` stops the run
    /// ([`Error::Cancelled`]); `config.resume` continues from them. A loss or gradient that is
    /// not finite, or a failed GPU, stops the run with the last checkpoint left as it was.
    pub fn train(
        &self,
        data: &TrainingData,
        config: &TrainConfig,
        store: &dyn Store,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(TrainEvent) + Send),
    ) -> Result<Trained, Error> {
        let windows = self.training_windows(data, config)?;
        self.engine().run(|_| wait(self.fit(None, &windows, data, config, store, cancel, on_event)))
    }

    /// [`train`](Self::train), awaiting each step's read-backs (the browser's GPU path).
    pub async fn train_async(
        &self,
        data: &TrainingData,
        config: &TrainConfig,
        store: &dyn Store,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(TrainEvent) + Send),
    ) -> Result<Trained, Error> {
        let windows = self.training_windows(data, config)?;
        self.engine().run_async(self.fit(None, &windows, data, config, store, cancel, on_event)).await
    }

    /// Continues training `start`, an adapter loaded or trained for this model, as
    /// [`train`](Self::train) does a new one. Its method and options are its own:
    /// `config.method` must be its method and `config.options` left unset. A federated device
    /// trains the shared adapter this way (a method's first stage, done when it was made, is
    /// not run again).
    pub fn train_from(
        &self,
        start: &Adapter,
        data: &TrainingData,
        config: &TrainConfig,
        store: &dyn Store,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(TrainEvent) + Send),
    ) -> Result<Trained, Error> {
        start.check_model(self.engine().model())?;
        if config.method != start.method() {
            return Err(Error::option(
                "method",
                config.method,
                format!("the adapter to continue is a {} adapter", start.method()),
            ));
        }
        if config.options != MethodOptions::default() {
            return Err(Error::InvalidArgument(
                "a continued adapter keeps its own options (rank, targets, …): leave them unset".into(),
            ));
        }
        let windows = self.training_windows(data, config)?;
        self.engine().run(|_| wait(self.fit(Some(start), &windows, data, config, store, cancel, on_event)))
    }

    /// A new, untrained adapter of `config.method` with `config.options` for this model (a
    /// LoRA's `B` is zero, so it starts as the base model): a federated task's first shared
    /// adapter.
    pub fn new_adapter(&self, config: &TrainConfig) -> Result<Adapter, Error> {
        config.options.check(config.method)?;
        self.engine().run(|engine| {
            let method = (config.method.spec().build)(&build_context(engine, config))?;
            Ok(self.adapter(method.as_ref(), format!("new {}", config.method), None))
        })
    }

    /// The run's windows, after checking that the model can train and `config` is sound.
    fn training_windows(&self, data: &TrainingData, config: &TrainConfig) -> Result<Windows, Error> {
        let engine = self.engine();
        if !engine.model().device().is_autodiff() {
            return Err(Error::InvalidArgument(
                "the model was opened for inference: open it with `trainable` to train adapters".into(),
            ));
        }
        config.check(engine.model().config().context_len)?;
        let held_out = if data.eval.is_some() { 0.0 } else { config.held_out_fraction };
        let mut windows = data.train.windows(self, config, held_out)?;
        if let Some(eval) = &data.eval {
            windows.held_out = eval.windows(self, config, 0.0)?.train;
        }
        if let Some(general) = &data.general {
            windows.general = general.windows(self, config, 0.0)?.train;
        }
        Ok(windows)
    }

    #[allow(clippy::too_many_arguments)]
    async fn fit(
        &self,
        start: Option<&Adapter>,
        windows: &Windows,
        data: &TrainingData,
        config: &TrainConfig,
        store: &dyn Store,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(TrainEvent) + Send),
    ) -> Result<Trained, Error> {
        // What a run killed mid-write left in the store is not needed to resume it.
        store.sweep()?;
        let engine = self.engine();
        let lr = config.lr();
        let ctx = build_context(engine, config);
        let spec = config.method.spec();
        let mut adapter = match start {
            Some(start) => trainable(start.shared().boxed_clone()),
            None => trainable((spec.build)(&ctx)?),
        };
        let plan = plan_of(engine.model(), adapter.as_ref(), config)?;
        on_event(TrainEvent::Plan(&plan));
        let options = TrainOptions {
            steps: config.steps,
            batch: plan.batch,
            accumulate: plan.accumulate,
            lr,
            schedule: config.lr_schedule,
            min_lr_ratio: config.min_lr_ratio,
            warmup: config.warmup,
            max_grad_norm: (config.max_grad_norm > 0.0).then_some(config.max_grad_norm),
            weight_decay: config.weight_decay,
            seed: config.seed,
            eval_every: config.eval_every,
            patience: config.patience,
            checkpoint_activations: plan.checkpoint_activations,
        };
        let mut stage_record = None;
        if let Some(stage) = spec.stage.as_ref().filter(|_| start.is_none()) {
            let saved = if config.resume { store.read(stage.record)? } else { None };
            let record = match saved {
                Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Adapter {
                    path: store.locate(stage.record),
                    message: format!("not JSON: {e}"),
                })?,
                None => {
                    let first = TrainOptions {
                        steps: ctx.count_of(stage.steps)?,
                        lr: lr * stage.lr_factor,
                        eval_every: 0,
                        patience: None,
                        warmup: 0,
                        ..options.clone()
                    };
                    on_event(TrainEvent::Stage { name: stage.name, steps: first.steps });
                    let mut throughput = Throughput::default();
                    train::fit(
                        engine.model(),
                        &mut adapter,
                        windows,
                        &first,
                        Checkpointing::default(),
                        cancel,
                        &mut |step| on_event(TrainEvent::Step { step, tokens_per_s: throughput.after(step) }),
                    )
                    .await?;
                    // The stage reads the adapter's values: on the host, where reading never waits.
                    let record = (stage.finish)(to_host(adapter.as_ref()).await?.as_ref(), &ctx)?;
                    store.write(stage.record, &serde_json::to_vec(&record).unwrap_or_default())?;
                    record
                }
            };
            on_event(TrainEvent::StageRecord { name: stage.name, record: &record });
            adapter = trainable((stage.next)(&record, &ctx)?);
            stage_record = Some(record);
        }
        let settings = run_settings(config);
        let resume = if config.resume {
            let bytes = store.read(checkpoint::KEY)?.ok_or_else(|| Error::Adapter {
                path: store.locate(checkpoint::KEY),
                message: "no checkpoint to resume from: the run stopped before its first checkpoint, or never ran here; start it without resume".into(),
            })?;
            Some(checkpoint::load(bytes, &store.locate(checkpoint::KEY), adapter.as_mut(), &settings)?)
        } else {
            None
        };
        if let Some(planned) =
            resume.as_ref().map(|s| s.planned_steps).filter(|&p| p != 0 && p != config.steps)
        {
            let note = format!(
                    "the checkpoint's run was planned for {planned} steps; from here the learning-rate schedule follows steps = {}",
                    config.steps
                );
            on_event(TrainEvent::Warning(&note));
        }
        on_event(TrainEvent::Stage { name: "train", steps: config.steps });
        let mut throughput = Throughput::default();
        let checkpointing =
            Checkpointing { resume, save: Some((store, checkpoint::KEY, config.checkpoint_every)), settings };
        let report =
            train::fit(engine.model(), &mut adapter, windows, &options, checkpointing, cancel, &mut |step| {
                on_event(TrainEvent::Step { step, tokens_per_s: throughput.after(step) });
                if step.checkpointed {
                    on_event(TrainEvent::Checkpoint { step: step.step, key: checkpoint::KEY });
                }
                if step.eval.is_some_and(|e| e.forgetting()) {
                    on_event(TrainEvent::Warning(&forgetting_warning()));
                }
            })
            .await?;
        let last = report.evaluations.last().copied();
        if last.is_some_and(|e| e.forgetting()) {
            on_event(TrainEvent::Warning(&forgetting_warning()));
        }
        let record = json!({
            "method": config.method.name(),
            "steps": report.steps,
            "tokens": report.tokens,
            "batch": plan.batch * plan.accumulate,
            "seq": config.seq,
            "lr": decimal(lr),
            "lr_schedule": config.lr_schedule,
            "data": data.train.name,
            "data_bytes": data.train.text.len(),
            "train_windows": windows.train.len(),
            "eval_loss": report.eval_loss.map(decimal),
            "eval_loss_before": report.eval_loss_before.map(decimal),
        });
        let trainable_parameters = parameter_count(adapter.as_ref());
        let report = TrainingReport {
            method: config.method,
            steps: report.steps,
            best_step: report.best_step,
            train_loss: report.train_loss,
            eval_loss: report.eval_loss,
            eval_loss_before: report.eval_loss_before,
            general_loss_base: report.general_loss_base,
            general_loss: last.and_then(|e| e.general),
            general_ppl_rise: last.and_then(|e| e.general_rise),
            forgetting: last.map(|e| e.forgetting()),
            evaluations: report.evaluations,
            trainable_parameters,
            train_windows: windows.train.len(),
            eval_windows: windows.held_out.len(),
            tokens: report.tokens,
            tokens_per_s: throughput.rate,
            peak_rss_mb: peak_rss_mb(),
            lr,
            lr_schedule: config.lr_schedule,
            plan,
            stage: stage_record,
        };
        let adapter = self.adapter(adapter.as_ref(), format!("trained {}", config.method), Some(record));
        Ok(Trained { adapter, report })
    }
}

/// `x` as the shortest decimal that reads back as it: the adapter's record then reads back
/// from its JSON as it was written (a long decimal may come back an ulp off).
fn decimal(x: f32) -> Value {
    x.to_string().parse::<f64>().map_or(Value::Null, Value::from)
}

/// The settings a run's checkpoints carry and a resume must match: those that shape the
/// adapter (the method and every option it takes), the windows and their order (`seq`,
/// packing, batch, seed) and the optimizer's state (weight decay). Steps, the learning rate
/// and its schedule, evaluation, checkpointing and memory settings may change on resume.
fn run_settings(config: &TrainConfig) -> Value {
    json!({
        "method": config.method.name(),
        "options": config.options.resolved(config.method),
        "seq": config.seq,
        "packing": config.packing,
        "batch": config.batch,
        "accumulate": config.accumulate,
        "seed": config.seed,
        "weight_decay": config.weight_decay,
    })
}

/// Tokens per second over the steps after a stage's first (its warm-up, and the evaluations
/// before it, are not training).
#[derive(Default)]
struct Throughput {
    first: Option<(Instant, usize)>,
    rate: f64,
}

impl Throughput {
    fn after(&mut self, step: &StepReport) -> f64 {
        let now = Instant::now();
        let (t0, n0) = *self.first.get_or_insert((now, step.tokens));
        let secs = (now - t0).as_secs_f64();
        if secs > 0.0 {
            self.rate = (step.tokens - n0) as f64 / secs;
        }
        self.rate
    }
}

fn forgetting_warning() -> String {
    format!(
        "general-text perplexity is up more than {:.0}%: the adapter is starting to forget; try a lower lr, fewer steps or patience",
        100.0 * FORGETTING_LIMIT
    )
}
