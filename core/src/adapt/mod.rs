//! Adaptation methods. Each is one module that implements the model's [`Adapters`] trait for the
//! sites it uses and [`Method`] for training, saving and merging, and is registered in
//! [`MethodKind`]; the model never imports this module (see `shared/design.md`).

pub mod dept;
pub mod dora;
pub mod ia3;
pub mod lofit;
pub mod lora;
pub mod merge;
pub mod peqa;
pub mod pissa;
pub mod prefix;
pub mod prompt;
mod tensors;

pub use lora::{LoraAdapter, LoraConfig, LoraInit};
pub(crate) use tensors::Saved;

use std::path::Path;

use burn::tensor::Tensor;
use serde_json::Value;

use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::{Adapters, Llama, Projection};

/// The registered methods, by the names the CLI takes (`--method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodKind {
    Lora,
    Dora,
    Ia3,
    Prompt,
    Prefix,
    Dept,
    Peqa,
    Lofit,
}

impl MethodKind {
    pub const ALL: [MethodKind; 8] =
        [Self::Lora, Self::Dora, Self::Ia3, Self::Prompt, Self::Prefix, Self::Dept, Self::Peqa, Self::Lofit];

    pub fn name(self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Dora => "dora",
            Self::Ia3 => "ia3",
            Self::Prompt => "prompt",
            Self::Prefix => "prefix",
            Self::Dept => "dept",
            Self::Peqa => "peqa",
            Self::Lofit => "lofit",
        }
    }

    /// Whether the method's change folds exactly into the base weights.
    pub fn mergeable(self) -> bool {
        !matches!(self, Self::Prompt | Self::Prefix | Self::Dept)
    }

    /// The method of a saved adapter, from its `adapter_config.json` (`peft_type`, and
    /// `use_dora` for DoRA).
    pub fn of_config(config: &Value) -> Result<Self, String> {
        let peft_type = config.get("peft_type").and_then(Value::as_str).unwrap_or_default();
        Ok(match peft_type {
            "LORA" if config.get("use_dora").and_then(Value::as_bool) == Some(true) => Self::Dora,
            "LORA" => Self::Lora,
            "IA3" => Self::Ia3,
            "PROMPT_TUNING" => Self::Prompt,
            "PREFIX_TUNING" => Self::Prefix,
            dept::PEFT_TYPE => Self::Dept,
            peqa::PEFT_TYPE => Self::Peqa,
            lofit::PEFT_TYPE => Self::Lofit,
            other => {
                return Err(format!(
                    "peft_type '{other}' is not a method adaptkit knows (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING, {}, {}, {})",
                    dept::PEFT_TYPE,
                    peqa::PEFT_TYPE,
                    lofit::PEFT_TYPE
                ))
            }
        })
    }

    /// Reads a saved adapter of this method, made for `model`.
    fn load(self, peft: &PeftDir, model: &Llama) -> Result<Box<dyn Method>, Error> {
        Ok(match self {
            Self::Lora => Box::new(LoraAdapter::from_peft(peft, model)?),
            Self::Dora => Box::new(dora::DoraAdapter::from_peft(peft, model)?),
            Self::Ia3 => Box::new(ia3::Ia3Adapter::from_peft(peft, model)?),
            Self::Prompt => Box::new(prompt::PromptAdapter::from_peft(peft, model)?),
            Self::Prefix => Box::new(prefix::PrefixAdapter::from_peft(peft, model)?),
            Self::Dept => Box::new(dept::DeptAdapter::from_peft(peft, model)?),
            Self::Peqa => Box::new(peqa::PeqaAdapter::from_peft(peft, model)?),
            Self::Lofit => Box::new(lofit::LofitAdapter::from_peft(peft, model)?),
        })
    }
}

impl core::str::FromStr for MethodKind {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
            Error::InvalidArgument(format!("unknown method '{name}' (one of: {})", names.join(", ")))
        })
    }
}

/// What every adaptation method offers beyond acting on the forward pass: its parameters for
/// the optimizer and checkpoints, saving, and merging where that is exact.
pub trait Method: Adapters {
    fn kind(&self) -> MethodKind;

    /// Every trainable tensor with a stable name (its key in the saved adapter).
    fn parameters(&self) -> Vec<(String, &Tensor<2>)>;

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)>;

    fn boxed_clone(&self) -> Box<dyn Method>;

    /// Writes the adapter as a PEFT-style directory that [`load`] reads back.
    fn save(&self, dir: &Path, model: &Llama) -> Result<(), Error>;

    /// Applies the adapter's change to the dense weight `[out, in]` (our row layout) of one
    /// projection; `false` when it leaves that projection alone. Methods whose change does not
    /// fold into the weights say so with an error.
    fn merge_weight(&self, layer: usize, projection: Projection, weight: &mut [f32]) -> Result<bool, Error> {
        let _ = (layer, projection, weight);
        Err(Error::InvalidArgument(format!(
            "a {} adapter does not merge into the weights",
            self.kind().name()
        )))
    }

    /// The output bias the adapter adds to one projection, given its dense weight `[out, in]`
    /// (already merged), where the method's change is a bias (LoFiT's offsets); `None` for
    /// none.
    fn merge_bias(
        &self,
        layer: usize,
        projection: Projection,
        weight: &[f32],
    ) -> Result<Option<Vec<f32>>, Error> {
        let _ = (layer, projection, weight);
        Ok(None)
    }

    /// The blocks of one projection's quantized weight with the adapter's change written
    /// into them, for methods that change the blocks themselves (PEQA's scales); `None` when
    /// the method cannot (or leaves the projection alone).
    fn merge_blocks(&self, layer: usize, projection: Projection) -> Result<Option<Vec<u8>>, Error> {
        let _ = (layer, projection);
        Ok(None)
    }

    /// Training with randomness (dropout): the seed of the next forward passes; `None` for
    /// inference.
    fn set_training_seed(&mut self, seed: Option<u64>) {
        let _ = seed;
    }

    /// What the model looked like before training when that is not the plain base model
    /// (PiSSA), off the autodiff graph.
    fn starting_point(&self) -> Option<Box<dyn Method>> {
        None
    }

    /// The factor on the run's learning rate for parameter `name` (DePT's two rates).
    fn learning_rate_scale(&self, name: &str) -> f32 {
        let _ = name;
        1.0
    }

    /// A term added to the training loss (LoFiT's L1 penalty while it selects heads).
    fn penalty(&self) -> Option<Tensor<1>> {
        None
    }
}

/// `method` with every parameter marked for gradients (the model must be on an autodiff device).
pub fn trainable(mut method: Box<dyn Method>) -> Box<dyn Method> {
    for (_, param) in method.parameters_mut() {
        *param = param.clone().require_grad();
    }
    method
}

/// A copy of `method` with its parameters off the autodiff graph, for forward passes that keep
/// no activations for backward.
pub fn detached(method: &dyn Method) -> Box<dyn Method> {
    let mut copy = method.boxed_clone();
    for (_, param) in copy.parameters_mut() {
        *param = tensors::untracked(param);
    }
    copy
}

/// Trainable values of `method`.
pub fn parameter_count(method: &dyn Method) -> usize {
    method.parameters().iter().map(|(_, p)| p.dims().iter().product::<usize>()).sum()
}

/// Reads a saved adapter of any registered method, made for `model` (shapes are checked).
pub fn load(dir: &Path, model: &Llama) -> Result<Box<dyn Method>, Error> {
    from_peft(&PeftDir::read(dir)?, model)
}

/// The adapter of any registered method in `peft` (read from disk or built in memory), made
/// for `model`.
pub fn from_peft(peft: &PeftDir, model: &Llama) -> Result<Box<dyn Method>, Error> {
    let kind = MethodKind::of_config(&peft.config)
        .map_err(|message| Error::Adapter { path: peft.path.display().to_string(), message })?;
    kind.load(peft, model)
}

/// Several adapters acting at once, each with its own scale: at scale `s` a member moves each
/// site's value `v` to `v + s·(member(v) − v)` (a LoRA's delta times `s`; an (IA)³ vector
/// `1 + s·(l − 1)`). Soft prompts are concatenated in order. Switching adapters means building
/// another set; the model is never reloaded.
#[derive(Default)]
pub struct AdapterSet {
    members: Vec<(Box<dyn Method>, f32)>,
}

impl AdapterSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, adapter: Box<dyn Method>, scale: f32) {
        self.members.push((adapter, scale));
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = (&dyn Method, f32)> {
        self.members.iter().map(|(m, s)| (m.as_ref(), *s))
    }

    /// Applies every member's change to the dense weight of one projection; `false` when no
    /// member changes it.
    pub fn merge_weight(
        &self,
        layer: usize,
        projection: Projection,
        weight: &mut [f32],
    ) -> Result<bool, Error> {
        let mut changed = false;
        for (member, scale) in &self.members {
            if *scale == 1.0 {
                changed |= member.merge_weight(layer, projection, weight)?;
                continue;
            }
            let mut moved = weight.to_vec();
            if member.merge_weight(layer, projection, &mut moved)? {
                weight.iter_mut().zip(moved).for_each(|(w, m)| *w += scale * (m - *w));
                changed = true;
            }
        }
        Ok(changed)
    }

    /// The summed, scaled output biases the members add to one projection of dense weight
    /// `weight` (see [`Method::merge_bias`]).
    pub fn merge_bias(
        &self,
        layer: usize,
        projection: Projection,
        weight: &[f32],
    ) -> Result<Option<Vec<f32>>, Error> {
        let mut total: Option<Vec<f32>> = None;
        for (member, scale) in &self.members {
            if let Some(bias) = member.merge_bias(layer, projection, weight)? {
                let total = total.get_or_insert_with(|| vec![0.0; bias.len()]);
                total.iter_mut().zip(bias).for_each(|(t, b)| *t += scale * b);
            }
        }
        Ok(total)
    }

    /// [`Method::merge_blocks`] of the only member, at scale 1; `None` for any other set.
    pub fn merge_blocks(&self, layer: usize, projection: Projection) -> Result<Option<Vec<u8>>, Error> {
        match self.members.as_slice() {
            [(member, scale)] if *scale == 1.0 => member.merge_blocks(layer, projection),
            _ => Ok(None),
        }
    }
}

/// `value + scale·(moved − value)`, skipping the arithmetic at scale 1.
fn interpolate<const D: usize>(value: Tensor<D>, moved: Tensor<D>, scale: f32) -> Tensor<D> {
    if scale == 1.0 {
        moved
    } else {
        value.clone() + (moved - value).mul_scalar(scale)
    }
}

impl Adapters for AdapterSet {
    fn linear_input(&self, layer: usize, projection: Projection, mut x: Tensor<3>) -> Tensor<3> {
        for (member, scale) in &self.members {
            x = interpolate(x.clone(), member.linear_input(layer, projection, x), *scale);
        }
        x
    }

    fn linear_output(
        &self,
        layer: usize,
        projection: Projection,
        x: &Tensor<3>,
        mut y: Tensor<3>,
    ) -> Tensor<3> {
        for (member, scale) in &self.members {
            y = interpolate(y.clone(), member.linear_output(layer, projection, x, y), *scale);
        }
        y
    }

    fn token_embeddings(&self, start: usize, mut x: Tensor<3>) -> Tensor<3> {
        for (member, scale) in &self.members {
            x = interpolate(x.clone(), member.token_embeddings(start, x), *scale);
        }
        x
    }

    fn prefix_kv(&self, layer: usize) -> Option<(Tensor<3>, Tensor<3>)> {
        let (keys, values): (Vec<_>, Vec<_>) =
            self.members.iter().filter_map(|(member, _)| member.prefix_kv(layer)).unzip();
        (!keys.is_empty()).then(|| (Tensor::cat(keys, 0), Tensor::cat(values, 0)))
    }

    fn virtual_tokens(&self) -> Option<Tensor<2>> {
        let tokens: Vec<_> = self.members.iter().filter_map(|(member, _)| member.virtual_tokens()).collect();
        (!tokens.is_empty()).then(|| Tensor::cat(tokens, 0))
    }
}

/// PEFT's `target_modules`: a list of module names (`q_proj`, …).
fn parse_targets(json: &Value, key: &str) -> Result<Vec<Projection>, String> {
    match json.get(key) {
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| {
                let name = n.as_str().unwrap_or_default();
                Projection::parse(name).ok_or_else(|| {
                    format!("{key}: unknown module '{name}' (supported: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)")
                })
            })
            .collect(),
        other => Err(format!("{key} must be a list of module names, found {other:?}")),
    }
}

/// Checks the `peft_type` of a saved adapter against the method reading it.
fn expect_type(peft: &PeftDir, expected: MethodKind) -> Result<(), Error> {
    let found = MethodKind::of_config(&peft.config).map_err(|message| tensors::bad(peft, message))?;
    if found != expected {
        return Err(tensors::bad(
            peft,
            format!("this is a {} adapter, not {}", found.name(), expected.name()),
        ));
    }
    Ok(())
}
