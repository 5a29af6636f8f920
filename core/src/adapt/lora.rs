//! LoRA (Hu et al. 2021): a projection `y = W x` gains `s · B (A x)` with `A: [r, in]`,
//! `B: [out, r]` and `s = alpha / r` (rsLoRA: `alpha / sqrt(r)`). Stored as Hugging Face PEFT
//! (`peft_type: LORA`, keys `base_model.model.model.layers.{i}.{module}.lora_{A,B}.weight`), in
//! HF's row order for q/k, which this module permutes to and from our RoPE-pair layout.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use serde_json::Value;

use super::fields;
use super::registry::{
    peft_type, BuildContext, Coding, Combine, MethodKind, MethodOption, MethodSpec, OptionDefault, OptionSpec,
};
use super::tensors::{self, rotary_rows, saved, tensor2, untracked, values, Rng, Saved};
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::fused;
use crate::model::linear::host_f32;
use crate::model::rope::RowOrder;
use crate::model::{Adapters, Decoder, DecoderConfig, LowRankOutput, Projection};
use crate::parallel::for_each_chunk_mut;
use crate::quant::QuantMatrix;

pub static SPEC: MethodSpec = MethodSpec {
    name: "lora",
    peft_type: "LORA",
    summary: "s·B·A beside each targeted projection",
    options: &[
        RANK,
        ALPHA,
        DROPOUT,
        RSLORA,
        OptionSpec { option: MethodOption::Init, default: OptionDefault::Init(LoraInit::Kaiming) },
        OptionSpec { option: MethodOption::FreezeA, default: OptionDefault::Flag(false) },
        TARGETS,
    ],
    default_lr: 2e-4,
    mergeable: true,
    scalable: true,
    coding: Coding::LoraPairs,
    combine: Combine::StackLora,
    stage: None,
    recognizes: |config| peft_type(config) == "LORA" && !uses_dora(config),
    build: |ctx| {
        let mut config = config_of(ctx)?;
        config.freeze_a = ctx.flag(MethodOption::FreezeA, ctx.options.freeze_a)?;
        if config.freeze_a && ctx.init()? == LoraInit::Pissa {
            return Err(Error::option("freeze_a", true, "a PiSSA adapter trains its A: use init kaiming"));
        }
        Ok(Box::new(match ctx.init()? {
            LoraInit::Kaiming => LoraAdapter::new(config, ctx.model, ctx.seed)?,
            LoraInit::Pissa => LoraAdapter::new_pissa(config, ctx.model, ctx.seed)?,
        }))
    },
    load: |peft, model| Ok(Box::new(LoraAdapter::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

/// The options LoRA shares with DoRA.
pub(crate) const RANK: OptionSpec =
    OptionSpec { option: MethodOption::Rank, default: OptionDefault::Count(8) };
pub(crate) const ALPHA: OptionSpec =
    OptionSpec { option: MethodOption::Alpha, default: OptionDefault::Number(16.0) };
pub(crate) const DROPOUT: OptionSpec =
    OptionSpec { option: MethodOption::Dropout, default: OptionDefault::Number(0.0) };
pub(crate) const RSLORA: OptionSpec =
    OptionSpec { option: MethodOption::Rslora, default: OptionDefault::Flag(false) };
pub(crate) const TARGETS: OptionSpec =
    OptionSpec { option: MethodOption::Targets, default: OptionDefault::Targets(&Projection::ALL) };

/// Whether a PEFT `LORA` config is a DoRA (`use_dora`).
pub(crate) fn uses_dora(config: &Value) -> bool {
    config.get("use_dora").and_then(Value::as_bool) == Some(true)
}

/// The LoRA configuration the options describe (LoRA's and DoRA's options).
pub(crate) fn config_of(ctx: &BuildContext) -> Result<LoraConfig, Error> {
    let o = ctx.options;
    let mut config = LoraConfig::new(
        ctx.count(MethodOption::Rank, o.rank)?,
        ctx.number(MethodOption::Alpha, o.alpha)?,
        ctx.targets()?,
    );
    config.dropout = ctx.number(MethodOption::Dropout, o.dropout)?;
    config.use_rslora = ctx.flag(MethodOption::Rslora, o.rslora)?;
    Ok(config)
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub use_rslora: bool,
    pub targets: Vec<Projection>,
    pub init: LoraInit,
    /// `A` stays at its starting value; only `B` trains (FFA-LoRA). Saved as the PEFT config's
    /// extra key `adaptkit_freeze_a`, so an adapter continued elsewhere keeps it frozen.
    pub freeze_a: bool,
}

/// How a new adapter starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// PEFT's default: Kaiming-uniform `A`, zero `B`; the model starts unchanged.
    Kaiming,
    /// Principal singular components of each weight (see [`super::pissa`]), trained against
    /// the residual base; needs [`LoraAdapter::new_pissa`].
    Pissa,
}

impl LoraInit {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kaiming => "kaiming",
            Self::Pissa => "pissa",
        }
    }
}

impl core::str::FromStr for LoraInit {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        match name {
            "kaiming" => Ok(Self::Kaiming),
            "pissa" => Ok(Self::Pissa),
            other => Err(Error::option("init", other, "must be kaiming or pissa")),
        }
    }
}

impl LoraConfig {
    /// Plain LoRA (no dropout, `alpha / r` scaling, PEFT's initialisation) of `rank` on `targets`.
    pub fn new(rank: usize, alpha: f32, targets: Vec<Projection>) -> Self {
        Self {
            rank,
            alpha,
            dropout: 0.0,
            use_rslora: false,
            targets,
            init: LoraInit::Kaiming,
            freeze_a: false,
        }
    }

    fn check(&self) -> Result<(), Error> {
        if self.rank == 0 {
            return Err(Error::option("rank", 0, "must be at least 1"));
        }
        if self.targets.is_empty() {
            return Err(Error::option("targets", "", "name at least one projection"));
        }
        Ok(())
    }

    /// The factor on `B A x`.
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }
}

/// `A` and `B` of one projection, `B`'s rows in our layout.
#[derive(Clone)]
struct Pair {
    a: Tensor<2>,
    b: Tensor<2>,
}

#[derive(Clone)]
pub struct LoraAdapter {
    config: LoraConfig,
    pairs: BTreeMap<(usize, Projection), Pair>,
    /// Set while training with dropout: the seed of this micro-batch's masks.
    dropout_seed: Option<u64>,
    /// PiSSA's starting `A₀`, `B₀` (frozen): the adapter acts as `s·(B·A − B₀·A₀)`, so the
    /// base model itself is never changed, and it is saved in that form for the original base.
    initial: Option<BTreeMap<(usize, Projection), Pair>>,
}

/// Where PEFT keeps the modules of decoder layer `i`: `{LAYERS}{i}.self_attn.q_proj…`.
pub(crate) const LAYERS: &str = "base_model.model.model.layers.";

/// `lora_A` and `lora_B` of one projection as read, before both are known to be present.
type HalfPair = (Option<Vec<f32>>, Option<Vec<f32>>);

impl LoraAdapter {
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// `A` and `B` of one projection, if adapted.
    pub(crate) fn pair(&self, layer: usize, projection: Projection) -> Option<(&Tensor<2>, &Tensor<2>)> {
        self.pairs.get(&(layer, projection)).map(|pair| (&pair.a, &pair.b))
    }

    /// The adapted projections, in order.
    pub(crate) fn sites(&self) -> impl Iterator<Item = (usize, Projection)> + '_ {
        self.pairs.keys().copied()
    }

    /// `s · B (A x)` for projection `projection` of block `layer`, if this adapter has one
    /// (with dropout on `x` while a dropout seed is set); for PiSSA, minus the frozen
    /// `s · B₀ (A₀ x)`, which stands for the residual base and sees `x` without dropout.
    pub fn delta(&self, layer: usize, projection: Projection, x: &Tensor<3>) -> Option<Tensor<3>> {
        let pair = self.pairs.get(&(layer, projection))?;
        let [b, t, d] = x.dims();
        let out = pair.b.dims()[0];
        let scale = self.config.scale();
        let low_rank =
            |pair: &Pair, x: Tensor<3>| fused::low_rank(x.reshape([b * t, d]), &pair.a, &pair.b, scale);
        let dropped = match self.dropout_seed.filter(|_| self.config.dropout > 0.0) {
            Some(seed) => {
                let site =
                    seed ^ ((layer as u64) << 8 | projection as u64).wrapping_mul(0xA24B_AED4_963E_E407);
                let mask = dropout_mask(site, b * t * d, self.config.dropout);
                x.clone() * Tensor::<3>::from_data(TensorData::new(mask, [b, t, d]), &x.device())
            }
            None => x.clone(),
        };
        let mut delta = low_rank(pair, dropped);
        if let Some(start) = self.initial.as_ref().and_then(|initial| initial.get(&(layer, projection))) {
            delta = delta - low_rank(start, x.clone());
        }
        Some(delta.reshape([b, t, out]))
    }

    /// A fresh adapter on `config.targets` of every layer, initialised as PEFT does: `A`
    /// Kaiming-uniform (bound `1/sqrt(in)`), `B` zero, so it starts as the base model.
    pub fn new(config: LoraConfig, model: &Decoder, seed: u64) -> Result<Self, Error> {
        config.check()?;
        if config.init == LoraInit::Pissa {
            return Err(Error::InvalidArgument(
                "a PiSSA adapter changes the base: use LoraAdapter::new_pissa".into(),
            ));
        }
        let c = model.config();
        let mut rng = Rng::new(seed);
        let mut pairs = BTreeMap::new();
        for layer in 0..c.n_layers {
            for &projection in &config.targets {
                let (inp, out) = (c.projection_shape(projection).1, c.projection_shape(projection).0);
                let bound = 1.0 / (inp as f32).sqrt();
                let a = (0..config.rank * inp).map(|_| rng.uniform() * bound).collect();
                pairs.insert(
                    (layer, projection),
                    Pair {
                        a: tensor2(a, [config.rank, inp], model.device()),
                        b: tensor2(vec![0.0; out * config.rank], [out, config.rank], model.device()),
                    },
                );
            }
        }
        Ok(Self { config, pairs, dropout_seed: None, initial: None })
    }

    /// An adapter of `config` with the given `A` (`[rank, in]`) and `B` (`[out, rank]`, our row
    /// layout) per projection, e.g. one a generator made ([`super::generative`]).
    pub(crate) fn from_pairs(
        config: LoraConfig,
        pairs: BTreeMap<(usize, Projection), (Tensor<2>, Tensor<2>)>,
    ) -> Result<Self, Error> {
        config.check()?;
        if let Some(((layer, p), _)) =
            pairs.iter().find(|(_, (a, b))| a.dims()[0] != config.rank || b.dims()[1] != config.rank)
        {
            return Err(Error::InvalidArgument(format!(
                "layer {layer} {}: A and B are not of rank {}",
                p.hf_name(),
                config.rank
            )));
        }
        let pairs = pairs.into_iter().map(|(site, (a, b))| (site, Pair { a, b })).collect();
        Ok(Self { config, pairs, dropout_seed: None, initial: None })
    }

    /// A PiSSA adapter (see [`super::pissa`]): `A`, `B` from the top `rank` singular components
    /// of each targeted weight, trained against the residual `W − s·B₀A₀`, which the adapter
    /// itself subtracts (the shared model is not changed). The same `seed` gives the same split,
    /// so a resumed run rebuilds the same adapter. Runs on the installed worker pool.
    pub fn new_pissa(mut config: LoraConfig, model: &Decoder, seed: u64) -> Result<Self, Error> {
        config.check()?;
        config.init = LoraInit::Pissa;
        for &projection in &config.targets {
            super::pissa::check_rank(model, projection, config.rank)?;
        }
        let (rank, scale) = (config.rank, config.scale());
        let sites: Vec<(usize, Projection)> = (0..model.config().n_layers)
            .flat_map(|layer| config.targets.iter().map(move |&p| (layer, p)))
            .collect();
        let weights: Vec<QuantMatrix> =
            sites.iter().map(|&(layer, p)| model.blocks()[layer].linear(p).weight().clone()).collect();
        // The decompositions are independent: one task each on the installed pool.
        let mut splits: Vec<Option<(Vec<f32>, Vec<f32>)>> = sites.iter().map(|_| None).collect();
        for_each_chunk_mut(&mut splits, 1, |i, slot| {
            let (layer, projection) = sites[i];
            let site_seed = seed ^ ((layer as u64) << 8 | projection as u64);
            slot[0] = Some(super::pissa::split(&weights[i], rank, scale, site_seed));
        });
        let mut pairs = BTreeMap::new();
        for ((&site, weight), split) in sites.iter().zip(&weights).zip(splits) {
            let (a, b) = split.expect("every site was split");
            let pair = Pair {
                a: tensor2(a, [rank, weight.cols()], model.device()),
                b: tensor2(b, [weight.rows(), rank], model.device()),
            };
            pairs.insert(site, pair);
        }
        let initial = pairs
            .iter()
            .map(|(&site, pair)| (site, Pair { a: untracked(&pair.a), b: untracked(&pair.b) }))
            .collect();
        Ok(Self { config, pairs, dropout_seed: None, initial: Some(initial) })
    }

    /// Training with dropout: masks for the next forward passes drawn from `seed` (the same
    /// seed gives the same masks). `None`, the default, turns dropout off, as for inference.
    pub fn set_dropout_seed(&mut self, seed: Option<u64>) {
        self.dropout_seed = seed;
    }

    /// Marks every `A` and `B` for gradients (the model must be on an autodiff device).
    pub fn trainable(mut self) -> Self {
        for pair in self.pairs.values_mut() {
            pair.a = pair.a.clone().require_grad();
            pair.b = pair.b.clone().require_grad();
        }
        self
    }

    /// The weight change `s · B A` (`[out, in]`, our row layout) for one projection, if adapted
    /// (PiSSA: `s · (B A − B₀ A₀)`).
    pub fn weight_delta(&self, layer: usize, projection: Projection) -> Result<Option<Vec<f32>>, Error> {
        let Some(pair) = self.pairs.get(&(layer, projection)) else { return Ok(None) };
        let mut product = pair.b.clone().matmul(pair.a.clone());
        if let Some(start) = self.initial.as_ref().and_then(|initial| initial.get(&(layer, projection))) {
            product = product - start.b.clone().matmul(start.a.clone());
        }
        values(&product.mul_scalar(self.config.scale())).map(Some)
    }

    /// Reads a PEFT LoRA adapter made for `model` (shapes are checked against it).
    pub fn load(dir: &Path, model: &Decoder) -> Result<Self, Error> {
        Self::from_peft(&PeftDir::read(dir)?, model)
    }

    pub(crate) fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        super::expect_type(peft, KIND)?;
        Self::read_weights(peft, model)
    }

    /// The LoRA part of a saved PEFT `LORA` adapter (DoRA's too).
    pub(crate) fn read_weights(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        let bad = |message: String| tensors::bad(peft, message);
        let config = parse_config(&peft.config).map_err(bad)?;
        let c = model.config();
        let mut found: BTreeMap<(usize, Projection), HalfPair> = BTreeMap::new();
        for tensor in peft.tensors.tensors().iter().filter(|t| !t.name.contains("lora_magnitude_vector")) {
            let (layer, projection, is_b) = parse_key(&tensor.name).ok_or_else(|| {
                bad(format!("tensor '{}' is not a LoRA weight of a decoder projection", tensor.name))
            })?;
            if !config.targets.contains(&projection) {
                return Err(bad(format!(
                    "tensor '{}' is for {}, which target_modules does not name",
                    tensor.name,
                    projection.hf_name()
                )));
            }
            if layer >= c.n_layers {
                return Err(bad(format!(
                    "tensor '{}' is for layer {layer}; the model has {}",
                    tensor.name, c.n_layers
                )));
            }
            let (rows, cols) = if is_b {
                (c.projection_shape(projection).0, config.rank)
            } else {
                (config.rank, c.projection_shape(projection).1)
            };
            if tensor.shape != [rows, cols] {
                return Err(bad(format!(
                    "tensor '{}' has shape {:?}, expected [{rows}, {cols}] for this model and rank {}",
                    tensor.name, tensor.shape, config.rank
                )));
            }
            let values = tensors::finite_values(peft, &tensor.name)?;
            let slot = found.entry((layer, projection)).or_default();
            *(if is_b { &mut slot.1 } else { &mut slot.0 }) = Some(values);
        }
        let device = model.device();
        let mut pairs = BTreeMap::new();
        for ((layer, projection), (a, b)) in found {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!(
                    "layer {layer} {} has only one of lora_A and lora_B",
                    projection.hf_name()
                )));
            };
            let b = rotary_rows(c, projection, b, config.rank, RowOrder::ToPairs);
            let out = c.projection_shape(projection).0;
            pairs.insert(
                (layer, projection),
                Pair {
                    a: tensor2(a, [config.rank, c.projection_shape(projection).1], device),
                    b: tensor2(b, [out, config.rank], device),
                },
            );
        }
        if pairs.is_empty() {
            return Err(bad("the adapter has no LoRA weights".into()));
        }
        Ok(Self { config, pairs, dropout_seed: None, initial: None })
    }
}

impl LoraAdapter {
    /// The PEFT config and tensors of the adapter (q/k `lora_B` rows back in HF order), which
    /// `peft.PeftModel.from_pretrained` loads.
    pub(crate) fn lora_peft(&self, c: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        // PiSSA trains against a residual base; for the original base it is the LoRA of rank
        // 2r with `A' = [A; A₀]`, `B' = [B, −B₀]` and the same scale (PEFT's conversion).
        let (rank, alpha) = match (&self.initial, self.config.use_rslora) {
            (None, _) => (self.config.rank, self.config.alpha),
            (Some(_), false) => (2 * self.config.rank, 2.0 * self.config.alpha),
            (Some(_), true) => (2 * self.config.rank, core::f32::consts::SQRT_2 * self.config.alpha),
        };
        let mut tensors = Vec::new();
        for (&(layer, projection), pair) in &self.pairs {
            let name = |which: &str| format!("{LAYERS}{layer}.{}.lora_{which}.weight", projection.hf_path());
            let mut a = values(&pair.a)?;
            let mut b = values(&pair.b)?;
            if let Some(start) = self.initial.as_ref().and_then(|initial| initial.get(&(layer, projection))) {
                a.extend(values(&start.a)?);
                let b0 = values(&start.b)?;
                let r = self.config.rank;
                b = b
                    .chunks_exact(r)
                    .zip(b0.chunks_exact(r))
                    .flat_map(|(b, b0)| b.iter().copied().chain(b0.iter().map(|v| -v)))
                    .collect();
            }
            let (out, inp) = (pair.b.dims()[0], pair.a.dims()[1]);
            let b = rotary_rows(c, projection, b, rank, RowOrder::ToRotateHalf);
            tensors.push(saved(name("A"), vec![rank, inp], &a));
            tensors.push(saved(name("B"), vec![out, rank], &b));
        }
        let mut config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": self.config.dropout,
            "use_rslora": self.config.use_rslora,
            "target_modules": self.config.targets.iter().map(|p| p.hf_name()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
        });
        if self.config.freeze_a {
            config["adaptkit_freeze_a"] = Value::Bool(true);
        }
        Ok((config, tensors))
    }
}

impl Adapters for LoraAdapter {
    fn linear_output(&self, layer: usize, projection: Projection, x: &Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        match self.delta(layer, projection, x) {
            Some(delta) => y + delta,
            None => y,
        }
    }

    fn host_low_rank(&self) -> Result<Option<Vec<LowRankOutput>>, Error> {
        if self.dropout_seed.is_some() && self.config.dropout > 0.0 {
            return Ok(None);
        }
        let scale = self.config.scale();
        let mut outputs = Vec::new();
        for (&(layer, projection), pair) in &self.pairs {
            let host = |pair: &Pair, scale| -> Result<LowRankOutput, Error> {
                let (a, b) = (host_f32(pair.a.clone())?, host_f32(pair.b.clone())?);
                Ok(LowRankOutput { layer, projection, a, b, scale })
            };
            outputs.push(host(pair, scale)?);
            // PiSSA's `- s·B₀·A₀` (see `delta`).
            if let Some(start) = self.initial.as_ref().and_then(|initial| initial.get(&(layer, projection))) {
                outputs.push(host(start, -scale)?);
            }
        }
        Ok(Some(outputs))
    }
}

impl Method for LoraAdapter {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        self.pairs
            .iter()
            .flat_map(|(&(layer, projection), pair)| {
                let name = move |w: &str| format!("{LAYERS}{layer}.{}.lora_{w}.weight", projection.hf_path());
                [(name("A"), &pair.a), (name("B"), &pair.b)]
            })
            .filter(|(name, _)| !(self.config.freeze_a && name.ends_with("lora_A.weight")))
            .collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        let freeze_a = self.config.freeze_a;
        self.pairs
            .iter_mut()
            .flat_map(|(&(layer, projection), pair)| {
                let name = move |w: &str| format!("{LAYERS}{layer}.{}.lora_{w}.weight", projection.hf_path());
                [(name("A"), &mut pair.a), (name("B"), &mut pair.b)]
            })
            .filter(|(name, _)| !(freeze_a && name.ends_with("lora_A.weight")))
            .collect()
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn fixed_tensors_mut(&mut self) -> Vec<&mut Tensor<2>> {
        let frozen_a = self.pairs.values_mut().filter(|_| self.config.freeze_a).map(|p| &mut p.a);
        let initial =
            self.initial.iter_mut().flat_map(|pairs| pairs.values_mut()).flat_map(|p| [&mut p.a, &mut p.b]);
        frozen_a.chain(initial).collect()
    }

    fn to_peft(&self, config: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        self.lora_peft(config)
    }

    fn changes_weight(&self, layer: usize, projection: Projection) -> bool {
        self.pairs.contains_key(&(layer, projection))
    }

    fn merge_weight(&self, layer: usize, projection: Projection, weight: &mut [f32]) -> Result<bool, Error> {
        let Some(delta) = self.weight_delta(layer, projection)? else { return Ok(false) };
        super::check_weight_len(weight, delta.len(), layer, projection)?;
        weight.iter_mut().zip(delta).for_each(|(w, d)| *w += d);
        Ok(true)
    }

    fn set_training_seed(&mut self, seed: Option<u64>) {
        self.dropout_seed = seed;
    }
}

pub(crate) fn parse_config(json: &Value) -> Result<LoraConfig, String> {
    if fields::flag(json, "fan_in_fan_out")? == Some(true) {
        return Err("fan_in_fan_out weights (fan_in_fan_out = true) are not supported".into());
    }
    // PEFT writes `init_lora_weights` as true/false or a method's name.
    if let Some(init) = json.get("init_lora_weights").and_then(Value::as_str) {
        let init = init.to_ascii_lowercase();
        if ["pissa", "olora", "corda", "loftq"].iter().any(|m| init.starts_with(m)) {
            return Err(format!(
                "init_lora_weights = '{init}': this adapter fits its own residual base model, not this one (save it with PEFT's path_initial_model_for_weight_conversion)"
            ));
        }
    }
    if let Some(bias) = fields::text(json, "bias")?.filter(|b| *b != "none") {
        return Err(format!("bias = '{bias}' is not supported (only 'none')"));
    }
    let rank = fields::count(json, "r")?.filter(|&r| r > 0).ok_or_else(|| {
        format!("r must be a positive integer, found {}", json.get("r").unwrap_or(&Value::Null))
    })?;
    let alpha = fields::number(json, "lora_alpha")?.unwrap_or(8.0) as f32;
    if !alpha.is_finite() {
        return Err(format!("lora_alpha {alpha} is not finite"));
    }
    let dropout = fields::number(json, "lora_dropout")?.unwrap_or(0.0) as f32;
    if !(0.0..1.0).contains(&dropout) {
        return Err(format!("lora_dropout {dropout} is not in [0, 1)"));
    }
    let use_rslora = fields::flag(json, "use_rslora")?.unwrap_or(false);
    let targets = super::parse_targets(json, "target_modules")?;
    if targets.is_empty() {
        return Err("target_modules names no module".into());
    }
    let freeze_a = fields::flag(json, "adaptkit_freeze_a")?.unwrap_or(false);
    Ok(LoraConfig { rank, alpha, dropout, use_rslora, targets, init: LoraInit::Kaiming, freeze_a })
}

/// `base_model.model.model.layers.{i}.{self_attn|mlp}.{x}_proj.lora_{A|B}.weight`.
fn parse_key(name: &str) -> Option<(usize, Projection, bool)> {
    let rest = name.strip_prefix(LAYERS)?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, is_b) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, false)
    } else {
        (rest.strip_suffix(".lora_B.weight")?, true)
    };
    let projection = Projection::ALL.into_iter().find(|p| p.hf_path() == module)?;
    Some((layer.parse().ok()?, projection, is_b))
}

/// `len` multipliers: 0 with probability `p`, else `1 / (1 - p)` (inverted dropout), from a
/// splitmix64 stream seeded by `seed`.
fn dropout_mask(seed: u64, len: usize, p: f32) -> Vec<f32> {
    let threshold = (f64::from(p) * 4_294_967_296.0) as u64;
    let keep = 1.0 / (1.0 - p);
    let mut state = seed;
    let mut mask = Vec::with_capacity(len + 1);
    while mask.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        for half in [z & 0xFFFF_FFFF, z >> 32] {
            mask.push(if half < threshold { 0.0 } else { keep });
        }
    }
    mask.truncate(len);
    mask
}
