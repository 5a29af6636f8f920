//! LoFiT (Yin et al. 2024): localized fine-tuning of attention heads. Each head's output
//! (before `o_proj`) becomes `z_h ← (1 + A_h) ⊙ z_h + v_h`. Two stages:
//! 1. **Selection:** `A` on every head (`v = 0`), from `N(0, 10⁻³)`, trained with an L1 penalty
//!    `λ·Σ|A|`; [`LofitAdapter::select`] then keeps the `K` heads of largest `‖A_h‖₂`.
//! 2. **Offsets:** a fresh adapter trains only `v_h` on the selected heads.
//!
//! Mergeable: `(1 + A_h)` scales `W_o`'s columns of head `h`; `v_h` is the output bias
//! `W_o[:, h]·v_h`, added through the model's attention-output bias. PEFT has no LoFiT; it is
//! saved with `peft_type: "LOFIT"`, the heads in the config and one `[K, head_dim]` tensor.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use serde_json::{json, Value};

use super::fields;
use super::registry::{
    peft_type, Coding, Combine, MethodKind, MethodOption, MethodSpec, OptionDefault, OptionSpec,
    Stage as StageSpec,
};
use super::tensors::{self, read, saved, tensor2, values, Rng, Saved};
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::{Adapters, Decoder, DecoderConfig, Projection};

pub static SPEC: MethodSpec = MethodSpec {
    name: "lofit",
    peft_type: "LOFIT",
    summary:
        "two stages: per-head scales with an L1 penalty select heads, then per-head offsets train on them",
    options: &[
        OptionSpec { option: MethodOption::Heads, default: OptionDefault::Count(16) },
        OptionSpec { option: MethodOption::SelectSteps, default: OptionDefault::Count(20) },
        OptionSpec { option: MethodOption::L1, default: OptionDefault::Number(5e-4) },
    ],
    default_lr: 1e-2,
    mergeable: true,
    scalable: true,
    coding: Coding::Dense,
    combine: Combine::Not,
    // The paper's selection run: half the offsets' learning rate.
    stage: Some(StageSpec {
        name: "select heads",
        record: "lofit_heads.json",
        steps: MethodOption::SelectSteps,
        lr_factor: 0.5,
        finish: |trained, ctx| {
            let heads = LofitAdapter::select(trained, ctx.count(MethodOption::Heads, ctx.options.heads)?)?;
            Ok(json!(heads))
        },
        next: |record, ctx| {
            let heads: Vec<(usize, usize)> = serde_json::from_value(record.clone()).map_err(|e| {
                Error::InvalidArgument(format!(
                    "the selected heads ({record}) are not [layer, head] pairs: {e}"
                ))
            })?;
            Ok(Box::new(LofitAdapter::offsets(&heads, ctx.model, ctx.seed)?))
        },
    }),
    recognizes: |config| peft_type(config) == "LOFIT",
    build: |ctx| {
        let l1 = ctx.number(MethodOption::L1, ctx.options.l1)?;
        Ok(Box::new(LofitAdapter::selection(ctx.model, l1, ctx.seed)?))
    },
    load: |peft, model| Ok(Box::new(LofitAdapter::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

/// What the adapter trains on its heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Multiplicative `A_h` with an L1 penalty, to find the heads that matter.
    Selection,
    /// Additive `v_h`: the adapter that is kept.
    Offsets,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Selection => "selection",
            Self::Offsets => "offsets",
        }
    }
}

#[derive(Clone)]
pub struct LofitAdapter {
    stage: Stage,
    /// `[1, head_dim]` per adapted `(layer, head)`.
    heads: BTreeMap<(usize, usize), Tensor<2>>,
    /// The L1 weight `λ` of the selection stage.
    l1: f32,
    n_heads: usize,
    head_dim: usize,
    /// Rows of `o_proj` (its columns are `n_heads · head_dim`).
    d_model: usize,
}

/// The paper's initial spread of `A` and `v`.
const INIT_STD: f32 = 1e-3;

impl LofitAdapter {
    /// Stage 1: scaling vectors on every head of every layer, penalised by `l1·Σ|A|`.
    pub fn selection(model: &Decoder, l1: f32, seed: u64) -> Result<Self, Error> {
        if !(l1 >= 0.0 && l1.is_finite()) {
            return Err(Error::InvalidArgument(format!("LoFiT's L1 weight {l1} must be >= 0")));
        }
        let c = model.config();
        let all: Vec<(usize, usize)> =
            (0..c.n_layers).flat_map(|l| (0..c.n_heads).map(move |h| (l, h))).collect();
        Ok(Self::random(Stage::Selection, &all, l1, model, seed))
    }

    /// Stage 2: offset vectors on `heads` (`(layer, head)` pairs).
    pub fn offsets(heads: &[(usize, usize)], model: &Decoder, seed: u64) -> Result<Self, Error> {
        let c = model.config();
        if heads.is_empty() {
            return Err(Error::InvalidArgument("LoFiT needs at least one head".into()));
        }
        if let Some(&(l, h)) = heads.iter().find(|&&(l, h)| l >= c.n_layers || h >= c.n_heads) {
            return Err(Error::InvalidArgument(format!(
                "head {h} of layer {l}: the model has {} layers of {} heads",
                c.n_layers, c.n_heads
            )));
        }
        Ok(Self::random(Stage::Offsets, heads, 0.0, model, seed))
    }

    fn random(stage: Stage, heads: &[(usize, usize)], l1: f32, model: &Decoder, seed: u64) -> Self {
        let c = model.config();
        let mut rng = Rng::new(seed);
        let heads = heads
            .iter()
            .map(|&site| {
                let v = (0..c.head_dim).map(|_| rng.normal() * INIT_STD).collect();
                (site, tensor2(v, [1, c.head_dim], model.device()))
            })
            .collect();
        Self { stage, heads, l1, n_heads: c.n_heads, head_dim: c.head_dim, d_model: c.d_model }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The `k` heads whose scaling vectors have the largest L2 norms, ties broken by position:
    /// the same `A` always selects the same heads. `adapter` is a selection-stage LoFiT adapter
    /// (e.g. after training it through [`Method`]).
    pub fn select(adapter: &dyn Method, k: usize) -> Result<Vec<(usize, usize)>, Error> {
        if adapter.kind() != KIND {
            return Err(Error::InvalidArgument(format!(
                "a {} adapter selects no heads",
                adapter.kind().name()
            )));
        }
        let mut norms = Vec::new();
        for (name, a) in adapter.parameters() {
            let site = name
                .strip_prefix("lofit.")
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(l, h)| Some((l.parse().ok()?, h.parse().ok()?)))
                .ok_or_else(|| Error::InvalidArgument(format!("'{name}' is not a LoFiT head")))?;
            norms.push((values(a)?.iter().map(|v| v * v).sum::<f32>().sqrt(), site));
        }
        norms.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut chosen: Vec<(usize, usize)> = norms.into_iter().take(k).map(|(_, site)| site).collect();
        chosen.sort();
        Ok(chosen)
    }

    /// The adapted heads.
    pub fn heads(&self) -> Vec<(usize, usize)> {
        self.heads.keys().copied().collect()
    }

    pub(crate) fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        super::expect_type(peft, KIND)?;
        let c = model.config();
        let field = |message: String| tensors::bad(peft, message);
        let stage = match fields::text(&peft.config, "stage").map_err(field)? {
            Some("offsets") => Stage::Offsets,
            Some("selection") => Stage::Selection,
            other => return Err(field(format!("stage {other:?} is not 'offsets' or 'selection'"))),
        };
        let pair = |pair: &Value| -> Option<(usize, usize)> {
            match pair.as_array()?.as_slice() {
                [layer, head] => Some((layer.as_u64()? as usize, head.as_u64()? as usize)),
                _ => None,
            }
        };
        let heads: Vec<(usize, usize)> = match peft.config.get("heads") {
            Some(Value::Array(heads)) => heads
                .iter()
                .map(|p| pair(p).ok_or_else(|| field(format!("heads: {p} is not a [layer, head] pair"))))
                .collect::<Result<_, _>>()?,
            other => {
                return Err(field(format!("heads must be a list of [layer, head] pairs, found {other:?}")))
            }
        };
        let mut adapter = Self::offsets(&heads, model, 0).map_err(|e| tensors::bad(peft, e.to_string()))?;
        adapter.stage = stage;
        adapter.l1 = fields::number(&peft.config, "l1").map_err(field)?.unwrap_or(0.0) as f32;
        let all = read(peft, KEY, &[heads.len(), c.head_dim])?;
        for (row, v) in all.chunks_exact(c.head_dim).zip(adapter.heads.values_mut()) {
            *v = tensor2(row.to_vec(), [1, c.head_dim], model.device());
        }
        Ok(adapter)
    }

    /// The per-layer vector over all heads' outputs `[1, 1, heads·head_dim]`: the adapted
    /// heads' vectors, `fill` elsewhere; `None` when no head of `layer` is adapted.
    fn layer_vector(&self, layer: usize) -> Option<Tensor<3>> {
        let adapted = self.heads.range((layer, 0)..(layer + 1, 0));
        let mut parts = Vec::with_capacity(self.n_heads);
        let mut next = 0;
        for (&(_, head), v) in adapted {
            if head > next {
                parts.push(Tensor::zeros([1, (head - next) * self.head_dim], &v.device()));
            }
            parts.push(v.clone());
            next = head + 1;
        }
        let device = parts.first()?.device();
        if next < self.n_heads {
            parts.push(Tensor::zeros([1, (self.n_heads - next) * self.head_dim], &device));
        }
        Some(Tensor::cat(parts, 1).unsqueeze_dim(0))
    }
}

const KEY: &str = "lofit_vectors";

impl Adapters for LofitAdapter {
    fn linear_input(&self, layer: usize, projection: Projection, x: Tensor<3>) -> Tensor<3> {
        if projection != Projection::O {
            return x;
        }
        match (self.layer_vector(layer), self.stage) {
            (Some(a), Stage::Selection) => x.clone() + x * a,
            (Some(v), Stage::Offsets) => x + v,
            (None, _) => x,
        }
    }
}

impl Method for LofitAdapter {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        self.heads.iter().map(|(&(l, h), v)| (format!("lofit.{l}.{h}"), v)).collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        self.heads.iter_mut().map(|(&(l, h), v)| (format!("lofit.{l}.{h}"), v)).collect()
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn to_peft(&self, _model: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        let mut all = Vec::with_capacity(self.heads.len() * self.head_dim);
        for v in self.heads.values() {
            all.extend(values(v)?);
        }
        let tensors = vec![saved(KEY.into(), vec![self.heads.len(), self.head_dim], &all)];
        let config = json!({
            "peft_type": SPEC.peft_type,
            "task_type": "CAUSAL_LM",
            "stage": self.stage.name(),
            "heads": self.heads.keys().map(|&(l, h)| [l, h]).collect::<Vec<_>>(),
            "l1": self.l1,
            "target_modules": ["o_proj"],
            "inference_mode": true,
        });
        Ok((config, tensors))
    }

    fn changes_weight(&self, layer: usize, projection: Projection) -> bool {
        self.stage == Stage::Selection
            && projection == Projection::O
            && self.heads.range((layer, 0)..(layer + 1, 0)).next().is_some()
    }

    fn merge_weight(&self, layer: usize, projection: Projection, weight: &mut [f32]) -> Result<bool, Error> {
        if !self.changes_weight(layer, projection) {
            return Ok(false);
        }
        let Some(a) = self.layer_vector(layer) else { return Ok(false) };
        super::check_weight_len(weight, self.d_model * self.n_heads * self.head_dim, layer, projection)?;
        // `W (x + A ⊙ x) = (W diag(1 + A)) x`: scale the columns.
        let a = values(&a)?;
        for row in weight.chunks_exact_mut(a.len()) {
            row.iter_mut().zip(&a).for_each(|(w, a)| *w *= 1.0 + a);
        }
        Ok(true)
    }

    fn adds_bias(&self, layer: usize, projection: Projection) -> bool {
        self.stage == Stage::Offsets
            && projection == Projection::O
            && self.heads.range((layer, 0)..(layer + 1, 0)).next().is_some()
    }

    fn merge_bias(
        &self,
        layer: usize,
        projection: Projection,
        weight: &[f32],
    ) -> Result<Option<Vec<f32>>, Error> {
        let Some(v) =
            self.layer_vector(layer).filter(|_| projection == Projection::O && self.stage == Stage::Offsets)
        else {
            return Ok(None);
        };
        super::check_weight_len(weight, self.d_model * self.n_heads * self.head_dim, layer, projection)?;
        // `W (x + v) = W x + W v`.
        let v = values(&v)?;
        Ok(Some(
            weight.chunks_exact(v.len()).map(|row| row.iter().zip(&v).map(|(w, v)| w * v).sum()).collect(),
        ))
    }

    fn penalty(&self) -> Option<Tensor<1>> {
        if self.stage != Stage::Selection || self.l1 == 0.0 {
            return None;
        }
        let sums: Vec<Tensor<1>> = self.heads.values().map(|a| a.clone().abs().sum()).collect();
        Some(Tensor::cat(sums, 0).sum().mul_scalar(self.l1))
    }
}
