//! PEQA-style scale tuning (Kim et al. 2023) on GGUF blocks: only the f16 scale `d` of each
//! block of the quantized base trains (the super-block scale for K-quants); levels, offsets and
//! sub-block scales stay frozen. A factor `γ` per block makes the scale `d·(1 + γ)`, so the
//! weight becomes `W + γ ⊙ S` with `S = d·(levels − zero)` (the part of each value that scales
//! with `d`). The tuned model is still a valid quantized GGUF (merging writes the new scales
//! into the blocks, see [`super::merge`]), and the adapter is the changed scales. Forward passes
//! use the factors rounded so that `d·(1 + γ)` is exactly the f16 the GGUF stores
//! (straight-through: `γ` itself trains at full precision), so what training evaluates is that
//! GGUF; saved factors are the rounded ones.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use half::f16;
use serde_json::{json, Value};

use super::lora::{self, LAYERS};
use super::registry::{peft_type, Coding, Combine, MethodKind, MethodSpec};
use super::tensors::{self, read, saved, tensor2, untracked, values, Saved};
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::{Adapters, Decoder, DecoderConfig, Projection};
use crate::quant::{Levels, QuantMatrix};

pub static SPEC: MethodSpec = MethodSpec {
    name: "peqa",
    peft_type: "PEQA",
    summary: "one factor per GGUF block scale, d ← d·(1 + γ); levels and offsets stay frozen",
    options: &[lora::TARGETS],
    default_lr: 1e-4,
    mergeable: true,
    scalable: true,
    coding: Coding::FromInit(0.0),
    combine: Combine::Not,
    stage: None,
    recognizes: |config| peft_type(config) == "PEQA",
    build: |ctx| Ok(Box::new(PeqaAdapter::new(ctx.targets()?, ctx.model)?)),
    load: |peft, model| Ok(Box::new(PeqaAdapter::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

#[derive(Clone)]
pub struct PeqaAdapter {
    targets: Vec<Projection>,
    /// `γ: [rows, blocks]` per adapted projection.
    factors: BTreeMap<(usize, Projection), Tensor<2>>,
    /// The frozen blocks (shared with the model).
    matrices: BTreeMap<(usize, Projection), QuantMatrix>,
}

impl PeqaAdapter {
    /// Zero factors (the base model) on `targets` of every layer, whose weights must be in a
    /// block format with a scale (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
    pub fn new(targets: Vec<Projection>, model: &Decoder) -> Result<Self, Error> {
        if targets.is_empty() {
            return Err(Error::InvalidArgument("PEQA needs at least one target module".into()));
        }
        let (mut factors, mut matrices) = (BTreeMap::new(), BTreeMap::new());
        for layer in 0..model.config().n_layers {
            for &p in &targets {
                let matrix = model.blocks()[layer].linear(p).weight().clone();
                if matrix.ty().scale_offset().is_none() {
                    return Err(Error::InvalidArgument(format!(
                        "PEQA tunes block scales, and {} is {}, which has none (it needs Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K)",
                        p.gguf_tensor(layer),
                        matrix.ty().name()
                    )));
                }
                let shape = [matrix.rows(), matrix.cols() / matrix.ty().block_len()];
                factors.insert((layer, p), tensor2(vec![0.0; shape[0] * shape[1]], shape, model.device()));
                matrices.insert((layer, p), matrix);
            }
        }
        Ok(Self { targets, factors, matrices })
    }

    pub(crate) fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        super::expect_type(peft, KIND)?;
        let targets =
            super::parse_targets(&peft.config, "target_modules").map_err(|m| tensors::bad(peft, m))?;
        let mut adapter = Self::new(targets, model).map_err(|e| tensors::bad(peft, e.to_string()))?;
        for (&(layer, p), factor) in adapter.factors.iter_mut() {
            let shape = factor.dims();
            *factor = tensor2(read(peft, &key(layer, p), &shape)?, shape, model.device());
        }
        Ok(adapter)
    }

    /// The factors rounded so that each block's new scale `d·(1 + γ)` is an f16, as stored.
    fn snapped(&self, layer: usize, projection: Projection) -> Result<Vec<f32>, Error> {
        let matrix = &self.matrices[&(layer, projection)];
        let ty = matrix.ty();
        let at = ty.scale_offset().expect("checked at construction");
        let factors = values(&self.factors[&(layer, projection)])?;
        Ok(matrix
            .data()
            .chunks_exact(ty.block_bytes())
            .zip(factors)
            .map(|(block, g)| {
                let d = f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
                if d == 0.0 {
                    0.0
                } else {
                    f16::from_f32(d * (1.0 + g)).to_f32() / d - 1.0
                }
            })
            .collect())
    }

    /// The blocks of one adapted projection with their scales replaced by `d·(1 + γ)`.
    fn tuned_blocks(&self, layer: usize, projection: Projection) -> Result<Vec<u8>, Error> {
        let matrix = &self.matrices[&(layer, projection)];
        let ty = matrix.ty();
        let at = ty.scale_offset().expect("checked at construction");
        let factors = self.snapped(layer, projection)?;
        let mut data = matrix.data().to_vec();
        for (block, g) in data.chunks_exact_mut(ty.block_bytes()).zip(factors) {
            let d = f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
            block[at..at + 2].copy_from_slice(&f16::from_f32(d * (1.0 + g)).to_le_bytes());
        }
        Ok(data)
    }
}

fn key(layer: usize, projection: Projection) -> String {
    format!("{LAYERS}{layer}.{}.peqa_scale", projection.hf_path())
}

impl Adapters for PeqaAdapter {
    fn linear_output(&self, layer: usize, projection: Projection, x: &Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        let (Some(factor), Some(matrix)) =
            (self.factors.get(&(layer, projection)), self.matrices.get(&(layer, projection)))
        else {
            return y;
        };
        let Some(levels) = Levels::of(matrix) else { return y };
        let (rows, cols, block) = (matrix.rows(), matrix.cols(), matrix.ty().block_len());
        // `S` exists only for this product; autodiff keeps it for `γ`'s gradient.
        let parts = tensor2(levels.scaled_parts(), [rows, cols], &x.device());
        let blocks = cols / block;
        // Straight-through: the product sees the factors the GGUF will hold (each block's
        // `d·(1 + γ)` an f16), and the gradient reaches `γ`, which keeps full precision so that
        // steps smaller than an f16 step add up. (Reading `γ` fails only on a failed device,
        // whose next op reports it.)
        let factor = match self.snapped(layer, projection) {
            Ok(snapped) => {
                factor.clone() + (tensor2(snapped, [rows, blocks], &x.device()) - untracked(factor))
            }
            Err(_) => factor.clone(),
        };
        let per_value = factor.reshape([rows, blocks, 1]).expand([rows, blocks, block]).reshape([rows, cols]);
        let [b, t, _] = x.dims();
        let delta = x.clone().reshape([b * t, cols]).matmul((per_value * parts).transpose());
        y + delta.reshape([b, t, rows])
    }
}

impl Method for PeqaAdapter {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        self.factors.iter().map(|(&(l, p), f)| (key(l, p), f)).collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        self.factors.iter_mut().map(|(&(l, p), f)| (key(l, p), f)).collect()
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn to_peft(&self, _model: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        let mut tensors = Vec::new();
        for (&(layer, p), factor) in &self.factors {
            tensors.push(saved(key(layer, p), factor.dims().to_vec(), &self.snapped(layer, p)?));
        }
        let config = json!({
            "peft_type": SPEC.peft_type,
            "task_type": "CAUSAL_LM",
            "target_modules": self.targets.iter().map(|p| p.hf_name()).collect::<Vec<_>>(),
            "block_scale": "d * (1 + peqa_scale), one factor per GGUF block, rows in GGUF order",
            "inference_mode": true,
        });
        Ok((config, tensors))
    }

    fn changes_weight(&self, layer: usize, projection: Projection) -> bool {
        self.matrices.contains_key(&(layer, projection))
    }

    fn merge_weight(&self, layer: usize, projection: Projection, weight: &mut [f32]) -> Result<bool, Error> {
        let Some(matrix) = self.matrices.get(&(layer, projection)) else { return Ok(false) };
        super::check_weight_len(weight, matrix.rows() * matrix.cols(), layer, projection)?;
        let Some(levels) = Levels::of(matrix) else { return Ok(false) };
        let block = matrix.ty().block_len();
        let factors = self.snapped(layer, projection)?;
        for ((w, s), i) in weight.iter_mut().zip(levels.scaled_parts()).zip(0..) {
            *w += factors[i / block] * s;
        }
        Ok(true)
    }

    /// Two values per weight of each tuned matrix: `γ` expanded over its block and `γ ⊙ S`
    /// (measured: 1.9 on SmolLM2-135M).
    fn training_values(&self, layer: usize, _tokens: usize) -> usize {
        let weights: usize = self
            .matrices
            .range((layer, Projection::Q)..=(layer, Projection::Down))
            .map(|(_, m)| m.rows() * m.cols())
            .sum();
        2 * weights
    }

    fn merge_blocks(&self, layer: usize, projection: Projection) -> Result<Option<Vec<u8>>, Error> {
        if !self.matrices.contains_key(&(layer, projection)) {
            return Ok(None);
        }
        self.tuned_blocks(layer, projection).map(Some)
    }
}
