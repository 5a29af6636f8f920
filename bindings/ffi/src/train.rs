//! Training through the bindings: one config for every method (the runtime's
//! [`TrainConfig`](adaptkit::runtime::TrainConfig), unset options taking the method's
//! defaults), progress events, cancel and resume from a [`Storage`], and the memory plan.

use std::sync::Arc;

use adaptkit::runtime::{self, MethodOptions};

use crate::adapter::Adapter;
use crate::error::{count, to_u32, AdaptError};
use crate::model::Model;
use crate::storage::Storage;
use crate::worker::{guarded, on_worker, token_of, CancelToken};

/// How to train. Method options left `null`/`nil` take the method's defaults (`adaptkit
/// methods` lists them); an option the method does not take is an error.
#[derive(uniffi::Record, Clone, Debug)]
pub struct TrainConfig {
    /// `lora`, `dora`, `ia3`, `prompt`, `prefix`, `dept`, `peqa` or `lofit`.
    #[uniffi(default = "lora")]
    pub method: String,
    #[uniffi(default = None)]
    pub rank: Option<u32>,
    #[uniffi(default = None)]
    pub alpha: Option<f32>,
    #[uniffi(default = None)]
    pub dropout: Option<f32>,
    #[uniffi(default = None)]
    pub rslora: Option<bool>,
    /// `kaiming` or `pissa`.
    #[uniffi(default = None)]
    pub init: Option<String>,
    /// Train B only, keeping A at its start (lora; FFA-LoRA, what federated tasks use).
    #[uniffi(default = None)]
    pub freeze_a: Option<bool>,
    /// Projections to adapt: `q`, `k`, `v`, `o`, `gate`, `up`, `down`.
    #[uniffi(default = None)]
    pub targets: Option<Vec<String>>,
    #[uniffi(default = None)]
    pub virtual_tokens: Option<u32>,
    #[uniffi(default = None)]
    pub prompt_init: Option<String>,
    #[uniffi(default = None)]
    pub max_len: Option<u32>,
    #[uniffi(default = None)]
    pub embedding_lr: Option<f32>,
    #[uniffi(default = None)]
    pub heads: Option<u32>,
    #[uniffi(default = None)]
    pub select_steps: Option<u32>,
    #[uniffi(default = None)]
    pub l1: Option<f32>,
    #[uniffi(default = 60)]
    pub steps: u32,
    #[uniffi(default = 4)]
    pub batch: u32,
    #[uniffi(default = 128)]
    pub seq: u32,
    /// `stream` (one cut stream) or `documents` (each document whole, padded).
    #[uniffi(default = "stream")]
    pub packing: String,
    #[uniffi(default = 1)]
    pub accumulate: u32,
    /// The peak learning rate (`null`: the method's).
    #[uniffi(default = None)]
    pub lr: Option<f32>,
    /// `constant`, `linear`, `cosine` or `cosine_with_min_lr` (Hugging Face Trainer's).
    #[uniffi(default = "cosine_with_min_lr")]
    pub lr_schedule: String,
    #[uniffi(default = 0.1)]
    pub min_lr_ratio: f32,
    #[uniffi(default = 0)]
    pub warmup: u32,
    #[uniffi(default = 1.0)]
    pub max_grad_norm: f32,
    #[uniffi(default = 0.0)]
    pub weight_decay: f32,
    #[uniffi(default = 0)]
    pub seed: u64,
    #[uniffi(default = 10)]
    pub eval_every: u32,
    #[uniffi(default = None)]
    pub patience: Option<u32>,
    #[uniffi(default = false)]
    pub checkpoint_activations: bool,
    /// Save a checkpoint every this many steps (0: only when cancelled).
    #[uniffi(default = 10)]
    pub checkpoint_every: u32,
    #[uniffi(default = 0.1)]
    pub held_out_fraction: f32,
    /// Peak memory allowed, in MiB: the planner picks micro-batches and checkpointing to fit.
    #[uniffi(default = None)]
    pub memory_budget_mb: Option<f64>,
    /// Continue from the checkpoint in the storage.
    #[uniffi(default = false)]
    pub resume: bool,
}

/// A value of a named field, parsed by the runtime, with the field in the error.
fn parse<T: std::str::FromStr<Err = adaptkit::Error>>(field: &str, value: &str) -> Result<T, AdaptError> {
    value.parse().map_err(|e: adaptkit::Error| match e {
        adaptkit::Error::InvalidOption { .. } => e.into(),
        other => AdaptError::InvalidArgument(format!("{field}: {other}")),
    })
}

impl TrainConfig {
    pub(crate) fn runtime(&self) -> Result<runtime::TrainConfig, AdaptError> {
        let options = MethodOptions {
            rank: self.rank.map(count),
            alpha: self.alpha,
            dropout: self.dropout,
            rslora: self.rslora,
            freeze_a: self.freeze_a,
            init: self.init.as_deref().map(|v| parse("init", v)).transpose()?,
            targets: self
                .targets
                .as_ref()
                .map(|list| list.iter().map(|t| parse("targets", t)).collect::<Result<_, _>>())
                .transpose()?,
            virtual_tokens: self.virtual_tokens.map(count),
            prompt_init: self.prompt_init.clone(),
            max_len: self.max_len.map(count),
            embedding_lr: self.embedding_lr,
            heads: self.heads.map(count),
            select_steps: self.select_steps.map(count),
            l1: self.l1,
        };
        Ok(runtime::TrainConfig {
            method: parse("method", &self.method)?,
            options,
            steps: count(self.steps),
            batch: count(self.batch),
            seq: count(self.seq),
            packing: parse("packing", &self.packing)?,
            accumulate: count(self.accumulate),
            lr: self.lr,
            lr_schedule: parse("lr_schedule", &self.lr_schedule)?,
            min_lr_ratio: self.min_lr_ratio,
            warmup: count(self.warmup),
            max_grad_norm: self.max_grad_norm,
            weight_decay: self.weight_decay,
            seed: self.seed,
            eval_every: count(self.eval_every),
            patience: self.patience.map(count),
            checkpoint_activations: self.checkpoint_activations,
            checkpoint_every: count(self.checkpoint_every),
            held_out_fraction: self.held_out_fraction,
            memory_budget_mb: self.memory_budget_mb,
            resume: self.resume,
        })
    }
}

/// What a run trains on: texts (documents split at blank lines) or JSON lines (`{"text": …}`
/// or `{"prompt": …, "completion": …}` / chat `messages`).
#[derive(uniffi::Record, Clone, Debug)]
pub struct TrainingData {
    pub text: String,
    /// Names the data in messages and in the adapter's training record.
    #[uniffi(default = "notes.txt")]
    pub name: String,
    /// JSON lines rather than plain text.
    #[uniffi(default = false)]
    pub jsonl: bool,
    /// Held-out text (default: `held_out_fraction` of the training windows).
    #[uniffi(default = None)]
    pub eval_text: Option<String>,
    /// General text watched for forgetting.
    #[uniffi(default = None)]
    pub general_text: Option<String>,
}

impl TrainingData {
    pub(crate) fn runtime(&self) -> runtime::TrainingData {
        runtime::TrainingData::of_texts(
            &self.name,
            self.text.clone(),
            self.jsonl,
            self.eval_text.clone(),
            self.general_text.clone(),
        )
    }
}

/// What the planner decided.
#[derive(uniffi::Record, Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub budget_mb: Option<f64>,
    /// Windows per micro-batch and micro-batches per step.
    pub batch: u32,
    pub accumulate: u32,
    pub checkpoint_activations: bool,
    pub predicted_peak_mb: f64,
}

impl From<&runtime::MemoryPlan> for MemoryPlan {
    fn from(p: &runtime::MemoryPlan) -> Self {
        Self {
            budget_mb: p.budget_mb,
            batch: to_u32(p.batch),
            accumulate: to_u32(p.accumulate),
            checkpoint_activations: p.checkpoint_activations,
            predicted_peak_mb: p.predicted_peak_mb,
        }
    }
}

#[derive(uniffi::Record, Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub step: u32,
    pub held_out_loss: Option<f32>,
    pub general_loss: Option<f32>,
    /// How much the general text's perplexity exceeds the base model's (0.05 = 5%).
    pub general_rise: Option<f32>,
}

impl From<&adaptkit::train::Evaluation> for Evaluation {
    fn from(e: &adaptkit::train::Evaluation) -> Self {
        Self {
            step: to_u32(e.step),
            held_out_loss: e.held_out,
            general_loss: e.general,
            general_rise: e.general_rise,
        }
    }
}

/// What a run reports as it goes.
#[derive(uniffi::Enum, Clone, Debug, PartialEq)]
pub enum TrainEvent {
    /// The memory plan, before anything trains.
    Plan { plan: MemoryPlan },
    /// A stage begins (LoFiT's `select heads`, then `train`).
    Stage { name: String, steps: u32 },
    /// A step is done.
    Step {
        step: u32,
        steps: u32,
        loss: f32,
        lr: f32,
        grad_norm: f32,
        tokens_per_s: f64,
        evaluation: Option<Evaluation>,
    },
    /// A checkpoint was saved after `step`.
    Checkpoint { step: u32, key: String },
    /// Something to show the user (forgetting, a changed schedule on resume).
    Warning { message: String },
}

#[uniffi::export(with_foreign)]
pub trait TrainListener: Send + Sync {
    fn on_event(&self, event: TrainEvent);
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct TrainingReport {
    pub method: String,
    /// The step the run ended at.
    pub steps: u32,
    /// Set when early stopping ended the run: the step of the adapter kept.
    pub best_step: Option<u32>,
    pub train_loss: f32,
    pub eval_loss_before: Option<f32>,
    pub eval_loss: Option<f32>,
    pub general_ppl_rise: Option<f32>,
    pub forgetting: Option<bool>,
    pub evaluations: Vec<Evaluation>,
    pub trainable_parameters: u32,
    pub train_windows: u32,
    pub eval_windows: u32,
    pub tokens: u32,
    pub tokens_per_s: f64,
    pub peak_rss_mb: Option<f64>,
    pub lr: f32,
    pub plan: MemoryPlan,
    /// The whole report as JSON (what `adaptkit train --json` prints).
    pub json: String,
}

impl From<&runtime::TrainingReport> for TrainingReport {
    fn from(r: &runtime::TrainingReport) -> Self {
        Self {
            method: r.method.name().into(),
            steps: to_u32(r.steps),
            best_step: r.best_step.map(to_u32),
            train_loss: r.train_loss,
            eval_loss_before: r.eval_loss_before,
            eval_loss: r.eval_loss,
            general_ppl_rise: r.general_ppl_rise,
            forgetting: r.forgetting,
            evaluations: r.evaluations.iter().map(Evaluation::from).collect(),
            trainable_parameters: to_u32(r.trainable_parameters),
            train_windows: to_u32(r.train_windows),
            eval_windows: to_u32(r.eval_windows),
            tokens: to_u32(r.tokens),
            tokens_per_s: r.tokens_per_s,
            peak_rss_mb: r.peak_rss_mb,
            lr: r.lr,
            plan: (&r.plan).into(),
            json: serde_json::to_string(r).unwrap_or_default(),
        }
    }
}

#[derive(uniffi::Record, Clone)]
pub struct TrainResult {
    pub adapter: Arc<Adapter>,
    pub report: TrainingReport,
}

#[uniffi::export]
impl Model {
    /// Trains an adapter on `data`, reporting to `listener`. Checkpoints go to `storage` every
    /// `checkpoint_every` steps and when the run is cancelled (through `cancel`, or by
    /// cancelling the coroutine or task awaiting it: [`AdaptError::Cancelled`]); a run with
    /// `resume` continues from them, to the same result as a run never stopped.
    pub async fn train(
        &self,
        data: TrainingData,
        config: TrainConfig,
        storage: Arc<Storage>,
        listener: Option<Arc<dyn TrainListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<TrainResult, AdaptError> {
        let model = self.open_model()?;
        let config = config.runtime()?;
        let token = token_of(&cancel);
        on_worker(token.clone(), move || {
            let trained =
                model.train(&data.runtime(), &config, storage.store.as_ref(), &token, &mut |event| {
                    if let (Some(listener), Some(event)) = (&listener, TrainEvent::of(event)) {
                        listener.on_event(event);
                    }
                })?;
            Ok(TrainResult { report: (&trained.report).into(), adapter: Adapter::wrap(trained.adapter) })
        })
        .await
    }

    /// The memory plan a run of `config` would follow, without training
    /// ([`AdaptError::MemoryBudget`] when no plan fits its budget).
    pub async fn plan(&self, config: TrainConfig) -> Result<MemoryPlan, AdaptError> {
        let model = self.open_model()?;
        let config = guarded(|| config.runtime())?;
        on_worker(Default::default(), move || Ok((&model.plan(&config)?).into())).await
    }
}

impl TrainEvent {
    /// The event a binding reports (a stage's record is in the report, not streamed).
    pub(crate) fn of(event: runtime::TrainEvent) -> Option<Self> {
        use runtime::TrainEvent as E;
        Some(match event {
            E::Plan(plan) => Self::Plan { plan: plan.into() },
            E::Stage { name, steps } => Self::Stage { name: name.into(), steps: to_u32(steps) },
            E::Step { step, tokens_per_s } => Self::Step {
                step: to_u32(step.step),
                steps: to_u32(step.steps),
                loss: step.loss,
                lr: step.lr,
                grad_norm: step.grad_norm,
                tokens_per_s,
                evaluation: step.eval.as_ref().map(Evaluation::from),
            },
            E::StageRecord { .. } => return None,
            E::Checkpoint { step, key } => Self::Checkpoint { step: to_u32(step), key: key.into() },
            E::Warning(message) => Self::Warning { message: message.into() },
        })
    }
}
