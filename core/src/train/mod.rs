//! Training adapters on the frozen quantized base: next-token cross-entropy through the model
//! (gradients reach the adapters through our quantized linear op, see `model::linear`) and
//! AdamW on the adapter's tensors.

pub mod checkpoint;
pub mod data;
pub mod generator;
pub mod loss;
pub mod schedule;

pub use loss::{loss_and_gradients, loss_and_gradients_on_device, masked_next_token_loss, next_token_loss};
pub use schedule::LrSchedule;

use std::collections::BTreeMap;

use burn::tensor::Gradients;
use burn::tensor::Tensor;

use crate::adapt::{detached, trainable, Method};
use crate::error::Error;
use crate::model::linear::read_f32;
use crate::model::{soft_prompt_len, Adapters, Decoder, NoAdapters};
use crate::store::Store;

/// Where a run starts (`resume`: a state from [`checkpoint::load`]), where it saves (`save`: a
/// store, the key, and every how many steps) and the run's settings its checkpoints carry
/// (what a resume must match, see [`checkpoint::load`]).
#[derive(Default)]
pub struct Checkpointing<'a> {
    pub resume: Option<TrainState>,
    pub save: Option<(&'a dyn Store, &'a str, usize)>,
    pub settings: serde_json::Value,
}

/// Everything a run needs to continue exactly where it stopped (with the adapter itself).
#[derive(Clone)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Passes through the training windows begun (the shuffle of each is seeded by it).
    pub epoch: u64,
    /// Position in `order` of the next window.
    pub next: usize,
    pub order: Vec<usize>,
    pub optimizer: AdamW,
    /// The run's planned steps, which shape its learning-rate schedule.
    pub planned_steps: usize,
    /// Tokens trained on since the run began, and the last step's loss.
    pub tokens: usize,
    pub train_loss: Option<f32>,
    /// What the trainer reports across a resume (its evaluations so far), as it records it.
    pub history: serde_json::Value,
}

impl TrainState {
    pub fn new(windows: usize, weight_decay: f32) -> Self {
        Self {
            step: 0,
            epoch: 0,
            next: 0,
            order: (0..windows).collect(),
            optimizer: AdamW::new(weight_decay),
            planned_steps: 0,
            tokens: 0,
            train_loss: None,
            history: serde_json::Value::Null,
        }
    }
}

/// AdamW (decoupled weight decay), with state per parameter name.
#[derive(Clone)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub(crate) steps: i32,
    pub(crate) moments: BTreeMap<String, (Tensor<2>, Tensor<2>)>,
}

impl AdamW {
    pub fn new(weight_decay: f32) -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, steps: 0, moments: BTreeMap::new() }
    }

    /// One update, at learning rate `lr` (times the method's factor for each parameter), of
    /// every parameter of `adapter` named in `grads`.
    pub fn step(&mut self, adapter: &mut dyn Method, grads: &BTreeMap<String, Tensor<2>>, lr: f32) {
        self.steps += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let correction1 = 1.0 - b1.powi(self.steps);
        let correction2 = 1.0 - b2.powi(self.steps);
        let rates: Vec<f32> =
            adapter.parameters().iter().map(|(name, _)| lr * adapter.learning_rate_scale(name)).collect();
        for ((name, param), lr) in adapter.parameters_mut().into_iter().zip(rates) {
            let Some(grad) = grads.get(&name).cloned() else { continue };
            let value = param.clone().inner();
            let (m, v) = self.moments.remove(&name).unwrap_or_else(|| (grad.zeros_like(), grad.zeros_like()));
            let m = m.mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1);
            let v = v.mul_scalar(b2) + grad.square().mul_scalar(1.0 - b2);
            let update = m.clone().div_scalar(correction1)
                / (v.clone().div_scalar(correction2).sqrt().add_scalar(self.eps));
            let value = value.mul_scalar(1.0 - lr * self.weight_decay) - update.mul_scalar(lr);
            *param = Tensor::from_inner(value).require_grad();
            self.moments.insert(name, (m, v));
        }
    }
}

/// The gradients of `adapter`'s parameters in `grads`, by name, off the autodiff graph.
pub fn collect_grads(adapter: &dyn Method, grads: &Gradients) -> BTreeMap<String, Tensor<2>> {
    adapter.parameters().into_iter().filter_map(|(name, param)| Some((name, param.grad(grads)?))).collect()
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`; returns the norm before.
pub async fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor<2>>, max_norm: f32) -> Result<f32, Error> {
    // One read-back for all of them (each is a GPU round trip).
    let squares: Vec<Tensor<1>> = grads.values().map(|g| g.clone().square().sum()).collect();
    if squares.is_empty() {
        return Ok(0.0);
    }
    let squares = read_f32(Tensor::cat(squares, 0)).await?;
    let norm = squares.iter().map(|&s| f64::from(s)).sum::<f64>().sqrt() as f32;
    if norm > max_norm {
        let scale = max_norm / norm;
        grads.values_mut().for_each(|g| *g = g.clone().mul_scalar(scale));
    }
    Ok(norm)
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub steps: usize,
    /// Windows per micro-batch.
    pub batch: usize,
    /// Micro-batches whose gradients are averaged into one optimizer step.
    pub accumulate: usize,
    /// Peak learning rate, reached after `warmup` steps; then `schedule` shapes it.
    pub lr: f32,
    pub schedule: LrSchedule,
    /// The floor of [`LrSchedule::CosineWithMinLr`], as a fraction of `lr`.
    pub min_lr_ratio: f32,
    pub warmup: usize,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f32>,
    pub weight_decay: f32,
    pub seed: u64,
    /// Measure held-out and general-text loss every this many steps (0: only before and after).
    pub eval_every: usize,
    /// Early stopping: stop once the held-out loss has not improved for this many evaluations.
    pub patience: Option<usize>,
    /// Keep only each block's input during the forward pass and recompute the block in
    /// backward (activation checkpointing): far less memory for one more forward pass.
    pub checkpoint_activations: bool,
}

impl TrainOptions {
    /// The rate of step `step` (from 1) under the run's schedule.
    pub fn learning_rate(&self, step: usize) -> f32 {
        self.schedule.rate(self.lr, step, self.steps, self.warmup, self.min_lr_ratio)
    }
}

/// Mean losses at one point of a run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub step: usize,
    /// On the held-out windows (`None` without any).
    pub held_out: Option<f32>,
    /// On the general-text windows (`None` without any).
    pub general: Option<f32>,
    /// How much the general-text perplexity exceeds the base model's, as a fraction (0.05 =
    /// 5% higher): the measure of forgetting.
    pub general_rise: Option<f32>,
}

impl Evaluation {
    /// Whether the general-text perplexity rose past [`FORGETTING_LIMIT`].
    pub fn forgetting(&self) -> bool {
        self.general_rise.is_some_and(|rise| rise > FORGETTING_LIMIT)
    }
}

/// What the progress callback sees after each step.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub tokens: usize,
    /// Set on the steps where the run evaluated (every `eval_every`).
    pub eval: Option<Evaluation>,
    /// Whether a checkpoint was saved after this step.
    pub checkpointed: bool,
}

#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The step the run ended at.
    pub steps: usize,
    pub train_loss: f32,
    /// Mean loss over the held-out windows before and after training (`None` without any).
    pub eval_loss_before: Option<f32>,
    pub eval_loss: Option<f32>,
    /// Mean loss of the base model (no adapter) on the general-text windows: the reference
    /// for [`Evaluation::general_rise`].
    pub general_loss_base: Option<f32>,
    /// Every evaluation, the first before training and the last after it.
    pub evaluations: Vec<Evaluation>,
    /// Set when early stopping ended the run: the step of the best held-out loss, whose
    /// adapter the run returns.
    pub best_step: Option<usize>,
    pub tokens: usize,
}

/// Perplexity rise on general text beyond which a run is said to be forgetting.
pub const FORGETTING_LIMIT: f32 = 0.05;

/// Trains `adapter` (made `trainable` on a model on an autodiff device) on `windows`, cycling
/// through the training windows in batches, from `checkpointing.resume` when given.
///
/// - With `checkpointing.save = (store, key, every)` the whole state is written to `key` every
///   `every` steps (whole, or not at all), so a killed run resumes with the same losses.
/// - Every `options.eval_every` steps the held-out and general-text losses are measured; with
///   `options.patience`, the run stops once the held-out loss has not improved for that many
///   evaluations and returns the best adapter.
/// - When `cancel` is set the run stops at the next step boundary, saves a checkpoint (when
///   saving) and returns [`Error::Cancelled`].
/// - A loss or gradient that is not finite stops the run with [`Error::NonFiniteLoss`] before
///   the update, leaving the last checkpoint as it was.
///
/// Async because each step's loss and gradient norm are read back from the device: awaited in
/// the browser, blocked on natively ([`crate::device::wait`]).
pub async fn fit(
    model: &Decoder,
    adapter: &mut Box<dyn Method>,
    windows: &data::Windows,
    options: &TrainOptions,
    checkpointing: Checkpointing<'_>,
    cancel: &crate::control::CancelToken,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TrainReport, Error> {
    if options.steps == 0 || options.batch == 0 || options.accumulate == 0 || windows.train.is_empty() {
        return Err(Error::InvalidArgument(
            "training needs steps, batch and accumulation >= 1, and data".into(),
        ));
    }
    if options.patience.is_some() && windows.held_out.is_empty() {
        return Err(Error::InvalidArgument("early stopping needs held-out data".into()));
    }
    let context = model.config().context_len;
    let prompt = soft_prompt_len(adapter.as_ref());
    let all = || windows.train.iter().chain(&windows.held_out).chain(&windows.general);
    if let Some(long) = all().map(|w| prompt + w.tokens.len()).find(|&len| len > context) {
        return Err(Error::ContextOverflow { tokens: long, context });
    }
    let fresh = TrainState::new(windows.train.len(), options.weight_decay);
    let Checkpointing { resume, save, settings } = checkpointing;
    let resumed = resume.is_some();
    let mut state = resume.unwrap_or(fresh);
    state.planned_steps = options.steps;
    let n = windows.train.len();
    if state.order.len() != n {
        return Err(Error::InvalidArgument(format!(
            "the checkpoint was made on {} training windows, this data has {n}: resume with the same data and seq",
            state.order.len(),
        )));
    }
    if let Some(bad) = state.order.iter().find(|&&i| i >= n).or((state.next > n).then_some(&state.next)) {
        return Err(Error::InvalidArgument(format!(
            "the checkpoint's window order points at window {bad} of {n}: it is damaged"
        )));
    }
    // A resumed run continues its record: the evaluations so far and the base model's
    // general-text loss (against which forgetting is measured).
    let history: History = serde_json::from_value(state.history.clone()).unwrap_or_default();
    let general_loss_base = match history.evaluations.is_empty() {
        true => mean_loss(model, &NoAdapters, &windows.general).await?,
        false => history.general_loss_base,
    };
    let mut evaluations = history.evaluations;
    let at_start = match (evaluations.is_empty(), resumed && options.patience.is_some()) {
        (true, _) => {
            let first = evaluate(model, adapter.as_ref(), state.step, windows, general_loss_base).await?;
            evaluations.push(first);
            Some(first)
        }
        // Early stopping compares against the adapter as resumed.
        (false, true) => {
            Some(evaluate(model, adapter.as_ref(), state.step, windows, general_loss_base).await?)
        }
        (false, false) => None,
    };
    let record = |evaluations: &[Evaluation]| {
        serde_json::to_value(History { evaluations: evaluations.to_vec(), general_loss_base })
            .unwrap_or_default()
    };
    state.history = record(&evaluations);
    // The best held-out loss so far, its step and adapter, and evaluations since it.
    let snapshot = |adapter: &dyn Method| options.patience.map(|_| detached(adapter));
    let start_loss = at_start.and_then(|e| e.held_out).unwrap_or(f32::INFINITY);
    let mut best = (start_loss, state.step, snapshot(adapter.as_ref()), 0);
    let mut last_step = state.step;
    for step in state.step + 1..=options.steps {
        if cancel.is_cancelled() {
            if let Some((store, key, _)) = save {
                store.write(key, &checkpoint::to_bytes(adapter.as_ref(), &state, &settings).await?)?;
            }
            return Err(Error::Cancelled);
        }
        let mut summed: BTreeMap<String, Tensor<2>> = BTreeMap::new();
        let mut losses = Vec::with_capacity(options.accumulate);
        for micro in 0..options.accumulate {
            let batch = next_batch(&mut state, windows, options);
            // Dropout masks depend on the seed, step and micro-batch only, so a resumed run
            // and the recomputed blocks of activation checkpointing draw the same ones.
            let mix = (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro as u64;
            adapter.set_training_seed(Some(options.seed.wrapping_add(mix)));
            let (loss, grads) = loss_and_gradients_on_device(
                model,
                adapter.as_mut(),
                &batch.tokens,
                Some(&batch.targets),
                options.batch,
                options.checkpoint_activations,
            )?;
            losses.push(loss);
            for (name, g) in grads {
                let total = match summed.remove(&name) {
                    Some(total) => total + g,
                    None => g,
                };
                summed.insert(name, total);
            }
            state.tokens += batch.tokens.len();
        }
        let train_loss =
            read_f32(Tensor::cat(losses, 0)).await?.iter().sum::<f32>() / options.accumulate as f32;
        let mut grads: BTreeMap<String, Tensor<2>> =
            summed.into_iter().map(|(name, g)| (name, g.div_scalar(options.accumulate as f32))).collect();
        let grad_norm = clip_grad_norm(&mut grads, options.max_grad_norm.unwrap_or(f32::INFINITY)).await?;
        if !train_loss.is_finite() || !grad_norm.is_finite() {
            return Err(Error::NonFiniteLoss { step, loss: train_loss, grad_norm });
        }
        let lr = options.learning_rate(step);
        state.optimizer.step(adapter.as_mut(), &grads, lr);
        state.step = step;
        state.train_loss = Some(train_loss);
        last_step = step;
        let due = options.eval_every > 0 && step % options.eval_every == 0 && step < options.steps;
        let eval = if due {
            Some(evaluate(model, adapter.as_ref(), step, windows, general_loss_base).await?)
        } else {
            None
        };
        if let Some(eval) = eval {
            evaluations.push(eval);
            state.history = record(&evaluations);
        }
        let checkpoint = save.filter(|(_, _, every)| *every > 0 && step % *every == 0);
        if let Some((store, key, _)) = checkpoint {
            store.write(key, &checkpoint::to_bytes(adapter.as_ref(), &state, &settings).await?)?;
        }
        let checkpointed = checkpoint.is_some();
        on_step(&StepReport {
            step,
            steps: options.steps,
            loss: train_loss,
            lr,
            grad_norm,
            tokens: state.tokens,
            eval,
            checkpointed,
        });
        let Some(eval) = eval else { continue };
        let held_out = eval.held_out.unwrap_or(f32::INFINITY);
        if held_out < best.0 {
            best = (held_out, step, snapshot(adapter.as_ref()), 0);
        } else {
            best.3 += 1;
            if options.patience.is_some_and(|patience| best.3 >= patience) {
                break;
            }
        }
    }
    adapter.set_training_seed(None);
    // Only early stopping ends a run before its last step.
    let best_step = match best {
        (_, step, Some(best), _) if last_step < options.steps => {
            *adapter = trainable(best);
            Some(step)
        }
        _ => None,
    };
    let last =
        evaluate(model, adapter.as_ref(), best_step.unwrap_or(last_step), windows, general_loss_base).await?;
    evaluations.push(last);
    Ok(TrainReport {
        steps: last_step,
        train_loss: state.train_loss.unwrap_or(f32::NAN),
        eval_loss_before: evaluations[0].held_out,
        eval_loss: last.held_out,
        general_loss_base,
        evaluations,
        best_step,
        tokens: state.tokens,
    })
}

/// What [`fit`] keeps in [`TrainState::history`] across a resume.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct History {
    evaluations: Vec<Evaluation>,
    general_loss_base: Option<f32>,
}

/// The next `options.batch` training windows in the run's shuffled order, concatenated.
fn next_batch(state: &mut TrainState, windows: &data::Windows, options: &TrainOptions) -> data::Window {
    let mut batch = data::Window::default();
    for _ in 0..options.batch {
        if state.next == state.order.len() {
            state.epoch += 1;
            data::shuffle(&mut state.order, options.seed.wrapping_add(state.epoch));
            state.next = 0;
        }
        let window = &windows.train[state.order[state.next]];
        batch.tokens.extend(&window.tokens);
        batch.targets.extend(&window.targets);
        state.next += 1;
    }
    batch
}

/// The held-out and general-text losses of `adapter` at `step`.
async fn evaluate(
    model: &Decoder,
    adapter: &dyn Method,
    step: usize,
    windows: &data::Windows,
    general_loss_base: Option<f32>,
) -> Result<Evaluation, Error> {
    let mut frozen = detached(adapter);
    frozen.set_training_seed(None);
    let general = mean_loss(model, frozen.as_ref(), &windows.general).await?;
    Ok(Evaluation {
        step,
        held_out: mean_loss(model, frozen.as_ref(), &windows.held_out).await?,
        general,
        general_rise: general.zip(general_loss_base).map(|(g, base)| (g - base).exp() - 1.0),
    })
}

/// Mean next-token loss over `windows` (one at a time; `adapters` off the autodiff graph).
async fn mean_loss(
    model: &Decoder,
    adapters: &dyn Adapters,
    windows: &[data::Window],
) -> Result<Option<f32>, Error> {
    if windows.is_empty() {
        return Ok(None);
    }
    let mut total = 0.0;
    for window in windows {
        let loss = masked_next_token_loss(model, adapters, &window.tokens, Some(&window.targets), 1)?;
        total += read_f32(loss).await?[0];
        crate::device::release_untracked_graphs(model.device());
    }
    Ok(Some(total / windows.len() as f32))
}
