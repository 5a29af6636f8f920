//! The memory-budget planner: predicts a training run's peak memory from the model's shapes,
//! the adapter, the batch, the sequence length and activation checkpointing, and picks the
//! fastest plan that fits a budget (or says which budget would fit).
//!
//! The prediction is an account of what a step keeps alive, each term with a coefficient fitted
//! to the measured peak resident memory of real runs on SmolLM2-135M (eleven plans across
//! methods, batches, lengths and checkpointing, all within 7%, eight within 5%; `cli/tests/cli.rs` checks six of
//! them within 15%; README, "Memory budget"):
//! - the model: its weight bytes (mapped; a training step touches every page), plus the
//!   runtime's own fixed cost;
//! - the adapter: about nine values per trained value (itself, its gradient, AdamW's two
//!   moments, the accumulated gradient, the clipped copy, the evaluation copy);
//! - activations: what autodiff keeps per block for backward, in values per token of the
//!   residual width (`d_model`) and of the MLP width, plus per head and position one
//!   log-sum-exp on the CPU (its fused attention) or the attention scores (`heads x seq x seq`
//!   per sequence) elsewhere; with checkpointing, only each block's input plus one block's
//!   activations while it is recomputed;
//! - the output layer's loss, computed 128 positions at a time over the vocabulary;
//! - what a method keeps beyond that (PEQA's weight-sized `γ ⊙ S`, DoRA's rescaled outputs,
//!   [`Method::training_values`]).
//!
//! The same batch can be reached with smaller micro-batches and gradient accumulation (the
//! same result, less memory, a little slower), or with checkpointing (about a quarter of the
//! activations, ~45% slower); the planner tries them in order of speed.

use serde::Serialize;

use crate::adapt::Method;
use crate::device::is_host;
use crate::error::Error;
use crate::model::Decoder;

/// MiB, the unit of budgets and predictions.
const MIB: f64 = (1u64 << 20) as f64;

/// What the planner decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// The budget asked for, in MiB (`None`: only a prediction).
    pub budget_mb: Option<f64>,
    /// Windows per micro-batch and micro-batches per step (their product is the run's batch).
    pub batch: usize,
    pub accumulate: usize,
    pub checkpoint_activations: bool,
    pub predicted_peak_mb: f64,
    /// The plans considered, fastest first.
    pub candidates: Vec<Candidate>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub batch: usize,
    pub accumulate: usize,
    pub checkpoint_activations: bool,
    pub predicted_peak_mb: f64,
    /// Time per step relative to the requested batch without checkpointing.
    pub relative_time: f64,
    pub fits: bool,
}

/// What a run asks for.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub batch: usize,
    pub accumulate: usize,
    pub seq: usize,
    pub checkpoint_activations: bool,
}

/// Coefficients of the account above, fitted on SmolLM2-135M Q4_1 (2 threads, x86-64; with
/// the fused RMSNorm, gated activation and attention of `model::fused`).
mod measured {
    /// The runtime's fixed resident cost beyond the weights (tokenizer, code, worker stacks).
    pub const RUNTIME_MB: f64 = 30.0;
    /// Values kept per trained value.
    pub const ADAPTER_VALUES: f64 = 9.0;
    /// Values kept per token and block, in units of `d_model` and of the MLP width.
    pub const PER_TOKEN_RESIDUAL: f64 = 10.25;
    pub const PER_TOKEN_MLP: f64 = 2.0;
    /// Attention values kept per head and query by the CPU's fused attention.
    pub const PER_QUERY: f64 = 1.0;
    /// Attention values kept per head, query and key by burn's graph (other devices; fitted
    /// on the CPU before the fused attention).
    pub const PER_SCORE: f64 = 1.9;
    /// The output layer's loss: positions at a time, and values per position and vocabulary entry.
    pub const LOSS_CHUNK: f64 = 128.0;
    pub const PER_LOGIT: f64 = 1.0;
    /// Time factors: checkpointing reruns each block's forward; halving the micro-batch costs
    /// some throughput (smaller products).
    pub const CHECKPOINT_TIME: f64 = 1.45;
    pub const SMALLER_BATCH_TIME: f64 = 1.08;
}

/// The predicted peak resident memory (MiB) of training `adapter` on `model` as `request`
/// asks.
pub fn predict(model: &Decoder, adapter: &dyn Method, request: Request) -> f64 {
    use measured::*;
    let c = model.config();
    let weights: usize = model
        .blocks()
        .iter()
        .map(|b| {
            crate::model::Projection::ALL.iter().map(|&p| b.linear(p).weight().data().len()).sum::<usize>()
        })
        .sum::<usize>()
        + model.token_embedding().data().len()
        + if c.tied_embeddings { 0 } else { model.output().data().len() };
    let parameters = crate::adapt::parameter_count(adapter) as f64;
    let tokens = (request.batch * request.seq) as f64;
    let soft_prompt = crate::model::soft_prompt_len(adapter) as f64;
    let positions = request.seq as f64 + soft_prompt;
    let per_query = if is_host(model.device()) { PER_QUERY } else { PER_SCORE * positions };
    let block = |layer: usize| {
        tokens * (PER_TOKEN_RESIDUAL * c.d_model as f64 + PER_TOKEN_MLP * c.ffn_dim as f64)
            + per_query * (request.batch * c.n_heads) as f64 * positions
            + adapter.training_values(layer, request.batch * request.seq) as f64
    };
    let activations = if request.checkpoint_activations {
        // Every block's input, and the largest block recomputed.
        tokens * (c.n_layers * c.d_model) as f64 + (0..c.n_layers).map(block).fold(0.0, f64::max)
    } else {
        (0..c.n_layers).map(block).sum()
    };
    let loss = LOSS_CHUNK.min(tokens) * PER_LOGIT * c.vocab_size as f64;
    let bytes = weights as f64 + 4.0 * (ADAPTER_VALUES * parameters + activations + loss);
    RUNTIME_MB + bytes / MIB
}

/// The fastest plan for `request` whose predicted peak fits `budget_mb`: the requested batch
/// as micro-batches of `batch`, `batch / 2`, … (more accumulation), each without and then with
/// activation checkpointing. Refused, with the smallest budget any plan needs, when none fits.
pub fn choose(
    model: &Decoder,
    adapter: &dyn Method,
    request: Request,
    budget_mb: f64,
) -> Result<MemoryPlan, Error> {
    if !(budget_mb > 0.0 && budget_mb.is_finite()) {
        return Err(Error::option("memory_budget", budget_mb, "must be a positive size"));
    }
    let total = request.batch * request.accumulate;
    let mut candidates = Vec::new();
    let mut batch = request.batch;
    let mut time = 1.0;
    loop {
        for checkpoint_activations in [false, true] {
            if request.checkpoint_activations && !checkpoint_activations {
                continue;
            }
            let step = Request { batch, accumulate: total / batch, checkpoint_activations, ..request };
            let predicted_peak_mb = predict(model, adapter, step);
            let relative_time = time * if checkpoint_activations { measured::CHECKPOINT_TIME } else { 1.0 };
            candidates.push(Candidate {
                batch,
                accumulate: total / batch,
                checkpoint_activations,
                predicted_peak_mb,
                relative_time,
                fits: predicted_peak_mb <= budget_mb,
            });
        }
        // Smaller micro-batches that still divide the batch evenly.
        match (1..batch).rev().find(|&b| total.is_multiple_of(b) && b <= batch / 2) {
            Some(smaller) => {
                time *= measured::SMALLER_BATCH_TIME;
                batch = smaller;
            }
            None => break,
        }
    }
    candidates.sort_by(|a, b| a.relative_time.total_cmp(&b.relative_time));
    let Some(chosen) = candidates.iter().find(|c| c.fits).cloned() else {
        let smallest = candidates.iter().map(|c| c.predicted_peak_mb).fold(f64::INFINITY, f64::min);
        return Err(Error::option(
            "memory_budget",
            format!("{budget_mb:.0}M"),
            format!(
                "no plan fits: the smallest (micro-batches of 1 with activation checkpointing) needs about {:.0}M; raise the budget or lower seq",
                smallest.ceil()
            ),
        ));
    };
    Ok(MemoryPlan {
        budget_mb: Some(budget_mb),
        batch: chosen.batch,
        accumulate: chosen.accumulate,
        checkpoint_activations: chosen.checkpoint_activations,
        predicted_peak_mb: chosen.predicted_peak_mb,
        candidates,
    })
}

/// A plan without a budget: the request as it is, and its predicted peak.
pub fn unbudgeted(model: &Decoder, adapter: &dyn Method, request: Request) -> MemoryPlan {
    let predicted_peak_mb = predict(model, adapter, request);
    MemoryPlan {
        budget_mb: None,
        batch: request.batch,
        accumulate: request.accumulate,
        checkpoint_activations: request.checkpoint_activations,
        predicted_peak_mb,
        candidates: Vec::new(),
    }
}

/// A size like `600M`, `1.5G`, `800MiB` or `2GB`, in MiB.
pub fn parse_size_mb(text: &str) -> Result<f64, Error> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor = match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 1.0,
        "G" | "GB" | "GIB" => 1024.0,
        "K" | "KB" | "KIB" => 1.0 / 1024.0,
        _ => f64::NAN,
    };
    let value = number.trim().parse::<f64>().map(|n| n * factor).unwrap_or(f64::NAN);
    if !(value > 0.0 && value.is_finite()) {
        return Err(Error::option("memory_budget", text, "a size such as 600M or 1.5G"));
    }
    Ok(value)
}
