//! The decoder every supported family runs: RMSNorm, RoPE, grouped-query attention with a KV
//! cache, a gated MLP, tied or separate output head, and the [`Parts`] a family adds (scaled
//! embeddings, sandwich norms, q/k norms, sliding-window layers with their own RoPE base).
//! Everything between the frozen quantized linears runs as burn ops (on the CPU the fused ones
//! of [`super::fused`]), so the same graph carries gradients to adapters.
//!
//! [`Parts`]: super::architecture::Parts

use burn::tensor::{Device, Tensor, TensorData};

use super::config::DecoderConfig;
use super::fused::{self, graph::causal_mask, rms_norm};
use super::kv_cache::KvCache;
use super::linear::{host_f32, QuantLinear};
use super::rope::{self, Rope, RopeTables};
use super::sites::{Adapters, NoAdapters, Projection};
use crate::device::is_host;
use crate::error::Error;
use crate::quant::QuantMatrix;

/// Tokens per forward pass of a long input: bounds attention memory at `groups x chunk x context`
/// scores per layer while keeping the quantized matmuls in their efficient many-token path.
const PREFILL_CHUNK: usize = 256;

pub struct Block {
    pub attn_norm: Tensor<1>,
    pub attn_q: QuantLinear,
    pub attn_k: QuantLinear,
    pub attn_v: QuantLinear,
    pub attn_output: QuantLinear,
    pub ffn_norm: Tensor<1>,
    pub ffn_gate: QuantLinear,
    pub ffn_up: QuantLinear,
    pub ffn_down: QuantLinear,
    /// Sandwich norms (`Parts::sandwich_norms`): on attention's and the MLP's outputs.
    pub post_attn_norm: Option<Tensor<1>>,
    pub post_ffn_norm: Option<Tensor<1>>,
    /// Per-head query and key norms (`Parts::qk_norms`), `head_dim` weights in pair order.
    pub q_norm: Option<Tensor<1>>,
    pub k_norm: Option<Tensor<1>>,
}

pub struct Decoder {
    pub(super) config: DecoderConfig,
    pub(super) device: Device,
    pub(super) token_embedding: QuantMatrix,
    /// The head; the token embedding itself when they are tied (the embedding lookup reads the
    /// host blocks, so a GPU holds only the head's copy).
    pub(super) output: QuantLinear,
    pub(super) output_norm: Tensor<1>,
    pub(super) blocks: Vec<Block>,
    pub(super) rope: Rope,
    /// The sliding-window layers' rotation, where they have their own base.
    pub(super) local_rope: Option<Rope>,
}

impl Decoder {
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn token_embedding(&self) -> &QuantMatrix {
        &self.token_embedding
    }

    pub fn output(&self) -> &QuantMatrix {
        self.output.weight()
    }

    /// The model with decode's products on integer activations where the weights' formats and
    /// the CPU have kernels for them (llama.cpp's way; prefill, training and GPUs are unchanged).
    pub fn with_integer_activations(self) -> Self {
        self.with_weight_kernels(QuantMatrix::with_integer_activations)
    }

    /// The model with its multi-token products (prefill, training's forward and backward) on the
    /// CPU's bf16 tile unit where it has one (see [`QuantMatrix::with_bf16_products`]; decode
    /// and GPUs are unchanged).
    pub fn with_bf16_products(self) -> Self {
        self.with_weight_kernels(QuantMatrix::with_bf16_products)
    }

    /// `choose` applied to the CPU kernels of every frozen product (the token embedding is only
    /// looked up).
    fn with_weight_kernels(mut self, choose: impl Fn(QuantMatrix) -> QuantMatrix) -> Self {
        self.output.choose_kernels(&choose);
        for block in &mut self.blocks {
            for linear in [
                &mut block.attn_q,
                &mut block.attn_k,
                &mut block.attn_v,
                &mut block.attn_output,
                &mut block.ffn_gate,
                &mut block.ffn_up,
                &mut block.ffn_down,
            ] {
                linear.choose_kernels(&choose);
            }
        }
        self
    }

    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(&self.config, batch)
    }

    /// Runs `tokens` (`batch` rows of equal length, row-major) after what `cache` already holds
    /// and returns the final-normed hidden states `[batch, len, d_model]`. Long inputs go through
    /// in chunks, so attention scores stay `chunk x context` rather than `len x len`.
    pub fn forward(&self, tokens: &[u32], batch: usize, cache: &mut KvCache) -> Result<Tensor<3>, Error> {
        self.forward_adapted(tokens, batch, cache, &NoAdapters)
    }

    /// [`forward`](Self::forward) with `adapters` acting at their sites. An empty cache first
    /// takes the adapters' soft prompt (key/value prefixes, then virtual tokens), once: the
    /// cache holds it for every later pass of the session.
    pub fn forward_adapted(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut KvCache,
        adapters: &dyn Adapters,
    ) -> Result<Tensor<3>, Error> {
        let c = &self.config;
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) || batch != cache.batch() {
            return Err(Error::InvalidArgument(format!(
                "{} tokens do not form {batch} equal rows for a cache of batch {}",
                tokens.len(),
                cache.batch()
            )));
        }
        if !cache.fits(c) {
            return Err(Error::InvalidArgument("the KV cache was made for another model".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        if cache.is_empty() {
            self.prime(cache, adapters)?;
        }
        let len = tokens.len() / batch;
        cache.check_room(len)?;
        let mut hidden = Vec::with_capacity(len.div_ceil(PREFILL_CHUNK));
        for start in (0..len).step_by(PREFILL_CHUNK) {
            let end = (start + PREFILL_CHUNK).min(len);
            let chunk: Vec<u32> =
                tokens.chunks_exact(len).flat_map(|row| &row[start..end]).copied().collect();
            let x = adapters.token_embeddings(cache.len() - cache.prompt_len(), self.embed(&chunk, batch)?);
            hidden.push(self.final_norm(self.run_blocks(x, cache, adapters)?));
        }
        Ok(if hidden.len() == 1 { hidden.remove(0) } else { Tensor::cat(hidden, 1) })
    }

    /// Every block on `x: [batch, len, d_model]` after what `cache` holds, advancing it.
    fn run_blocks(
        &self,
        mut x: Tensor<3>,
        cache: &mut KvCache,
        adapters: &dyn Adapters,
    ) -> Result<Tensor<3>, Error> {
        let len = x.dims()[1];
        let positions = self.positions(cache.len(), len);
        for layer in 0..self.blocks.len() {
            x = self.block_forward(layer, x, &positions, cache, adapters)?;
        }
        cache.advance(len);
        Ok(x)
    }

    /// Writes the adapters' soft prompt into the empty `cache`: their key/value prefixes, then
    /// their virtual tokens run through every block.
    fn prime(&self, cache: &mut KvCache, adapters: &dyn Adapters) -> Result<(), Error> {
        self.write_prefix(cache, None, adapters)?;
        if let Some(x) = self.virtual_input(cache.batch(), adapters)? {
            cache.check_room(x.dims()[1])?;
            self.run_blocks(x, cache, adapters)?;
        }
        cache.mark_prompt();
        Ok(())
    }

    /// Writes the adapters' key/value prefixes of every layer (`only: Some(layer)`: of that
    /// layer alone) into the empty `cache` and returns their length (0 without any).
    pub fn write_prefix(
        &self,
        cache: &mut KvCache,
        only: Option<usize>,
        adapters: &dyn Adapters,
    ) -> Result<usize, Error> {
        let c = &self.config;
        let batch = cache.batch();
        let mut len = None;
        for layer in 0..c.n_layers {
            let prefix = adapters.prefix_kv(layer);
            let this = prefix.as_ref().map_or(0, |(k, _)| k.dims()[0]);
            let first = *len.get_or_insert(this);
            if first != this {
                return Err(Error::InvalidArgument(format!(
                    "the key/value prefix of layer {layer} has {this} positions, that of layer 0 {first}"
                )));
            }
            let Some((k, v)) = prefix.filter(|_| only.is_none_or(|l| l == layer)) else { continue };
            let expected = [this, c.n_kv_heads, c.head_dim];
            if k.dims() != expected || v.dims() != expected {
                return Err(Error::InvalidArgument(format!(
                    "the key/value prefix of layer {layer} is {:?}/{:?}, expected {expected:?} for this model",
                    k.dims(),
                    v.dims()
                )));
            }
            cache.check_room(this)?;
            let per_sequence = |t: Tensor<3>| {
                let t = t.swap_dims(0, 1).unsqueeze_dim::<4>(0);
                if batch == 1 {
                    t
                } else {
                    t.expand([batch, c.n_kv_heads, this, c.head_dim])
                }
            };
            cache.append(layer, per_sequence(k), per_sequence(v));
        }
        let len = len.unwrap_or(0);
        cache.advance(len);
        Ok(len)
    }

    /// The adapters' virtual tokens as the input of `batch` sequences, `[batch, len, d_model]`.
    pub fn virtual_input(&self, batch: usize, adapters: &dyn Adapters) -> Result<Option<Tensor<3>>, Error> {
        let Some(tokens) = adapters.virtual_tokens() else { return Ok(None) };
        let [len, d] = tokens.dims();
        if d != self.config.d_model || len == 0 {
            return Err(Error::InvalidArgument(format!(
                "{len} virtual tokens of width {d} for a model of width {}",
                self.config.d_model
            )));
        }
        let x = tokens.unsqueeze_dim::<3>(0);
        Ok(Some(if batch == 1 { x } else { x.expand([batch, len, d]) }))
    }

    /// The token embeddings `[batch, len, d_model]` of `tokens` (`batch` equal rows), scaled
    /// where the family scales them.
    pub fn embed(&self, tokens: &[u32], batch: usize) -> Result<Tensor<3>, Error> {
        let d = self.config.d_model;
        let mut embedded = vec![0.0; tokens.len() * d];
        self.embed_rows(tokens, &mut embedded)?;
        Ok(Tensor::from_data(TensorData::new(embedded, [batch, tokens.len() / batch, d]), &self.device))
    }

    /// [`embed`](Self::embed) into a host buffer of `tokens.len() x d_model` values.
    pub fn embed_rows(&self, tokens: &[u32], out: &mut [f32]) -> Result<(), Error> {
        self.token_embedding.get_rows(tokens, out)?;
        if self.config.parts.scaled_embeddings {
            let scale = (self.config.d_model as f32).sqrt();
            out.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(())
    }

    /// What every block of a pass over positions `start..start + len` shares.
    pub fn positions(&self, start: usize, len: usize) -> Positions {
        let groups = self.config.n_heads / self.config.n_kv_heads;
        Positions {
            rope: self.rope.tables(start, len, &self.device),
            local_rope: self.local_rope.as_ref().map(|rope| rope.tables(start, len, &self.device)),
            mask: (len > 1 && !is_host(&self.device))
                .then(|| causal_mask(start, len, groups, None, &self.device)),
        }
    }

    /// Block `layer` on `x: [batch, len, d_model]` at `positions`, its keys and values appended
    /// to `cache` (whose length the caller advances once every block has run).
    pub fn block_forward(
        &self,
        layer: usize,
        x: Tensor<3>,
        positions: &Positions,
        cache: &mut KvCache,
        adapters: &dyn Adapters,
    ) -> Result<Tensor<3>, Error> {
        let attention = Attention { config: &self.config, positions, adapters };
        self.blocks[layer].forward(x, &attention, layer, cache)
    }

    /// The final RMSNorm, whose output the head turns into logits.
    pub fn final_norm(&self, x: Tensor<3>) -> Tensor<3> {
        rms_norm(x, &self.output_norm, self.config.rms_eps)
    }

    /// Logits `[rows, vocab]` (row-major, on the host) of hidden states `[batch, len, d_model]`
    /// at positions `positions` of each row (e.g. `len-1..len` for the next token).
    pub fn logits(&self, hidden: Tensor<3>, positions: core::ops::Range<usize>) -> Result<Vec<f32>, Error> {
        host_f32(self.device_logits(hidden, positions)?)
    }

    /// [`logits`](Self::logits) as a tensor `[batch, positions, vocab]` on the model's device.
    pub fn device_logits(
        &self,
        hidden: Tensor<3>,
        positions: core::ops::Range<usize>,
    ) -> Result<Tensor<3>, Error> {
        let [b, _, d] = hidden.dims();
        self.output.forward(hidden.slice([0..b, positions, 0..d]))
    }

    /// The head as a linear layer, for losses computed with burn ops.
    pub fn head(&self) -> &QuantLinear {
        &self.output
    }
}

/// RoPE tables and causal mask of one pass over a range of positions.
pub struct Positions {
    rope: RopeTables,
    /// The sliding-window layers' tables, where they rotate with their own base.
    local_rope: Option<RopeTables>,
    /// For the burn graph's global attention (GPUs); the fused op on the host masks as it goes,
    /// and a sliding-window layer's mask depends on how many keys its cache kept.
    mask: Option<Tensor<4>>,
}

/// What every layer's attention shares within one forward pass.
struct Attention<'a> {
    config: &'a DecoderConfig,
    positions: &'a Positions,
    adapters: &'a dyn Adapters,
}

impl Block {
    fn forward(
        &self,
        x: Tensor<3>,
        attn: &Attention,
        layer: usize,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, Error> {
        let c = attn.config;
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let groups = h / kv;
        let window = c.parts.window(layer);
        let positions = attn.positions;
        let tables = match (window, &positions.local_rope) {
            (Some(_), Some(local)) => local,
            _ => &positions.rope,
        };

        let normed = rms_norm(x.clone(), &self.attn_norm, c.rms_eps);
        let heads = |y: Tensor<3>, n: usize, norm: &Option<Tensor<1>>| {
            let y = match norm {
                Some(weight) => rms_norm(y.reshape([b, t * n, hd]), weight, c.rms_eps),
                None => y,
            };
            y.reshape([b, t, n, hd]).swap_dims(1, 2)
        };
        let linear = |projection: Projection, x: Tensor<3>| -> Result<Tensor<3>, Error> {
            let x = attn.adapters.linear_input(layer, projection, x);
            let y = self.linear(projection).forward(x.clone())?;
            Ok(attn.adapters.linear_output(layer, projection, &x, y))
        };
        let q = rope::apply(heads(linear(Projection::Q, normed.clone())?, h, &self.q_norm), tables);
        let k = rope::apply(heads(linear(Projection::K, normed.clone())?, kv, &self.k_norm), tables);
        let v = heads(linear(Projection::V, normed)?, kv, &None);
        let (keys, values) = cache.append(layer, k, v);

        // Query heads h = kv*groups + g share kv head `kv`: fold the group into the query rows
        // instead of repeating keys and values `groups` times.
        let q = q.reshape([b, kv, groups * t, hd]);
        let mask = if window.is_none() { positions.mask.as_ref() } else { None };
        let context = fused::attention(q, keys, values, groups, window, mask);
        let context = context.reshape([b, h, t, hd]).swap_dims(1, 2).reshape([b, t, h * hd]);
        let x = x + post_norm(linear(Projection::O, context)?, &self.post_attn_norm, c.rms_eps);

        let normed = rms_norm(x.clone(), &self.ffn_norm, c.rms_eps);
        let gated = fused::gated(
            c.parts.activation,
            linear(Projection::Gate, normed.clone())?,
            linear(Projection::Up, normed)?,
        );
        Ok(x + post_norm(linear(Projection::Down, gated)?, &self.post_ffn_norm, c.rms_eps))
    }
}

/// A sublayer's output through its sandwich norm, where the family has one.
fn post_norm(y: Tensor<3>, norm: &Option<Tensor<1>>, eps: f32) -> Tensor<3> {
    match norm {
        Some(weight) => rms_norm(y, weight, eps),
        None => y,
    }
}

impl Block {
    pub fn linear(&self, projection: Projection) -> &QuantLinear {
        match projection {
            Projection::Q => &self.attn_q,
            Projection::K => &self.attn_k,
            Projection::V => &self.attn_v,
            Projection::O => &self.attn_output,
            Projection::Gate => &self.ffn_gate,
            Projection::Up => &self.ffn_up,
            Projection::Down => &self.ffn_down,
        }
    }
}
