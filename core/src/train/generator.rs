//! Training a context-to-adapter generator ([`crate::adapt::generative`], `methods.md` §1.2) on
//! a corpus of documents with the trainer's loss, AdamW, clipping, schedule and checkpoints.
//!
//! Each sample is `chunks` consecutive chunks `c_0 … c_{n-1}` of `chunk_len` tokens from one
//! document, encoded by the base model. Its rows, each predicted with an adapter generated from
//! a prefix of the chunks (the "abcdabcd" layout):
//! - completion: `c_j` with the adapter of `c_0 … c_{j-1}` (`j ≥ 1`): what comes next;
//! - reconstruction: a window of `chunk_len` tokens inside `c_0 … c_i` with the adapter of
//!   `c_0 … c_i`: what the context said.
//!
//! Only the generator learns; rows never attend to each other or to the context, so the only
//! way context reaches a row is the generated adapter.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use super::{
    checkpoint, clip_grad_norm, loss_and_gradients_on_device, masked_next_token_loss, Checkpointing,
    TrainState,
};
use crate::adapt::generative::{BatchContexts, Generator};
use crate::adapt::Method;
use crate::control::CancelToken;
use crate::error::Error;
use crate::model::linear::read_f32;
use crate::model::{Decoder, NoAdapters};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GeneratorTrainOptions {
    pub steps: usize,
    /// Documents per optimizer step.
    pub documents: usize,
    /// Chunks per document sample.
    pub chunks: usize,
    /// Tokens per chunk (and per row).
    pub chunk_len: usize,
    pub lr: f32,
    pub warmup: usize,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    pub seed: u64,
    /// Held-out losses every this many steps (0: before and after only).
    pub eval_every: usize,
    /// Held-out document samples the evaluations use.
    pub eval_samples: usize,
    /// Recompute each block in backward instead of keeping its activations.
    pub checkpoint_activations: bool,
}

impl Default for GeneratorTrainOptions {
    fn default() -> Self {
        Self {
            steps: 400,
            documents: 1,
            chunks: 4,
            chunk_len: 128,
            lr: 1e-3,
            warmup: 20,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            seed: 0,
            eval_every: 50,
            eval_samples: 8,
            checkpoint_activations: false,
        }
    }
}

impl GeneratorTrainOptions {
    fn sample_len(&self) -> usize {
        self.chunks * self.chunk_len
    }

    fn check(&self) -> Result<(), Error> {
        let positive = [
            ("steps", self.steps),
            ("documents", self.documents),
            ("chunk_len", self.chunk_len),
            ("eval_samples", self.eval_samples),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::option(field, 0, "must be at least 1"));
        }
        if self.chunks.checked_mul(self.chunk_len).is_none() {
            return Err(Error::option("chunks", self.chunks, "times the chunk length overflows"));
        }
        if self.chunks < 2 {
            return Err(Error::option(
                "chunks",
                self.chunks,
                "must be at least 2 (a context and a chunk after it)",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::option("lr", self.lr, "must be a positive number"));
        }
        Ok(())
    }
}

/// Held-out mean losses of completion and reconstruction rows, with and without the generator.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct GeneratorEval {
    pub step: usize,
    pub completion_base: f32,
    pub completion: f32,
    pub reconstruction_base: f32,
    pub reconstruction: f32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GeneratorStep {
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    /// Row tokens trained on so far in this run.
    pub tokens: usize,
    pub eval: Option<GeneratorEval>,
    pub checkpointed: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GeneratorTrainReport {
    pub steps: usize,
    pub train_loss: f32,
    pub evaluations: Vec<GeneratorEval>,
    pub tokens: usize,
}

/// One batch: the context chunks, and the rows with the chunks each row's adapter sees.
struct Batch {
    /// `chunks` rows of `chunk_len` tokens.
    chunk_tokens: Vec<u32>,
    chunks: usize,
    /// Completion rows then reconstruction rows, `chunk_len` tokens each.
    completion: Vec<(Vec<u32>, Vec<usize>)>,
    reconstruction: Vec<(Vec<u32>, Vec<usize>)>,
}

impl Batch {
    /// The layout of document samples `samples` (each `chunks · chunk_len` tokens); `draw`
    /// gives the reconstruction windows' starts.
    fn of(samples: &[&[u32]], options: &GeneratorTrainOptions, draw: &mut dyn FnMut(usize) -> usize) -> Self {
        let (n, w) = (options.chunks, options.chunk_len);
        let mut batch =
            Batch { chunk_tokens: Vec::new(), chunks: 0, completion: Vec::new(), reconstruction: Vec::new() };
        for sample in samples {
            let first = batch.chunks;
            batch.chunk_tokens.extend_from_slice(&sample[..n * w]);
            batch.chunks += n;
            for j in 1..n {
                batch.completion.push((sample[j * w..(j + 1) * w].to_vec(), (first..first + j).collect()));
            }
            for i in 0..n {
                let start = draw(i * w + 1);
                batch.reconstruction.push((sample[start..start + w].to_vec(), (first..=first + i).collect()));
            }
        }
        batch
    }

    /// The contexts of `rows` for the generator, from the chunks' block inputs.
    fn contexts(&self, hidden: &[Tensor<3>], rows: &[(Vec<u32>, Vec<usize>)]) -> BatchContexts {
        let mut select = vec![0.0f32; rows.len() * self.chunks];
        for (r, (_, chunks)) in rows.iter().enumerate() {
            chunks.iter().for_each(|&c| select[r * self.chunks + c] = 1.0);
        }
        let device = hidden[0].device();
        BatchContexts {
            hidden: hidden.to_vec(),
            select: Tensor::from_data(TensorData::new(select, [rows.len(), self.chunks]), &device),
        }
    }
}

fn tokens_of(rows: &[(Vec<u32>, Vec<usize>)]) -> Vec<u32> {
    rows.iter().flat_map(|(t, _)| t.iter().copied()).collect()
}

/// The block inputs of every chunk under the base model, off the autodiff graph.
fn encode_chunks(model: &Decoder, batch: &Batch) -> Result<Vec<Tensor<3>>, Error> {
    let mut hidden = Vec::with_capacity(model.config().n_layers);
    Generator::block_inputs(model, &batch.chunk_tokens, batch.chunks, &mut |_, x| {
        hidden.push(x.clone().set_require_grad(false));
        Ok(())
    })?;
    Ok(hidden)
}

/// splitmix64 of `seed` and `i`: the run's draws depend on its seed and step only, so a resumed
/// run draws what the killed one would have.
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The batch of step `step` (0 and up for training; evaluation batches use their own stream).
fn draw_batch(documents: &[Vec<u32>], options: &GeneratorTrainOptions, stream: u64) -> Batch {
    let len = options.sample_len();
    let mut k = 0u64;
    let mut next = |bound: usize| {
        k += 1;
        (mix(options.seed ^ stream, k) % bound.max(1) as u64) as usize
    };
    let samples: Vec<&[u32]> = (0..options.documents)
        .map(|_| {
            let doc = &documents[next(documents.len())];
            let start = next(doc.len() - len + 1);
            &doc[start..start + len]
        })
        .collect();
    Batch::of(&samples, options, &mut next)
}

/// Trains `generator` (its parameters marked for gradients, on a model on an autodiff device) on
/// `documents` (tokenized; those shorter than a sample are skipped), evaluating on `held_out`.
/// Checkpoints go to `checkpointing.save = (store, key, every)`; `checkpointing.resume`
/// continues a run from one.
#[allow(clippy::too_many_arguments)]
pub async fn fit_generator(
    model: &Decoder,
    generator: &mut Generator,
    documents: &[Vec<u32>],
    held_out: &[Vec<u32>],
    options: &GeneratorTrainOptions,
    checkpointing: Checkpointing<'_>,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(&GeneratorStep),
) -> Result<GeneratorTrainReport, Error> {
    options.check()?;
    if options.chunk_len != generator.config().window {
        return Err(Error::option(
            "chunk_len",
            options.chunk_len,
            format!(
                "must be the generator's window ({}): training must see the block inputs the device will",
                generator.config().window
            ),
        ));
    }
    if options.chunk_len > model.config().context_len {
        return Err(Error::option(
            "chunk_len",
            options.chunk_len,
            format!("is longer than the model's context of {}", model.config().context_len),
        ));
    }
    let long_enough = |docs: &[Vec<u32>]| -> Vec<Vec<u32>> {
        docs.iter().filter(|d| d.len() >= options.sample_len()).cloned().collect()
    };
    let (documents, held_out) = (long_enough(documents), long_enough(held_out));
    if documents.is_empty() || held_out.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "generator training needs training and held-out documents of at least {} tokens: {} and {} are",
            options.sample_len(),
            documents.len(),
            held_out.len()
        )));
    }
    let Checkpointing { resume, save, settings } = checkpointing;
    let mut state = resume.unwrap_or_else(|| TrainState::new(0, options.weight_decay));
    state.planned_steps = options.steps;
    let schedule = super::LrSchedule::CosineWithMinLr;
    // A resumed run continues its record of evaluations.
    let mut evaluations: Vec<GeneratorEval> =
        serde_json::from_value(state.history.clone()).unwrap_or_default();
    if evaluations.is_empty() {
        evaluations.push(evaluate(model, generator, &held_out, options, state.step).await?);
        state.history = serde_json::to_value(&evaluations).unwrap_or_default();
    }
    for step in state.step + 1..=options.steps {
        if cancel.is_cancelled() {
            if let Some((store, key, _)) = save {
                store.write(key, &checkpoint::to_bytes(generator, &state, &settings).await?)?;
            }
            return Err(Error::Cancelled);
        }
        let batch = draw_batch(&documents, options, step as u64);
        let hidden = encode_chunks(model, &batch)?;
        let rows: Vec<_> = batch.completion.iter().chain(&batch.reconstruction).cloned().collect();
        generator.set_contexts(Some(batch.contexts(&hidden, &rows)))?;
        let row_tokens = tokens_of(&rows);
        let result = loss_and_gradients_on_device(
            model,
            generator,
            &row_tokens,
            None,
            rows.len(),
            options.checkpoint_activations,
        );
        generator.set_contexts(None)?;
        let (loss, grads) = result?;
        let mut grads: BTreeMap<String, Tensor<2>> = grads;
        let train_loss = read_f32(loss).await?[0];
        let grad_norm = clip_grad_norm(&mut grads, options.max_grad_norm).await?;
        if !train_loss.is_finite() || !grad_norm.is_finite() {
            return Err(Error::NonFiniteLoss { step, loss: train_loss, grad_norm });
        }
        let lr = schedule.rate(options.lr, step, options.steps, options.warmup, 0.1);
        state.optimizer.step(generator, &grads, lr);
        state.step = step;
        state.tokens += row_tokens.len();
        state.train_loss = Some(train_loss);
        let due = options.eval_every > 0 && step % options.eval_every == 0 && step < options.steps;
        let eval = if due { Some(evaluate(model, generator, &held_out, options, step).await?) } else { None };
        if let Some(eval) = eval {
            evaluations.push(eval);
            state.history = serde_json::to_value(&evaluations).unwrap_or_default();
        }
        let checkpoint =
            save.filter(|(_, _, every)| *every > 0 && (step % *every == 0 || step == options.steps));
        if let Some((store, key, _)) = checkpoint {
            store.write(key, &checkpoint::to_bytes(generator, &state, &settings).await?)?;
        }
        on_step(&GeneratorStep {
            step,
            steps: options.steps,
            loss: train_loss,
            lr,
            grad_norm,
            tokens: state.tokens,
            eval,
            checkpointed: checkpoint.is_some(),
        });
        crate::device::release_untracked_graphs(model.device());
    }
    evaluations.push(evaluate(model, generator, &held_out, options, state.step).await?);
    Ok(GeneratorTrainReport {
        steps: state.step,
        train_loss: state.train_loss.unwrap_or(f32::NAN),
        evaluations,
        tokens: state.tokens,
    })
}

/// Mean held-out losses over `options.eval_samples` fixed samples (the same at every
/// evaluation), with and without the generator.
pub async fn evaluate(
    model: &Decoder,
    generator: &Generator,
    held_out: &[Vec<u32>],
    options: &GeneratorTrainOptions,
    step: usize,
) -> Result<GeneratorEval, Error> {
    let one_document = GeneratorTrainOptions { documents: 1, ..options.clone() };
    let mut frozen = Generator::clone(generator);
    for (_, p) in frozen.parameters_mut() {
        *p = p.clone().set_require_grad(false);
    }
    let mut sums = [0.0f32; 4];
    for sample in 0..options.eval_samples {
        let batch = draw_batch(held_out, &one_document, u64::MAX - sample as u64);
        let hidden = encode_chunks(model, &batch)?;
        for (i, rows) in [&batch.completion, &batch.reconstruction].into_iter().enumerate() {
            let tokens = tokens_of(rows);
            let base = masked_next_token_loss(model, &NoAdapters, &tokens, None, rows.len())?;
            frozen.set_contexts(Some(batch.contexts(&hidden, rows)))?;
            let adapted = masked_next_token_loss(model, &frozen, &tokens, None, rows.len())?;
            let both = read_f32(Tensor::cat(vec![base, adapted], 0)).await?;
            sums[2 * i] += both[0];
            sums[2 * i + 1] += both[1];
        }
        crate::device::release_untracked_graphs(model.device());
    }
    let mean = sums.map(|s| s / options.eval_samples as f32);
    Ok(GeneratorEval {
        step,
        completion_base: mean[0],
        completion: mean[1],
        reconstruction_base: mean[2],
        reconstruction: mean[3],
    })
}
