//! Key/value cache of one generation session: per layer `[batch, kv_heads, capacity, head_dim]`
//! tensors that grow geometrically, so a short chat does not reserve the whole context. A
//! sliding-window layer keeps only the positions its next query can see (its window, plus up to
//! a growth step before it is trimmed), so its memory stops growing with the context.

use burn::tensor::{Device, Tensor};

use super::config::DecoderConfig;
use crate::error::Error;

/// Growth step: capacities are multiples of it, capped at the model's context.
const CHUNK: usize = 128;

pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Each layer's sliding window (`None`: it keeps every position).
    windows: Vec<Option<usize>>,
    /// The first position each layer still holds (its tensors start there).
    starts: Vec<usize>,
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    max_len: usize,
    /// Leading positions that hold the adapters' soft prompt rather than tokens.
    prompt_len: usize,
}

impl KvCache {
    pub fn new(config: &DecoderConfig, batch: usize) -> Self {
        Self {
            layers: (0..config.n_layers).map(|_| None).collect(),
            windows: (0..config.n_layers).map(|layer| config.parts.window(layer)).collect(),
            starts: vec![0; config.n_layers],
            batch,
            kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            len: 0,
            max_len: config.context_len,
            prompt_len: 0,
        }
    }

    /// Tokens already in the cache (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Leading positions holding a soft prompt (key/value prefixes and virtual tokens).
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Marks everything cached so far as the soft prompt.
    pub fn mark_prompt(&mut self) {
        self.prompt_len = self.len;
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Whether this cache was made for a model of this shape.
    pub fn fits(&self, config: &DecoderConfig) -> bool {
        self.layers.len() == config.n_layers
            && self.kv_heads == config.n_kv_heads
            && self.head_dim == config.head_dim
            && self.max_len == config.context_len
            && self.windows.iter().enumerate().all(|(layer, w)| *w == config.parts.window(layer))
    }

    /// Forgets everything after the first `len` tokens (e.g. to reuse a shared prompt prefix).
    /// Cutting into the soft prompt, or back past positions a sliding-window layer has
    /// dropped, empties the cache, so that the next pass writes everything again.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let dropped_needed = self
            .windows
            .iter()
            .zip(&self.starts)
            .any(|(w, &start)| w.is_some_and(|w| start > 0 && self.len < start + w - 1));
        if self.len < self.prompt_len || dropped_needed {
            (self.len, self.prompt_len) = (0, 0);
            self.starts.fill(0);
        }
    }

    /// Checks that `new_tokens` more fit in the context.
    pub fn check_room(&self, new_tokens: usize) -> Result<(), Error> {
        if self.len + new_tokens > self.max_len {
            return Err(Error::ContextOverflow { tokens: self.len + new_tokens, context: self.max_len });
        }
        Ok(())
    }

    /// Stores `keys`/`values` (`[batch, kv_heads, len, head_dim]`) for `layer` at the current
    /// position and returns all cached keys and values up to and including them.
    /// A sliding-window layer returns the positions it holds, the last ones.
    pub fn append(&mut self, layer: usize, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let new = keys.dims()[2];
        let held = self.len - self.starts[layer];
        let end = held + new;
        let (b, h, d) = (self.batch, self.kv_heads, self.head_dim);
        let device = keys.device();
        let (cache_k, cache_v) = match self.layers[layer].take() {
            Some((k, v)) if k.dims()[2] >= end => (k, v),
            old => {
                let current = old.as_ref().map_or(0, |(k, _)| k.dims()[2]);
                let capacity = (end.max(current * 2).div_ceil(CHUNK) * CHUNK).min(self.max_len).max(end);
                grow(old, [b, h, capacity, d], 0..held, &device)
            }
        };
        let at = [0..b, 0..h, held..end, 0..d];
        let cache_k = cache_k.slice_assign(at.clone(), keys);
        let cache_v = cache_v.slice_assign(at, values);
        let live = [0..b, 0..h, 0..end, 0..d];
        let out = (cache_k.clone().slice(live.clone()), cache_v.clone().slice(live));
        self.layers[layer] = Some((cache_k, cache_v));
        out
    }

    /// The cached keys and values of `layer` (`[batch, kv_heads, held, head_dim]`, positions
    /// [`held_from`](Self::held_from)`..len`), if any.
    pub fn layer(&self, layer: usize) -> Option<(Tensor<4>, Tensor<4>)> {
        let (k, v) = self.layers.get(layer)?.as_ref()?;
        let live = [0..self.batch, 0..self.kv_heads, 0..self.len - self.starts[layer], 0..self.head_dim];
        Some((k.clone().slice(live.clone()), v.clone().slice(live)))
    }

    /// The first position `layer` still holds.
    pub fn held_from(&self, layer: usize) -> usize {
        self.starts[layer]
    }

    /// Marks the tokens appended to every layer in this forward pass as cached, and lets each
    /// sliding-window layer drop what no later query sees once it holds a growth step more.
    pub fn advance(&mut self, new_tokens: usize) {
        self.len += new_tokens;
        for layer in 0..self.layers.len() {
            let Some(window) = self.windows[layer] else { continue };
            let (keep, held) = (window - 1, self.len - self.starts[layer]);
            if held <= keep + CHUNK {
                continue;
            }
            if let Some((k, v)) = self.layers[layer].take() {
                let device = k.device();
                let capacity = (keep + CHUNK).div_ceil(CHUNK) * CHUNK;
                let shape = [self.batch, self.kv_heads, capacity, self.head_dim];
                self.layers[layer] = Some(grow(Some((k, v)), shape, held - keep..held, &device));
            }
            self.starts[layer] = self.len - keep;
        }
    }
}

/// Fresh tensors of `shape` that start with the positions `keep` of `old`.
fn grow(
    old: Option<(Tensor<4>, Tensor<4>)>,
    shape: [usize; 4],
    keep: core::ops::Range<usize>,
    device: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let fresh = || Tensor::<4>::zeros(shape, device);
    match old {
        Some((k, v)) if !keep.is_empty() => {
            let [b, h, _, d] = shape;
            let from = [0..b, 0..h, keep.clone(), 0..d];
            let to = [0..b, 0..h, 0..keep.len(), 0..d];
            (fresh().slice_assign(to.clone(), k.slice(from.clone())), fresh().slice_assign(to, v.slice(from)))
        }
        _ => (fresh(), fresh()),
    }
}
