//! Adaptation methods. Each is one module that implements the model's [`Adapters`] trait for the
//! sites it uses and [`Method`] for training, saving and merging, and is registered in
//! [`registry::METHODS`]; the model never imports this module (see `docs/architecture.md`).

pub mod dept;
pub mod dora;
mod fields;
pub mod generative;
pub mod ia3;
pub mod lofit;
pub mod lora;
pub mod merge;
pub mod peqa;
pub mod pissa;
pub mod prefix;
pub mod prompt;
pub mod registry;
mod tensors;

pub use lora::{LoraAdapter, LoraConfig, LoraInit};
pub use registry::{MethodKind, MethodOption, MethodOptions, MethodSpec};
pub use tensors::Saved;

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;

use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::linear::read_f32;
use crate::model::{Adapters, Decoder, DecoderConfig, LowRankOutput, Projection};

/// What every adaptation method offers beyond acting on the forward pass: its parameters for
/// the optimizer and checkpoints, saving, and merging where that is exact.
pub trait Method: Adapters {
    fn kind(&self) -> MethodKind;

    /// Every trainable tensor with a stable name (its key in the saved adapter).
    fn parameters(&self) -> Vec<(String, &Tensor<2>)>;

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)>;

    fn boxed_clone(&self) -> Box<dyn Method>;

    /// Tensors besides the parameters that saving or merging reads (PiSSA's starting point,
    /// DoRA's row norms), so that [`to_host`] copies them too.
    fn fixed_tensors_mut(&mut self) -> Vec<&mut Tensor<2>> {
        Vec::new()
    }

    /// The adapter as a PEFT-style `adapter_config.json` and tensors, for `config`'s model.
    fn to_peft(&self, config: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error>;

    /// Writes the adapter as a PEFT-style directory that [`load`] reads back.
    fn save(&self, dir: &Path, model: &Decoder) -> Result<(), Error> {
        let (config, tensors) = self.to_peft(model.config())?;
        Ok(PeftDir::write(dir, &config, &tensors)?)
    }

    /// Whether [`merge_weight`](Method::merge_weight) changes this projection, known before any
    /// weight is read (a merged GGUF's header gives every tensor's type first).
    fn changes_weight(&self, layer: usize, projection: Projection) -> bool {
        let _ = (layer, projection);
        false
    }

    /// Applies the adapter's change to the dense weight `[out, in]` (our row layout) of one
    /// projection; `false` when it leaves that projection alone. A weight of another size than
    /// the adapter's model has is an error. Methods whose change does not fold into the weights
    /// say so with an error.
    fn merge_weight(&self, layer: usize, projection: Projection, weight: &mut [f32]) -> Result<bool, Error> {
        let _ = (layer, projection, weight);
        Err(Error::InvalidArgument(format!(
            "a {} adapter does not merge into the weights",
            self.kind().name()
        )))
    }

    /// Whether [`merge_bias`](Method::merge_bias) gives a bias for this projection, known before
    /// any weight is read (a merged GGUF's header lists its tensors first).
    fn adds_bias(&self, layer: usize, projection: Projection) -> bool {
        let _ = (layer, projection);
        false
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

    /// The factor on the run's learning rate for parameter `name` (DePT's two rates).
    fn learning_rate_scale(&self, name: &str) -> f32 {
        let _ = name;
        1.0
    }

    /// Values (f32) the method's forward keeps for backward in block `layer` for a micro-batch
    /// of `tokens` tokens, beyond the model's own activations and those any adapter path keeps
    /// (PEQA's weight-sized `γ ⊙ S`, DoRA's rescaled outputs): for the memory planner.
    fn training_values(&self, layer: usize, tokens: usize) -> usize {
        let _ = (layer, tokens);
        0
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

/// A copy of `method` with every tensor it reads ([`Method::parameters`],
/// [`Method::fixed_tensors_mut`]) on the host, each read back without blocking. Saving,
/// merging and a stage's bookkeeping read an adapter's values synchronously; on a copy on the
/// host those reads never wait on a device (in the browser a GPU's read-back must be awaited).
pub async fn to_host(method: &dyn Method) -> Result<Box<dyn Method>, Error> {
    async fn move_to_host(t: &mut Tensor<2>) -> Result<(), Error> {
        let dims = t.dims();
        let values = read_f32(t.clone()).await?;
        *t = Tensor::from_data(TensorData::new(values, dims), &Device::flex());
        Ok(())
    }
    let mut copy = detached(method);
    for (_, param) in copy.parameters_mut() {
        move_to_host(param).await?;
    }
    for t in copy.fixed_tensors_mut() {
        move_to_host(t).await?;
    }
    Ok(copy)
}

/// Refuses a dense weight of `projection` whose length is not `expected` (the adapter was made
/// for another model).
pub(crate) fn check_weight_len(
    weight: &[f32],
    expected: usize,
    layer: usize,
    projection: Projection,
) -> Result<(), Error> {
    if weight.len() != expected {
        return Err(Error::InvalidArgument(format!(
            "layer {layer} {} has {} weights, the adapter expects {expected}: it was made for another model",
            projection.hf_name(),
            weight.len()
        )));
    }
    Ok(())
}

/// Trainable values of `method`.
pub fn parameter_count(method: &dyn Method) -> usize {
    method.parameters().iter().map(|(_, p)| p.dims().iter().product::<usize>()).sum()
}

/// Reads a saved adapter of any registered method, made for `model` (shapes are checked).
pub fn load(dir: &Path, model: &Decoder) -> Result<Box<dyn Method>, Error> {
    from_peft(&PeftDir::read(dir)?, model)
}

/// The adapter of any registered method in `peft` (read from disk or built in memory), made
/// for `model`.
pub fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Box<dyn Method>, Error> {
    let kind = MethodKind::of_config(&peft.config)
        .map_err(|message| Error::Adapter { path: peft.path.display().to_string(), message })?;
    (kind.spec().load)(peft, model)
}

/// Several adapters acting at once, each with its own scale: at scale `s` a member moves each
/// site's value `v` to `v + s·(member(v) − v)` (a LoRA's delta times `s`; an (IA)³ vector
/// `1 + s·(l − 1)`). Soft prompts are concatenated in order; for them only 0 (off) and 1 are
/// defined. A member at scale 0 takes no part. Members are shared, not copied: switching
/// adapters means building another set; the model is never reloaded.
#[derive(Clone, Default)]
pub struct AdapterSet {
    members: Vec<(Arc<dyn Method>, f32)>,
}

impl AdapterSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `adapter` at `scale`, which must be finite, and 0 or 1 for a method that is not
    /// [`scalable`](MethodSpec::scalable) (soft prompts).
    pub fn push(&mut self, adapter: impl Into<Arc<dyn Method>>, scale: f32) -> Result<(), Error> {
        let adapter = adapter.into();
        check_scale(adapter.kind(), scale)?;
        self.members.push((adapter, scale));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = (&dyn Method, f32)> {
        self.members.iter().map(|(m, s)| (m.as_ref(), *s))
    }

    /// The members that take part (scale not 0).
    fn active(&self) -> impl Iterator<Item = &(Arc<dyn Method>, f32)> {
        self.members.iter().filter(|(_, scale)| *scale != 0.0)
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
        for (member, scale) in self.active() {
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

    /// Whether a member changes this projection's weight (see [`Method::changes_weight`]).
    pub fn changes_weight(&self, layer: usize, projection: Projection) -> bool {
        self.active().any(|(member, _)| member.changes_weight(layer, projection))
    }

    /// Refuses a set with a member that does not merge (a soft prompt), naming it.
    pub fn check_mergeable(&self) -> Result<(), Error> {
        match self.active().find(|(member, _)| !member.kind().mergeable()) {
            Some((member, _)) => Err(Error::InvalidArgument(format!(
                "a {} adapter does not merge into the weights (soft prompts act through the input)",
                member.kind().name()
            ))),
            None => Ok(()),
        }
    }

    /// Whether a member adds an output bias to this projection (see [`Method::adds_bias`]).
    pub fn adds_bias(&self, layer: usize, projection: Projection) -> bool {
        self.active().any(|(member, _)| member.adds_bias(layer, projection))
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
        for (member, scale) in self.active() {
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

/// Refuses a scale that is not finite, or one other than 0 and 1 for a soft prompt.
pub fn check_scale(method: MethodKind, scale: f32) -> Result<(), Error> {
    if !scale.is_finite() {
        return Err(Error::option("scale", scale, "must be finite"));
    }
    if !method.spec().scalable && scale != 0.0 && scale != 1.0 {
        return Err(Error::option(
            "scale",
            scale,
            format!(
                "a {} adapter is a soft prompt, which is on (1) or off (0); it has no scale in between",
                method.name()
            ),
        ));
    }
    Ok(())
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
        for (member, scale) in self.active() {
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
        for (member, scale) in self.active() {
            y = interpolate(y.clone(), member.linear_output(layer, projection, x, y), *scale);
        }
        y
    }

    fn token_embeddings(&self, start: usize, mut x: Tensor<3>) -> Tensor<3> {
        for (member, scale) in self.active() {
            x = interpolate(x.clone(), member.token_embeddings(start, x), *scale);
        }
        x
    }

    fn prefix_kv(&self, layer: usize) -> Option<(Tensor<3>, Tensor<3>)> {
        let (keys, values): (Vec<_>, Vec<_>) =
            self.active().filter_map(|(member, _)| member.prefix_kv(layer)).unzip();
        (!keys.is_empty()).then(|| (Tensor::cat(keys, 0), Tensor::cat(values, 0)))
    }

    fn virtual_tokens(&self) -> Option<Tensor<2>> {
        let tokens: Vec<_> = self.active().filter_map(|(member, _)| member.virtual_tokens()).collect();
        (!tokens.is_empty()).then(|| Tensor::cat(tokens, 0))
    }

    fn host_low_rank(&self) -> Result<Option<Vec<LowRankOutput>>, Error> {
        let mut all = Vec::new();
        for (member, scale) in self.active() {
            let Some(outputs) = member.host_low_rank()? else { return Ok(None) };
            // `interpolate` adds `scale` times each member's change to the output.
            all.extend(outputs.into_iter().map(|o| LowRankOutput { scale: o.scale * scale, ..o }));
        }
        Ok(Some(all))
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
pub(crate) fn expect_type(peft: &PeftDir, expected: MethodKind) -> Result<(), Error> {
    let found = MethodKind::of_config(&peft.config).map_err(|message| tensors::bad(peft, message))?;
    if found != expected {
        return Err(tensors::bad(
            peft,
            format!("this is a {} adapter, not {}", found.name(), expected.name()),
        ));
    }
    Ok(())
}
