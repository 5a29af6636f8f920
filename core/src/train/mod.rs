//! Training adapters on the frozen quantized base: next-token cross-entropy through the model
//! (gradients reach the adapters through our quantized linear op, see `model::linear`) and
//! AdamW on the adapter's tensors.

pub mod checkpoint;
pub mod data;
pub mod loss;

pub use loss::{loss_and_gradients, masked_next_token_loss, next_token_loss};

use std::collections::BTreeMap;

use burn::tensor::Gradients;
use burn::tensor::Tensor;

use crate::adapt::LoraAdapter;
use crate::error::Error;
use crate::model::{Adapters, Llama};

/// Where a run starts (`resume`: a state from [`checkpoint::load`]) and where it saves
/// (`save`: a path and every how many steps).
#[derive(Default)]
pub struct Checkpointing<'a> {
    pub resume: Option<TrainState>,
    pub save: Option<(&'a std::path::Path, usize)>,
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
}

impl TrainState {
    pub fn new(windows: usize, weight_decay: f32) -> Self {
        Self {
            step: 0,
            epoch: 0,
            next: 0,
            order: (0..windows).collect(),
            optimizer: AdamW::new(weight_decay),
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

    /// One update, at learning rate `lr`, of every parameter of `adapter` named in `grads`.
    pub fn step(&mut self, adapter: &mut LoraAdapter, grads: &BTreeMap<String, Tensor<2>>, lr: f32) {
        self.steps += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let correction1 = 1.0 - b1.powi(self.steps);
        let correction2 = 1.0 - b2.powi(self.steps);
        for (name, param) in adapter.parameters_mut() {
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
pub fn collect_grads(adapter: &mut LoraAdapter, grads: &Gradients) -> BTreeMap<String, Tensor<2>> {
    adapter.parameters_mut().filter_map(|(name, param)| Some((name, param.grad(grads)?))).collect()
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor<2>>, max_norm: f32) -> Result<f32, Error> {
    let mut squares = 0.0f64;
    for g in grads.values() {
        squares += f64::from(crate::model::linear::host_f32(g.clone().square().sum())?[0]);
    }
    let norm = squares.sqrt() as f32;
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
    /// Peak learning rate, reached after `warmup` steps, then cosine decay to a tenth of it.
    pub lr: f32,
    pub warmup: usize,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f32>,
    pub weight_decay: f32,
    pub seed: u64,
    /// Keep only each block's input during the forward pass and recompute the block in
    /// backward (activation checkpointing): far less memory for one more forward pass.
    pub checkpoint_activations: bool,
}

impl TrainOptions {
    /// Linear warm-up over `warmup` steps, then cosine decay from `lr` to `lr / 10` at the
    /// last step. Steps count from 1.
    pub fn learning_rate(&self, step: usize) -> f32 {
        if step <= self.warmup {
            return self.lr * step as f32 / self.warmup as f32;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f32;
        let progress = ((step - self.warmup) as f32 / span).min(1.0);
        let floor = self.lr / 10.0;
        floor + (self.lr - floor) * 0.5 * (1.0 + (core::f32::consts::PI * progress).cos())
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
}

#[derive(Clone, Debug)]
pub struct TrainReport {
    pub steps: usize,
    pub train_loss: f32,
    /// Mean loss over the held-out windows before and after training (`None` without any).
    pub eval_loss_before: Option<f32>,
    pub eval_loss: Option<f32>,
    pub tokens: usize,
}

/// Trains `adapter` (made `trainable` on a model on an autodiff device) on `windows`, cycling
/// through the training windows in batches, from `checkpointing.resume` when given. With
/// `checkpointing.save = (path, every)`, the whole state is written atomically to `path` every
/// `every` steps, so a killed run resumes with the same losses. Stops cleanly at a step boundary when `cancel` is
/// set.
pub fn fit(
    model: &Llama,
    adapter: &mut LoraAdapter,
    windows: &data::Windows,
    options: &TrainOptions,
    checkpointing: Checkpointing,
    cancel: &crate::control::CancelToken,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TrainReport, Error> {
    if options.steps == 0 || options.batch == 0 || options.accumulate == 0 || windows.train.is_empty() {
        return Err(Error::InvalidArgument(
            "training needs steps, batch and accumulation >= 1, and data".into(),
        ));
    }
    let eval_loss_before = mean_loss(model, &adapter.detached(), &windows.held_out)?;
    let fresh = TrainState::new(windows.train.len(), options.weight_decay);
    let Checkpointing { resume, save } = checkpointing;
    let mut state = resume.unwrap_or(fresh);
    let n = windows.train.len();
    let permutation = state.next <= n && state.order.iter().all(|&i| i < n);
    if state.order.len() != n || !permutation {
        return Err(Error::InvalidArgument(format!(
            "the checkpoint was made on {} training windows, this data has {}",
            state.order.len(),
            windows.train.len()
        )));
    }
    let TrainState { step: done, ref mut epoch, ref mut next, ref mut order, ref mut optimizer } = state;
    let (mut train_loss, mut tokens) = (f32::NAN, 0);
    for step in done + 1..=options.steps {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut summed: BTreeMap<String, Tensor<2>> = BTreeMap::new();
        let mut loss_sum = 0.0;
        for _ in 0..options.accumulate {
            let mut batch = data::Window::default();
            for _ in 0..options.batch {
                if *next == order.len() {
                    *epoch += 1;
                    data::shuffle(order, options.seed.wrapping_add(*epoch));
                    *next = 0;
                }
                let window = &windows.train[order[*next]];
                batch.tokens.extend(&window.tokens);
                batch.targets.extend(&window.targets);
                *next += 1;
            }
            let (loss, grads) = loss_and_gradients(
                model,
                adapter,
                &batch.tokens,
                Some(&batch.targets),
                options.batch,
                options.checkpoint_activations,
            )?;
            loss_sum += loss;
            for (name, g) in grads {
                let total = match summed.remove(&name) {
                    Some(total) => total + g,
                    None => g,
                };
                summed.insert(name, total);
            }
            tokens += batch.tokens.len();
        }
        train_loss = loss_sum / options.accumulate as f32;
        if !train_loss.is_finite() {
            return Err(Error::Backend(format!("the training loss became {train_loss} at step {step}")));
        }
        let mut grads: BTreeMap<String, Tensor<2>> =
            summed.into_iter().map(|(name, g)| (name, g.div_scalar(options.accumulate as f32))).collect();
        let grad_norm = match options.max_grad_norm {
            Some(max) => clip_grad_norm(&mut grads, max)?,
            None => clip_grad_norm(&mut grads, f32::INFINITY)?,
        };
        let lr = options.learning_rate(step);
        optimizer.step(adapter, &grads, lr);
        on_step(&StepReport { step, steps: options.steps, loss: train_loss, lr, grad_norm, tokens });
        if let Some((path, _)) = save.filter(|(_, every)| *every > 0 && step % *every == 0) {
            let state = TrainState {
                step,
                epoch: *epoch,
                next: *next,
                order: order.clone(),
                optimizer: optimizer.clone(),
            };
            checkpoint::save(path, adapter, &state)?;
        }
    }
    let eval_loss = mean_loss(model, &adapter.detached(), &windows.held_out)?;
    Ok(TrainReport { steps: options.steps, train_loss, eval_loss_before, eval_loss, tokens })
}

/// Mean next-token loss over `windows` (one at a time; `adapters` off the autodiff graph).
fn mean_loss(model: &Llama, adapters: &dyn Adapters, windows: &[data::Window]) -> Result<Option<f32>, Error> {
    if windows.is_empty() {
        return Ok(None);
    }
    let mut total = 0.0;
    for window in windows {
        let loss = masked_next_token_loss(model, adapters, &window.tokens, Some(&window.targets), 1)?;
        total += crate::model::linear::host_f32(loss)?[0];
    }
    Ok(Some(total / windows.len() as f32))
}

#[cfg(test)]
mod tests {
    use super::TrainOptions;

    #[test]
    fn warm_up_then_cosine_to_a_tenth() {
        let o = TrainOptions {
            steps: 110,
            batch: 1,
            accumulate: 1,
            lr: 1e-3,
            warmup: 10,
            max_grad_norm: None,
            weight_decay: 0.0,
            seed: 0,
            checkpoint_activations: false,
        };
        assert!((o.learning_rate(1) - 1e-4).abs() < 1e-9);
        assert!((o.learning_rate(10) - 1e-3).abs() < 1e-9);
        assert!((o.learning_rate(60) - 5.5e-4).abs() < 1e-8, "{}", o.learning_rate(60));
        assert!((o.learning_rate(110) - 1e-4).abs() < 1e-9);
        assert!((1..110).all(|s| s < 10 || o.learning_rate(s + 1) <= o.learning_rate(s)));
    }
}
