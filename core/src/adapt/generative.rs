//! GenerativeAdapter (Chen et al. 2024, `methods.md` §1): a generator, trained once, that turns
//! a context into a LoRA in one forward pass of the frozen model, with no training on the
//! device.
//!
//! For each targeted projection of each block, the generator reads the block's input `h_t` (the
//! residual stream) over the context tokens and accumulates the state
//! `S = Σ_t (A₂ ĥ_t)(A₃ ĥ_t)ᵀ` (`R₁ × R₂`, `ĥ = RMSNorm_g(h)`): a sum, so it is built window by
//! window and its size does not depend on the context's length. The generated change of the
//! projection is `ΔW = s · B S_nᵀ A₁` with `S_n = S / ‖S‖_F` and `s = α / R₂`, a plain LoRA of
//! rank `R₂` (`lora_A = S_nᵀ A₁`, `lora_B = B` at LoRA's scale `α / R₂`), so a generated
//! adapter merges, exports and becomes a patch like a trained one.
//!
//! Normalisation: the paper keeps the top-`k` singular directions of `S` with unit singular
//! values; we normalise by the Frobenius norm, which is differentiable with plain tensor ops (no
//! SVD backward, which burn lacks). Both make the update's size independent of the context's
//! length; ours keeps the ratios between singular values (it does not whiten `S`) and is about
//! `√k` smaller than the SVD form, a scale `B` learns. Windows are encoded by
//! the base model independently (the paper's "parallel" mode) in training and on the device
//! alike, so encoding a context costs one pass of the base over it.
//!
//! The generator trains as a [`Method`] (AdamW, checkpoints and the loss are the trainer's):
//! [`Generator::set_contexts`] gives each row of a training batch the context its adapter is
//! generated from, and the projection's output gains that row's `s · B S_nᵀ A₁ x`.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use serde_json::{json, Value};

use super::registry::{BuildContext, Coding, Combine, MethodKind, MethodSpec};
use super::tensors::{saved, tensor2, untracked, values, Rng, Saved};
use super::{LoraAdapter, LoraConfig, Method};
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::fused::rms_norm;
use crate::model::linear::read_f32;
use crate::model::{Adapters, Decoder, DecoderConfig, NoAdapters, Projection};

/// The generator's entry: it is not trained on a user's data (`adaptkit train` does not list
/// it, see `METHODS`); the spec names its checkpoints and its saved form.
pub static SPEC: MethodSpec = MethodSpec {
    name: "generative",
    peft_type: "ADAPTKIT_GENERATOR",
    summary: "a generator that maps a context to a LoRA in one forward pass",
    options: &[],
    default_lr: 2e-4,
    mergeable: false,
    scalable: true,
    coding: Coding::Dense,
    combine: Combine::Not,
    stage: None,
    recognizes: |config| super::registry::peft_type(config) == "ADAPTKIT_GENERATOR",
    build: |ctx: &BuildContext| {
        Ok(Box::new(Generator::new(GeneratorConfig::default(), ctx.model, ctx.seed)?))
    },
    load: |peft, model| Ok(Box::new(Generator::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

/// The RMSNorm epsilon of the context encoding (the reference's).
const NORM_EPS: f32 = 1e-6;
/// Added to `‖S‖²` so that an empty context gives a zero update, not a division by zero.
const FROBENIUS_EPS: f32 = 1e-6;

/// The generator's shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorConfig {
    /// `R₁`: width of the keys `A₂ ĥ` and of `A₁ x`.
    pub r1: usize,
    /// `R₂`: width of the values `A₃ ĥ`; the rank of the generated LoRA.
    pub r2: usize,
    /// `s = alpha / r2`.
    pub alpha: f32,
    pub targets: Vec<Projection>,
    /// Context tokens encoded per pass of the base model; training encodes its chunks at this
    /// length too, so the block inputs it learned from are the ones the device computes.
    pub window: usize,
}

impl Default for GeneratorConfig {
    /// `methods.md` §1.6 scaled to a generator small enough to commit: `R₁ = R₂ = 128` on
    /// `o_proj`, `s = 1/16` as in the paper.
    fn default() -> Self {
        Self { r1: 128, r2: 128, alpha: 8.0, targets: vec![Projection::O], window: 128 }
    }
}

impl GeneratorConfig {
    pub fn scale(&self) -> f32 {
        self.alpha / self.r2 as f32
    }

    fn check(&self) -> Result<(), Error> {
        if !self.alpha.is_finite() {
            return Err(Error::option("alpha", self.alpha, "must be a finite number"));
        }
        if self.r1 == 0 || self.r2 == 0 {
            return Err(Error::option("rank", 0, "R1 and R2 must be at least 1"));
        }
        if self.targets.is_empty() {
            return Err(Error::option("targets", "", "name at least one projection"));
        }
        if self.window == 0 {
            return Err(Error::option("window", 0, "must be at least 1 token"));
        }
        Ok(())
    }
}

/// One targeted projection's generator.
#[derive(Clone)]
struct Site {
    /// RMSNorm weight `[1, d_model]` on the block input.
    norm: Tensor<2>,
    /// `[R₁, in]`: the projection's input into key space.
    a1: Tensor<2>,
    /// `[R₁, d_model]`: keys of the context.
    a2: Tensor<2>,
    /// `[R₂, d_model]`: values of the context.
    a3: Tensor<2>,
    /// `[out, R₂]`, zero at the start: the generator starts as the base model.
    b: Tensor<2>,
}

const PARTS: [&str; 5] = ["norm", "a1", "a2", "a3", "b"];

impl Site {
    fn parts(&self) -> [&Tensor<2>; 5] {
        [&self.norm, &self.a1, &self.a2, &self.a3, &self.b]
    }

    fn parts_mut(&mut self) -> [&mut Tensor<2>; 5] {
        [&mut self.norm, &mut self.a1, &mut self.a2, &mut self.a3, &mut self.b]
    }

    /// The states `Kᵀ V` of block inputs `hidden: [n, len, d]`, one `[R₁, R₂]` per row.
    fn states(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [n, len, d] = hidden.dims();
        let normed = rms_norm(hidden, &self.norm.clone().reshape([d]), NORM_EPS).reshape([n * len, d]);
        let keys = normed.clone().matmul(self.a2.clone().transpose()).reshape([n, len, self.a2.dims()[0]]);
        let values = normed.matmul(self.a3.clone().transpose()).reshape([n, len, self.a3.dims()[0]]);
        keys.swap_dims(1, 2).matmul(values)
    }

    /// `s · B S_nᵀ A₁ x` for rows `x: [rows, len, in]`, each with its normalised state
    /// `[rows, R₁, R₂]`.
    fn apply(&self, x: &Tensor<3>, normalised: Tensor<3>, scale: f32) -> Tensor<3> {
        let [rows, len, d_in] = x.dims();
        let (r1, out) = (self.a1.dims()[0], self.b.dims()[0]);
        let keyed = x.clone().reshape([rows * len, d_in]).matmul(self.a1.clone().transpose());
        let mixed = keyed.reshape([rows, len, r1]).matmul(normalised);
        let r2 = mixed.dims()[2];
        mixed
            .reshape([rows * len, r2])
            .matmul(self.b.clone().transpose())
            .mul_scalar(scale)
            .reshape([rows, len, out])
    }
}

/// `S / sqrt(‖S‖²_F + ε)` of each row of `states: [rows, R₁, R₂]`.
fn frobenius_normalised(states: Tensor<3>) -> Tensor<3> {
    let [rows, r1, r2] = states.dims();
    let flat = states.reshape([rows, r1 * r2]);
    let norm = flat.clone().square().sum_dim(1).add_scalar(FROBENIUS_EPS).sqrt();
    (flat / norm).reshape([rows, r1, r2])
}

/// The contexts of a training batch: row `r`'s adapter is generated from the chunks `select`
/// marks for it.
#[derive(Clone)]
pub struct BatchContexts {
    /// Per block, the block inputs of every context chunk, `[chunks, len, d_model]`, off the
    /// autodiff graph (the base model encodes the context; only the generator learns).
    pub hidden: Vec<Tensor<3>>,
    /// `[rows, chunks]`: 1 where row `r`'s context holds chunk `c`, else 0.
    pub select: Tensor<2>,
}

/// The running state of one context: the sum `S` of each targeted projection, on the host,
/// exactly additive, so text added later extends it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextState {
    /// Context tokens encoded so far.
    pub tokens: usize,
    /// `S` per (block, projection), `R₁ × R₂` row-major.
    pub sums: BTreeMap<(usize, Projection), Vec<f32>>,
}

#[derive(Clone)]
pub struct Generator {
    config: GeneratorConfig,
    sites: BTreeMap<(usize, Projection), Site>,
    /// While training: the contexts of the batch's rows.
    contexts: Option<BatchContexts>,
}

impl Generator {
    /// A fresh generator for `model`: `A₁, A₂, A₃` Kaiming-normal (`a = √5`, as the
    /// reference), `B` zero and the norms one, so it generates zero updates until trained.
    pub fn new(config: GeneratorConfig, model: &Decoder, seed: u64) -> Result<Self, Error> {
        config.check()?;
        let c = model.config();
        let device = model.device();
        let mut rng = Rng::new(seed);
        let mut normal = |rows: usize, cols: usize| {
            // Kaiming normal with a = √5: gain √(2 / (1 + 5)), std gain / √fan_in.
            let std = (1.0f32 / 3.0).sqrt() / (cols as f32).sqrt();
            tensor2((0..rows * cols).map(|_| rng.normal() * std).collect(), [rows, cols], device)
        };
        let mut sites = BTreeMap::new();
        for layer in 0..c.n_layers {
            for &projection in &config.targets {
                let (out, inp) = c.projection_shape(projection);
                let site = Site {
                    norm: tensor2(vec![1.0; c.d_model], [1, c.d_model], device),
                    a1: normal(config.r1, inp),
                    a2: normal(config.r1, c.d_model),
                    a3: normal(config.r2, c.d_model),
                    b: tensor2(vec![0.0; out * config.r2], [out, config.r2], device),
                };
                sites.insert((layer, projection), site);
            }
        }
        Ok(Self { config, sites, contexts: None })
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Gives the rows of the next training passes their contexts (`None`: every row gets a zero
    /// update, as with an empty context): block inputs for every block, `[chunks, len, d]` each,
    /// and a `[rows, chunks]` selection (the rows must be the next passes' batch).
    pub fn set_contexts(&mut self, contexts: Option<BatchContexts>) -> Result<(), Error> {
        if let Some(c) = &contexts {
            let layers = self.sites.keys().map(|&(l, _)| l + 1).max().unwrap_or(0);
            let chunks = c.hidden.first().map(|h| h.dims()[0]);
            let d = self.sites.values().next().map(|site| site.a2.dims()[1]);
            let fits = c.hidden.len() == layers
                && c.hidden.iter().all(|h| Some(h.dims()[0]) == chunks && Some(h.dims()[2]) == d)
                && Some(c.select.dims()[1]) == chunks;
            if !fits {
                return Err(Error::InvalidArgument(format!(
                    "contexts of {} blocks of {:?} with a selection {:?} do not fit a generator of {layers} blocks",
                    c.hidden.len(),
                    c.hidden.first().map(|h| h.dims()),
                    c.select.dims()
                )));
            }
        }
        self.contexts = contexts;
        Ok(())
    }

    /// The block inputs of `tokens` (`batch` equal rows) under the base model, one
    /// `[batch, len, d_model]` per block, handed to `each` as they are computed.
    pub fn block_inputs(
        model: &Decoder,
        tokens: &[u32],
        batch: usize,
        each: &mut dyn FnMut(usize, &Tensor<3>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let len = tokens.len() / batch.max(1);
        if batch == 0 || len == 0 || len * batch != tokens.len() {
            return Err(Error::InvalidArgument(format!(
                "{} tokens do not form {batch} equal rows",
                tokens.len()
            )));
        }
        if len > model.config().context_len {
            return Err(Error::ContextOverflow { tokens: len, context: model.config().context_len });
        }
        let mut x = model.embed(tokens, batch)?;
        let positions = model.positions(0, len);
        let mut cache = model.new_cache(batch);
        for layer in 0..model.config().n_layers {
            each(layer, &x)?;
            x = model.block_forward(layer, x, &positions, &mut cache, &NoAdapters)?;
        }
        Ok(())
    }

    /// An empty context.
    pub fn empty_state(&self) -> ContextState {
        let size = self.config.r1 * self.config.r2;
        ContextState { tokens: 0, sums: self.sites.keys().map(|&site| (site, vec![0.0; size])).collect() }
    }

    /// Adds `tokens` to `state`, one window of [`GeneratorConfig::window`] tokens per pass of the
    /// base model (memory does not grow with the context); `cancel` is looked at between windows.
    pub async fn encode(
        &self,
        model: &Decoder,
        tokens: &[u32],
        state: &mut ContextState,
        cancel: &crate::control::CancelToken,
    ) -> Result<(), Error> {
        self.check_model(model.config())?;
        if state.sums.keys().ne(self.sites.keys())
            || state.sums.values().any(|s| s.len() != self.config.r1 * self.config.r2)
        {
            return Err(Error::InvalidArgument("the context state was made by another generator".into()));
        }
        let mut updated = state.clone();
        for window in tokens.chunks(self.config.window) {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let mut window_states = Vec::new();
            Self::block_inputs(model, window, 1, &mut |layer, hidden| {
                for (&(l, projection), site) in
                    self.sites.range((layer, Projection::Q)..=(layer, Projection::Down))
                {
                    debug_assert_eq!(l, layer);
                    window_states.push(((layer, projection), detached_site(site).states(untracked(hidden))));
                }
                Ok(())
            })?;
            for (site, states) in window_states {
                let values = read_f32(states).await?;
                let sum = updated.sums.get_mut(&site).expect("checked: the state has every site");
                sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
            }
            updated.tokens += window.len();
            crate::device::release_untracked_graphs(model.device());
        }
        if updated.sums.values().flatten().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(
                "the context's state is not finite: the generator is corrupt".into(),
            ));
        }
        *state = updated;
        Ok(())
    }

    /// The adapter generated from `state`: a LoRA of rank `R₂` on the targeted projections,
    /// `lora_A = S_nᵀ A₁`, `lora_B = B`, at LoRA's scale `α / R₂` (equal to the generator's).
    pub fn generate(&self, state: &ContextState, model: &Decoder) -> Result<LoraAdapter, Error> {
        self.check_model(model.config())?;
        let c = &self.config;
        let device = model.device();
        let mut pairs = BTreeMap::new();
        for (site_key, site) in &self.sites {
            let sum = state.sums.get(site_key).ok_or_else(|| {
                Error::InvalidArgument("the context state was made by another generator".into())
            })?;
            let states = tensor2(sum.clone(), [c.r1, c.r2], device).unsqueeze_dim::<3>(0);
            let normalised = frobenius_normalised(states).reshape([c.r1, c.r2]);
            let a = normalised.transpose().matmul(untracked(&site.a1));
            pairs.insert(*site_key, (a, untracked(&site.b)));
        }
        LoraAdapter::from_pairs(LoraConfig::new(c.r2, c.alpha, c.targets.clone()), pairs)
    }

    /// Refuses a model of another shape than the generator's, or whose context is shorter than
    /// the generator's window.
    fn check_model(&self, config: &DecoderConfig) -> Result<(), Error> {
        if self.config.window > config.context_len {
            return Err(Error::option(
                "window",
                self.config.window,
                format!("is longer than the model's context of {}", config.context_len),
            ));
        }
        let layers = self.sites.keys().map(|&(l, _)| l + 1).max().unwrap_or(0);
        let site = self.sites.values().next().expect("a generator has sites");
        if layers != config.n_layers || site.a2.dims()[1] != config.d_model {
            return Err(Error::InvalidArgument(format!(
                "the generator was made for a model of {layers} layers of width {}; this one has {} of width {}",
                site.a2.dims()[1],
                config.n_layers,
                config.d_model
            )));
        }
        Ok(())
    }

    /// Reads a saved generator made for `model` (every shape checked against the config it
    /// states and the model).
    pub fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        let bad = |message: String| super::tensors::bad(peft, message);
        let config: GeneratorConfig = serde_json::from_value(peft.config["generator"].clone())
            .map_err(|e| bad(format!("field 'generator' of the config: {e}")))?;
        config.check().map_err(|e| bad(e.to_string()))?;
        let c = model.config();
        let mut sites = BTreeMap::new();
        for layer in 0..c.n_layers {
            for &projection in &config.targets {
                let (out, inp) = c.projection_shape(projection);
                let shapes = [
                    [1, c.d_model],
                    [config.r1, inp],
                    [config.r1, c.d_model],
                    [config.r2, c.d_model],
                    [out, config.r2],
                ];
                let mut parts = Vec::with_capacity(5);
                for (part, shape) in PARTS.iter().zip(shapes) {
                    let values = super::tensors::read(peft, &param_name(layer, projection, part), &shape)?;
                    parts.push(tensor2(values, shape, model.device()));
                }
                let [norm, a1, a2, a3, b] = <[Tensor<2>; 5]>::try_from(parts).expect("five parts");
                sites.insert((layer, projection), Site { norm, a1, a2, a3, b });
            }
        }
        let expected = sites.len() * PARTS.len();
        if peft.tensors.tensors().len() != expected {
            return Err(bad(format!(
                "{} tensors, expected {expected}: made for a model of another depth?",
                peft.tensors.tensors().len()
            )));
        }
        Ok(Self { config, sites, contexts: None })
    }
}

fn param_name(layer: usize, projection: Projection, part: &str) -> String {
    format!("layers.{layer}.{}.{part}", projection.hf_name())
}

fn detached_site(site: &Site) -> Site {
    Site {
        norm: untracked(&site.norm),
        a1: untracked(&site.a1),
        a2: untracked(&site.a2),
        a3: untracked(&site.a3),
        b: untracked(&site.b),
    }
}

impl Adapters for Generator {
    fn linear_output(&self, layer: usize, projection: Projection, x: &Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        let (Some(site), Some(contexts)) = (self.sites.get(&(layer, projection)), &self.contexts) else {
            return y;
        };
        let chunk_states = site.states(contexts.hidden[layer].clone());
        let [chunks, r1, r2] = chunk_states.dims();
        let rows = contexts.select.dims()[0];
        // Each row's state is the sum of its chunks' states: one matmul with the selection.
        let row_states = contexts.select.clone().matmul(chunk_states.reshape([chunks, r1 * r2]));
        let normalised = frobenius_normalised(row_states.reshape([rows, r1, r2]));
        y + site.apply(x, normalised, self.config.scale())
    }
}

impl Method for Generator {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        self.sites
            .iter()
            .flat_map(|(&(layer, projection), site)| {
                PARTS.iter().zip(site.parts()).map(move |(part, t)| (param_name(layer, projection, part), t))
            })
            .collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        self.sites
            .iter_mut()
            .flat_map(|(&(layer, projection), site)| {
                PARTS
                    .iter()
                    .zip(site.parts_mut())
                    .map(move |(part, t)| (param_name(layer, projection, part), t))
            })
            .collect()
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn to_peft(&self, _config: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        let config = json!({
            "peft_type": SPEC.peft_type,
            "generator": self.config,
            "target_modules": self.config.targets.iter().map(|p| p.hf_name()).collect::<Vec<_>>(),
        });
        let mut tensors = Vec::new();
        for (name, t) in self.parameters() {
            tensors.push(saved(name, t.dims().to_vec(), &values(t)?));
        }
        Ok((config, tensors))
    }

    fn training_values(&self, _layer: usize, tokens: usize) -> usize {
        // Per targeted projection: A₁x, its mix with S_n and the update (the contexts' own
        // keys and values are per chunk and small beside them).
        self.config.targets.len() * tokens * (self.config.r1 + self.config.r2)
    }
}
