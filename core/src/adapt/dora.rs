//! DoRA (Liu et al. 2024): a LoRA whose adapted weight is renormalised per output row to a
//! trained magnitude, `W' = m ⊙ (W + sBA) / ‖W + sBA‖_row`, with `m` starting at `‖W‖_row`.
//! As in PEFT, the norm is detached (no gradient through it), so the forward is
//! `y = (m / n) ⊙ (W x + s·B A x)`. The norm comes from the quantized weight without a dense
//! copy: `n² = ‖W_r‖² + 2s·B_r·(A W_rᵀ) + s²·B_r (A Aᵀ) B_rᵀ`, where `A Wᵀ` is one product
//! of `A`'s rows through the frozen layer. Mergeable: `W ← diag(m/n)(W + sBA)`. Stored as PEFT
//! `LORA` with `use_dora: true` and a `lora_magnitude_vector` per module.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use serde_json::Value;

use super::lora::{self, uses_dora, LoraAdapter, LoraConfig, LAYERS};
use super::registry::{peft_type, Coding, Combine, MethodKind, MethodSpec};
use super::tensors::{read, rotary_rows, saved, tensor2, untracked, values, Saved};
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::linear::QuantLinear;
use crate::model::rope::RowOrder;
use crate::model::{Adapters, Decoder, DecoderConfig, Projection};

pub static SPEC: MethodSpec = MethodSpec {
    name: "dora",
    peft_type: "LORA",
    summary: "LoRA plus a magnitude per output row: W' = m ⊙ (W + sBA) / ‖W + sBA‖_row",
    options: &[lora::RANK, lora::ALPHA, lora::DROPOUT, lora::RSLORA, lora::TARGETS],
    default_lr: 2e-4,
    mergeable: true,
    scalable: true,
    coding: Coding::LoraPairs,
    combine: Combine::Not,
    stage: None,
    recognizes: |config| peft_type(config) == "LORA" && uses_dora(config),
    build: |ctx| Ok(Box::new(DoraAdapter::new(lora::config_of(ctx)?, ctx.model, ctx.seed)?)),
    load: |peft, model| Ok(Box::new(DoraAdapter::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

#[derive(Clone)]
pub struct DoraAdapter {
    lora: LoraAdapter,
    /// `m`, `[1, out]` per adapted projection.
    magnitudes: BTreeMap<(usize, Projection), Tensor<2>>,
    weights: FrozenWeights,
}

impl DoraAdapter {
    /// A fresh DoRA: PEFT's LoRA initialisation and `m = ‖W‖_row`, so it starts as the base.
    pub fn new(config: LoraConfig, model: &Decoder, seed: u64) -> Result<Self, Error> {
        let lora = LoraAdapter::new(config, model, seed)?;
        let weights = frozen_weights(&lora, model)?;
        let magnitudes =
            weights.iter().map(|(&site, (_, squares))| (site, untracked(&squares.clone().sqrt()))).collect();
        Ok(Self { lora, magnitudes, weights })
    }

    pub fn lora(&self) -> &LoraAdapter {
        &self.lora
    }

    pub(crate) fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        super::expect_type(peft, KIND)?;
        let lora = LoraAdapter::read_weights(peft, model)?;
        let weights = frozen_weights(&lora, model)?;
        let c = model.config();
        let mut magnitudes = BTreeMap::new();
        for &(layer, p) in weights.keys() {
            let out = c.projection_shape(p).0;
            let m = read(peft, &magnitude_key(layer, p), &[out])?;
            let m = rotary_rows(c, p, m, 1, RowOrder::ToPairs);
            magnitudes.insert((layer, p), tensor2(m, [1, out], model.device()));
        }
        Ok(Self { lora, magnitudes, weights })
    }

    /// `m / ‖W + sBA‖_row` of one projection, `[1, out]`, off the autodiff graph.
    fn row_factor(&self, layer: usize, projection: Projection) -> Option<Tensor<2>> {
        let (weight, squares) = self.weights.get(&(layer, projection))?;
        let (a, b) = self.lora.pair(layer, projection)?;
        let (a, b) = (untracked(a), untracked(b));
        let s = self.lora.config().scale();
        let [r, inp] = a.dims();
        let out = b.dims()[0];
        // `A Wᵀ: [r, out]` through the frozen layer.
        let aw = weight.product(a.clone().reshape([1, r, inp])).ok()?.reshape([r, out]);
        let cross = (b.clone() * aw.transpose()).sum_dim(1).reshape([1, out]);
        let gram = a.clone().matmul(a.transpose());
        let quadratic = (b.clone().matmul(gram) * b).sum_dim(1).reshape([1, out]);
        let norms = (squares.clone() + cross.mul_scalar(2.0 * s) + quadratic.mul_scalar(s * s)).sqrt();
        Some(self.magnitudes.get(&(layer, projection))?.clone() / untracked(&norms))
    }
}

/// Per adapted projection, its frozen layer (shared with the model, not copied) and its squared
/// row norms `[1, out]`.
type FrozenWeights = BTreeMap<(usize, Projection), (QuantLinear, Tensor<2>)>;

/// The frozen layers `lora` adapts, with their squared row norms.
fn frozen_weights(lora: &LoraAdapter, model: &Decoder) -> Result<FrozenWeights, Error> {
    let mut weights = BTreeMap::new();
    for (layer, p) in lora.sites() {
        let linear = model.blocks()[layer].linear(p).clone();
        let matrix = linear.weight();
        let mut row = vec![0.0; matrix.cols()];
        let mut squares = Vec::with_capacity(matrix.rows());
        for r in 0..matrix.rows() {
            matrix.dequantize_row(r, &mut row)?;
            squares.push(row.iter().map(|&w| f64::from(w) * f64::from(w)).sum::<f64>() as f32);
        }
        let n = squares.len();
        weights.insert((layer, p), (linear, tensor2(squares, [1, n], model.device())));
    }
    Ok(weights)
}

fn magnitude_key(layer: usize, projection: Projection) -> String {
    format!("{LAYERS}{layer}.{}.lora_magnitude_vector", projection.hf_path())
}

impl Adapters for DoraAdapter {
    /// `(m/n) ⊙ (W x + s·B A x) + b`: a base bias is not rescaled (as in PEFT).
    fn linear_output(&self, layer: usize, projection: Projection, x: &Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        let Some(factor) = self.row_factor(layer, projection) else { return y };
        let bias =
            self.weights[&(layer, projection)].0.bias().map(|b| b.clone().reshape([1, 1, b.dims()[0]]));
        let unbiased = match &bias {
            Some(b) => y - b.clone(),
            None => y,
        };
        let scaled = self.lora.linear_output(layer, projection, x, unbiased) * factor.unsqueeze_dim(0);
        match bias {
            Some(b) => scaled + b,
            None => scaled,
        }
    }
}

impl Method for DoraAdapter {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        let mut params = self.lora.parameters();
        params.extend(self.magnitudes.iter().map(|(&(l, p), m)| (magnitude_key(l, p), m)));
        params
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        let mut params = self.lora.parameters_mut();
        params.extend(self.magnitudes.iter_mut().map(|(&(l, p), m)| (magnitude_key(l, p), m)));
        params
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn fixed_tensors_mut(&mut self) -> Vec<&mut Tensor<2>> {
        let mut fixed = self.lora.fixed_tensors_mut();
        fixed.extend(self.weights.values_mut().map(|(_, squares)| squares));
        fixed
    }

    fn to_peft(&self, c: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        let (mut config, mut tensors) = self.lora.lora_peft(c)?;
        config["use_dora"] = Value::Bool(true);
        for (&(layer, p), m) in &self.magnitudes {
            let m = rotary_rows(c, p, values(m)?, 1, RowOrder::ToRotateHalf);
            tensors.push(saved(magnitude_key(layer, p), vec![m.len()], &m));
        }
        Ok((config, tensors))
    }

    fn changes_weight(&self, layer: usize, projection: Projection) -> bool {
        self.lora.changes_weight(layer, projection)
    }

    fn merge_weight(&self, layer: usize, projection: Projection, weight: &mut [f32]) -> Result<bool, Error> {
        if !self.lora.merge_weight(layer, projection, weight)? {
            return Ok(false);
        }
        let m = values(&self.magnitudes[&(layer, projection)])?;
        let cols = weight.len() / m.len();
        for (row, m) in weight.chunks_exact_mut(cols).zip(m) {
            let norm = row.iter().map(|&w| f64::from(w) * f64::from(w)).sum::<f64>().sqrt() as f32;
            row.iter_mut().for_each(|w| *w *= m / norm);
        }
        Ok(true)
    }

    fn set_training_seed(&mut self, seed: Option<u64>) {
        self.lora.set_training_seed(seed);
    }

    /// About one output-sized value per token and adapted projection: the unscaled output,
    /// kept for the magnitude's gradient (measured: 0.8 on SmolLM2-135M).
    fn training_values(&self, layer: usize, tokens: usize) -> usize {
        let outputs: usize = self
            .magnitudes
            .range((layer, Projection::Q)..=(layer, Projection::Down))
            .map(|(_, m)| m.dims()[1])
            .sum();
        tokens * outputs * 4 / 5
    }
}
