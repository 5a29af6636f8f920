//! (IA)³ (Liu et al. 2022): learned vectors rescale activations, the outputs of k and v
//! (`l ⊙ W x`) and the input of the MLP's down projection (`W (l ⊙ h)`, a "feed-forward"
//! module). The vectors start at 1, so a new adapter is the base model. Mergeable: an output
//! vector scales the weight's rows, an input vector its columns. Stored as PEFT `IA3`: keys
//! `…{module}.ia3_l`, shaped `[out, 1]` (rows in HF order for k) or `[1, in]` for feed-forward
//! modules.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use serde_json::{json, Value};

use super::lora::LAYERS;
use super::registry::{
    peft_type, Coding, Combine, MethodKind, MethodOption, MethodSpec, OptionDefault, OptionSpec,
};
use super::tensors::{self, read, rotary_rows, saved, tensor2, values, Saved};
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::rope::RowOrder;
use crate::model::{Adapters, Decoder, DecoderConfig, Projection};

pub static SPEC: MethodSpec = MethodSpec {
    name: "ia3",
    peft_type: "IA3",
    summary: "vectors that rescale the outputs of k and v and the input of down, starting at 1",
    options: &[OptionSpec {
        option: MethodOption::Targets,
        default: OptionDefault::Targets(&[Projection::K, Projection::V, Projection::Down]),
    }],
    default_lr: 3e-3,
    mergeable: true,
    scalable: true,
    coding: Coding::FromInit(1.0),
    combine: Combine::SumChanges(1.0),
    stage: None,
    recognizes: |config| peft_type(config) == "IA3",
    build: |ctx| Ok(Box::new(Ia3Adapter::new(Ia3Config::on(ctx.targets()?), ctx.model)?)),
    load: |peft, model| Ok(Box::new(Ia3Adapter::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

#[derive(Clone, Debug, PartialEq)]
pub struct Ia3Config {
    pub targets: Vec<Projection>,
    /// Targets whose input, not output, is rescaled (a subset of `targets`).
    pub feedforward: Vec<Projection>,
}

impl Default for Ia3Config {
    /// PEFT's defaults for Llama: k, v and down, down as a feed-forward module.
    fn default() -> Self {
        Self {
            targets: vec![Projection::K, Projection::V, Projection::Down],
            feedforward: vec![Projection::Down],
        }
    }
}

impl Ia3Config {
    /// The default feed-forward rule (the MLP's down projection) on `targets`.
    pub fn on(targets: Vec<Projection>) -> Self {
        let feedforward = targets.iter().copied().filter(|&p| p == Projection::Down).collect();
        Self { targets, feedforward }
    }

    fn check(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("(IA)³ needs at least one target module".into());
        }
        if let Some(p) = self.feedforward.iter().find(|p| !self.targets.contains(p)) {
            return Err(format!("feed-forward module {} is not a target", p.hf_name()));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Ia3Adapter {
    config: Ia3Config,
    /// `[1, n]` per adapted projection: `n` its outputs, or its inputs for feed-forward ones.
    vectors: BTreeMap<(usize, Projection), Tensor<2>>,
    /// `(out, in)` of each target's weight in the model the adapter was made for.
    shapes: BTreeMap<Projection, (usize, usize)>,
}

impl Ia3Adapter {
    /// All-ones vectors on `config.targets` of every layer: the base model.
    pub fn new(config: Ia3Config, model: &Decoder) -> Result<Self, Error> {
        config.check().map_err(Error::InvalidArgument)?;
        let c = model.config();
        let mut vectors = BTreeMap::new();
        for layer in 0..c.n_layers {
            for &p in &config.targets {
                let n = Self::width(&config, model, p);
                vectors.insert((layer, p), tensor2(vec![1.0; n], [1, n], model.device()));
            }
        }
        let shapes = config.targets.iter().map(|&p| (p, c.projection_shape(p))).collect();
        Ok(Self { config, vectors, shapes })
    }

    pub fn config(&self) -> &Ia3Config {
        &self.config
    }

    fn width(config: &Ia3Config, model: &Decoder, projection: Projection) -> usize {
        let (out, inp) = model.config().projection_shape(projection);
        if config.feedforward.contains(&projection) {
            inp
        } else {
            out
        }
    }

    pub(crate) fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        super::expect_type(peft, KIND)?;
        let json = &peft.config;
        let config = Ia3Config {
            targets: super::parse_targets(json, "target_modules").map_err(|m| tensors::bad(peft, m))?,
            feedforward: match json.get("feedforward_modules") {
                None | Some(Value::Null) => Vec::new(),
                Some(_) => {
                    super::parse_targets(json, "feedforward_modules").map_err(|m| tensors::bad(peft, m))?
                }
            },
        };
        config.check().map_err(|m| tensors::bad(peft, m))?;
        let c = model.config();
        let mut adapter = Self::new(config, model)?;
        let known: Vec<String> = (0..c.n_layers)
            .flat_map(|layer| adapter.config.targets.iter().map(move |p| key(layer, *p)))
            .collect();
        if let Some(extra) = peft.tensors.tensors().iter().find(|t| !known.contains(&t.name)) {
            return Err(tensors::bad(
                peft,
                format!("tensor '{}' is not an (IA)³ vector of this model", extra.name),
            ));
        }
        for (&(layer, p), vector) in adapter.vectors.iter_mut() {
            let n = vector.dims()[1];
            let feedforward = adapter.config.feedforward.contains(&p);
            let shape = if feedforward { [1, n] } else { [n, 1] };
            let v = read(peft, &key(layer, p), &shape)?;
            let v = if feedforward { v } else { rotary_rows(c, p, v, 1, RowOrder::ToPairs) };
            *vector = tensor2(v, [1, n], model.device());
        }
        Ok(adapter)
    }

    /// `l` of one projection, shaped to multiply `[batch, len, n]`.
    fn vector(&self, layer: usize, projection: Projection) -> Option<Tensor<3>> {
        let v = self.vectors.get(&(layer, projection))?;
        Some(v.clone().unsqueeze_dim(0))
    }
}

fn key(layer: usize, projection: Projection) -> String {
    format!("{LAYERS}{layer}.{}.ia3_l", projection.hf_path())
}

impl Adapters for Ia3Adapter {
    fn linear_input(&self, layer: usize, projection: Projection, x: Tensor<3>) -> Tensor<3> {
        match self.vector(layer, projection).filter(|_| self.config.feedforward.contains(&projection)) {
            Some(l) => x * l,
            None => x,
        }
    }

    fn linear_output(&self, layer: usize, projection: Projection, _x: &Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        match self.vector(layer, projection).filter(|_| !self.config.feedforward.contains(&projection)) {
            Some(l) => y * l,
            None => y,
        }
    }
}

impl Method for Ia3Adapter {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        self.vectors.iter().map(|(&(layer, p), v)| (key(layer, p), v)).collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        self.vectors.iter_mut().map(|(&(layer, p), v)| (key(layer, p), v)).collect()
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn to_peft(&self, c: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        let mut tensors = Vec::new();
        for (&(layer, p), vector) in &self.vectors {
            let v = values(vector)?;
            let n = v.len();
            if self.config.feedforward.contains(&p) {
                tensors.push(saved(key(layer, p), vec![1, n], &v));
            } else {
                tensors.push(saved(
                    key(layer, p),
                    vec![n, 1],
                    &rotary_rows(c, p, v, 1, RowOrder::ToRotateHalf),
                ));
            }
        }
        let names = |ps: &[Projection]| ps.iter().map(|p| p.hf_name()).collect::<Vec<_>>();
        let config = json!({
            "peft_type": "IA3",
            "task_type": "CAUSAL_LM",
            "target_modules": names(&self.config.targets),
            "feedforward_modules": names(&self.config.feedforward),
            "init_ia3_weights": true,
            "fan_in_fan_out": false,
            "inference_mode": true,
        });
        Ok((config, tensors))
    }

    fn changes_weight(&self, layer: usize, projection: Projection) -> bool {
        self.vectors.contains_key(&(layer, projection))
    }

    fn merge_weight(&self, layer: usize, projection: Projection, weight: &mut [f32]) -> Result<bool, Error> {
        let Some(vector) = self.vectors.get(&(layer, projection)) else { return Ok(false) };
        let (out, inp) = self.shapes[&projection];
        super::check_weight_len(weight, out * inp, layer, projection)?;
        let l = values(vector)?;
        if self.config.feedforward.contains(&projection) {
            // Columns: `W (l ⊙ x) = (W diag(l)) x`.
            weight
                .chunks_exact_mut(l.len())
                .for_each(|row| row.iter_mut().zip(&l).for_each(|(w, l)| *w *= l));
        } else {
            let cols = weight.len() / l.len();
            weight.chunks_exact_mut(cols).zip(&l).for_each(|(row, l)| row.iter_mut().for_each(|w| *w *= l));
        }
        Ok(true)
    }
}
