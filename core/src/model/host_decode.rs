//! Decode on the host without burn: one token through every block in plain loops over buffers
//! allocated once per session, the products in the quantized kernels on the engine's team, and
//! LoRA-style adapters as their low-rank changes ([`Adapters::host_low_rank`]). For a single
//! token burn's graph is ~70 small ops per layer (more with adapters), run one at a time on one
//! thread, each allocating its output — a fifth of a decode step of SmolLM2-135M on two threads
//! (`perf`). The burn graph stays the path for prefill, training, GPUs and adapters that act on
//! tokens in other ways; this one takes over after the prefill and equals it
//! (`tiny_model::host_decode_equals_the_burn_graph`).

use super::fused::{activate, rms_norm_row};
use super::kv_cache::KvCache;
use super::linear::{host_f32, QuantLinear};
use super::rope::rotate_pairs;
use super::sites::{Adapters, LowRankOutput, Projection};
use super::Decoder;
use crate::device::is_host;
use crate::error::Error;
use crate::parallel::for_each_chunk_mut_spinning;
use crate::quant::{f32_gemm, f32_gemm_acc, AccOperands, QuantMatrix};

/// Positions the cache grows by at least, once the expected ones are filled.
const GROWTH: usize = 128;

/// The decode state of one sequence: its keys and values on the host and the step's buffers.
pub struct HostDecoder<'m> {
    model: &'m Decoder,
    layers: Vec<HostBlock<'m>>,
    output_norm: Vec<f32>,
    output: HostLinear<'m>,
    cache: HostKvCache,
    buffers: Buffers,
}

/// A block's norm weights and projections, read once from the model's tensors.
struct HostBlock<'m> {
    attn_norm: Vec<f32>,
    q: HostLinear<'m>,
    k: HostLinear<'m>,
    v: HostLinear<'m>,
    o: HostLinear<'m>,
    ffn_norm: Vec<f32>,
    gate: HostLinear<'m>,
    up: HostLinear<'m>,
    down: HostLinear<'m>,
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
}

/// A projection as decode runs it: the frozen weight, its bias, the adapters' low-rank changes.
struct HostLinear<'m> {
    weight: &'m QuantMatrix,
    bias: Option<Vec<f32>>,
    low_rank: Vec<LowRank>,
}

/// A [`LowRankOutput`] with `B` transposed to `[rank, out]`, so that adding `B·(A·x)` runs
/// along whole rows of `out` values (rows of `B` are only `rank` long).
struct LowRank {
    a: Vec<f32>,
    b_transposed: Vec<f32>,
    scale: f32,
}

impl<'m> HostLinear<'m> {
    /// `linear` with the changes in `low_rank` that belong to it (checked against its shape).
    fn new(
        linear: &'m QuantLinear,
        layer: usize,
        projection: Option<Projection>,
        low_rank: &mut Vec<LowRankOutput>,
    ) -> Result<Self, Error> {
        let bias = linear.bias().map(|b| host_f32(b.clone())).transpose()?;
        let (ours, others) =
            low_rank.drain(..).partition(|o| Some(o.projection) == projection && o.layer == layer);
        *low_rank = others;
        let (rows, cols) = (linear.out_features(), linear.in_features());
        for o in &ours {
            let rank = o.a.len() / cols.max(1);
            if rank == 0 || o.a.len() != rank * cols || o.b.len() != rows * rank {
                return Err(Error::InvalidArgument(format!(
                    "a low-rank change of {:?} in layer {layer} has {} values in A and {} in B, not rank x {cols} and {rows} x rank",
                    o.projection,
                    o.a.len(),
                    o.b.len()
                )));
            }
        }
        let low_rank = ours
            .into_iter()
            .map(|o| {
                let rank = o.a.len() / cols;
                let b_transposed =
                    (0..rank).flat_map(|k| o.b.iter().skip(k).step_by(rank).copied()).collect();
                LowRank { a: o.a, b_transposed, scale: o.scale }
            })
            .collect();
        Ok(Self { weight: linear.weight(), bias, low_rank })
    }

    /// `y = W x (+ bias) (+ Σ scale·B·A·x)` for one token; `scratch` receives each `A·x`.
    fn apply(&self, x: &[f32], y: &mut [f32], scratch: &mut Vec<f32>) -> Result<(), Error> {
        self.weight.matmul(x, 1, y)?;
        if let Some(bias) = &self.bias {
            y.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
        }
        for change in &self.low_rank {
            let rank = change.a.len() / x.len();
            scratch.resize(rank, 0.0);
            f32_gemm(&change.a, x, x.len(), 1, scratch);
            scratch.iter_mut().for_each(|t| *t *= change.scale);
            f32_gemm_acc(
                AccOperands { a: scratch, lda: rank, w: &change.b_transposed, n: rank, tokens: 1 },
                y,
            );
        }
        Ok(())
    }
}

/// Keys and values of every layer, `[kv_heads, slots, head_dim]` each, so that a head's
/// positions are contiguous for attention. A global layer's slots are positions and grow to
/// `capacity`; a sliding-window layer has one slot per position of its window, position `p` in
/// slot `p % window` (attention does not care about the order of its keys).
struct HostKvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    windows: Vec<Option<usize>>,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    capacity: usize,
}

/// Everything a step writes, sized once (the attention buffer again when the cache grows).
struct Buffers {
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Per kv head: [`attend`]'s scores, probabilities and outputs; one slice so that kv heads
    /// go to the team's threads as chunks.
    heads: Vec<f32>,
    context: Vec<f32>,
    residual: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The sliding-window layers' angles, where they have their own RoPE base.
    local_cos: Vec<f32>,
    local_sin: Vec<f32>,
    logits: Vec<f32>,
    /// `A·x` of a low-rank change.
    low_rank: Vec<f32>,
}

impl<'m> HostDecoder<'m> {
    /// The decoder that continues the sequence in `cache` (batch 1), with room for `expected`
    /// cached positions in all (it grows beyond them up to the context), or `None` where this
    /// path does not apply: the model is on a GPU, `adapters` act on tokens other than by
    /// low-rank changes of the projections' outputs, or `cache` is empty (the graph's first pass
    /// writes the adapters' soft prompt, which this path does not).
    pub fn continuing(
        model: &'m Decoder,
        cache: &KvCache,
        adapters: &dyn Adapters,
        expected: usize,
    ) -> Result<Option<Self>, Error> {
        if !is_host(model.device()) || cache.batch() != 1 || cache.is_empty() {
            return Ok(None);
        }
        let Some(mut low_rank) = adapters.host_low_rank()? else { return Ok(None) };
        let c = &model.config;
        let capacity = expected.max(1).clamp(cache.len(), c.context_len);
        let mut layers = Vec::with_capacity(c.n_layers);
        for (layer, block) in model.blocks.iter().enumerate() {
            let mut linear = |p: Projection| HostLinear::new(block.linear(p), layer, Some(p), &mut low_rank);
            let optional = |norm: &Option<burn::tensor::Tensor<1>>| norm.clone().map(host_f32).transpose();
            layers.push(HostBlock {
                attn_norm: host_f32(block.attn_norm.clone())?,
                q: linear(Projection::Q)?,
                k: linear(Projection::K)?,
                v: linear(Projection::V)?,
                o: linear(Projection::O)?,
                ffn_norm: host_f32(block.ffn_norm.clone())?,
                gate: linear(Projection::Gate)?,
                up: linear(Projection::Up)?,
                down: linear(Projection::Down)?,
                post_attn_norm: optional(&block.post_attn_norm)?,
                post_ffn_norm: optional(&block.post_ffn_norm)?,
                q_norm: optional(&block.q_norm)?,
                k_norm: optional(&block.k_norm)?,
            });
        }
        if let Some(stray) = low_rank.first() {
            return Err(Error::InvalidArgument(format!(
                "a low-rank change of {:?} in layer {}, which this model of {} layers lacks",
                stray.projection, stray.layer, c.n_layers
            )));
        }
        let (kv, hd) = (c.n_kv_heads, c.head_dim);
        let mut host_cache = HostKvCache {
            keys: Vec::new(),
            values: Vec::new(),
            windows: (0..c.n_layers).map(|layer| c.parts.window(layer)).collect(),
            kv_heads: kv,
            head_dim: hd,
            len: cache.len(),
            capacity,
        };
        for layer in 0..c.n_layers {
            let slots = host_cache.slots(layer);
            let mut keys = vec![0.0; kv * slots * hd];
            let mut values = vec![0.0; kv * slots * hd];
            if let Some((k, v)) = cache.layer(layer) {
                // `[1, kv_heads, held, head_dim]`, positions `held_from..len`, into their slots.
                let (from, held) = (cache.held_from(layer), cache.len() - cache.held_from(layer));
                let first = from.max(cache.len().saturating_sub(slots));
                for (cached, host) in [(host_f32(k)?, &mut keys), (host_f32(v)?, &mut values)] {
                    for (cached, host) in
                        cached.chunks_exact(held * hd).zip(host.chunks_exact_mut(slots * hd))
                    {
                        for pos in first..cache.len() {
                            let row = &cached[(pos - from) * hd..][..hd];
                            host[host_cache.slot(layer, pos) * hd..][..hd].copy_from_slice(row);
                        }
                    }
                }
            }
            host_cache.keys.push(keys);
            host_cache.values.push(values);
        }
        let buffers = Buffers {
            x: vec![0.0; c.d_model],
            normed: vec![0.0; c.d_model],
            q: vec![0.0; c.n_heads * hd],
            k: vec![0.0; kv * hd],
            v: vec![0.0; kv * hd],
            heads: vec![0.0; kv * attention_chunk(host_cache.widest(), hd, c.n_heads / kv)],
            context: vec![0.0; c.n_heads * hd],
            residual: vec![0.0; c.d_model],
            gate: vec![0.0; c.ffn_dim],
            up: vec![0.0; c.ffn_dim],
            cos: vec![0.0; hd / 2],
            sin: vec![0.0; hd / 2],
            local_cos: vec![0.0; hd / 2],
            local_sin: vec![0.0; hd / 2],
            logits: vec![0.0; c.vocab_size],
            low_rank: Vec::new(),
        };
        Ok(Some(Self {
            model,
            layers,
            output_norm: host_f32(model.output_norm.clone())?,
            output: HostLinear::new(&model.output, 0, None, &mut Vec::new())?,
            cache: host_cache,
            buffers,
        }))
    }

    /// Positions cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.cache.len
    }

    pub fn is_empty(&self) -> bool {
        self.cache.len == 0
    }

    /// Runs `token` at the next position and returns the next-token logits (`vocab_size`).
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        let c = &self.model.config;
        if token as usize >= c.vocab_size {
            return Err(Error::InvalidArgument(format!(
                "token id {token} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let pos = self.cache.len;
        if pos >= c.context_len {
            return Err(Error::ContextOverflow { tokens: pos + 1, context: c.context_len });
        }
        if pos == self.cache.capacity {
            let capacity = (2 * pos).next_multiple_of(GROWTH).min(c.context_len);
            self.cache.grow(capacity);
            let chunk = attention_chunk(self.cache.widest(), c.head_dim, c.n_heads / c.n_kv_heads);
            self.buffers.heads = vec![0.0; c.n_kv_heads * chunk];
        }
        let b = &mut self.buffers;
        self.model.embed_rows(&[token], &mut b.x)?;
        self.model.rope.angles(pos, &mut b.cos, &mut b.sin);
        if let Some(local) = &self.model.local_rope {
            local.angles(pos, &mut b.local_cos, &mut b.local_sin);
        }
        let (eps, hd) = (c.rms_eps, c.head_dim);
        let head_norm = |x: &mut [f32], weight: &Option<Vec<f32>>, scratch: &mut [f32]| {
            let Some(weight) = weight else { return };
            for head in x.chunks_exact_mut(hd) {
                rms_norm_row(head, weight, eps, &mut scratch[..hd]);
                head.copy_from_slice(&scratch[..hd]);
            }
        };
        let post_norm = |y: &mut [f32], weight: &Option<Vec<f32>>, scratch: &mut [f32]| {
            let Some(weight) = weight else { return };
            rms_norm_row(y, weight, eps, scratch);
            y.copy_from_slice(scratch);
        };
        for (layer, block) in self.layers.iter().enumerate() {
            rms_norm_row(&b.x, &block.attn_norm, eps, &mut b.normed);
            block.q.apply(&b.normed, &mut b.q, &mut b.low_rank)?;
            block.k.apply(&b.normed, &mut b.k, &mut b.low_rank)?;
            block.v.apply(&b.normed, &mut b.v, &mut b.low_rank)?;
            head_norm(&mut b.q, &block.q_norm, &mut b.normed);
            head_norm(&mut b.k, &block.k_norm, &mut b.normed);
            let local = self.cache.windows[layer].is_some() && self.model.local_rope.is_some();
            let (cos, sin) = if local { (&b.local_cos, &b.local_sin) } else { (&b.cos, &b.sin) };
            rotate_pairs(&mut b.q, cos, sin);
            rotate_pairs(&mut b.k, cos, sin);
            self.cache.store(layer, pos, &b.k, &b.v);
            attend(&self.cache, layer, pos + 1, &b.q, &mut b.heads);
            let groups = c.n_heads / c.n_kv_heads;
            let chunk = attention_chunk(self.cache.widest(), hd, groups);
            for (kv, out) in b.heads.chunks_exact(chunk).zip(b.context.chunks_exact_mut(groups * hd)) {
                out.copy_from_slice(&kv[chunk - out.len()..]);
            }
            block.o.apply(&b.context, &mut b.residual, &mut b.low_rank)?;
            post_norm(&mut b.residual, &block.post_attn_norm, &mut b.normed);
            b.x.iter_mut().zip(&b.residual).for_each(|(x, r)| *x += r);

            rms_norm_row(&b.x, &block.ffn_norm, eps, &mut b.normed);
            block.gate.apply(&b.normed, &mut b.gate, &mut b.low_rank)?;
            block.up.apply(&b.normed, &mut b.up, &mut b.low_rank)?;
            for (g, u) in b.gate.iter_mut().zip(&b.up) {
                *g = activate(c.parts.activation, *g) * u;
            }
            block.down.apply(&b.gate, &mut b.residual, &mut b.low_rank)?;
            post_norm(&mut b.residual, &block.post_ffn_norm, &mut b.normed);
            b.x.iter_mut().zip(&b.residual).for_each(|(x, r)| *x += r);
        }
        self.cache.len += 1;
        rms_norm_row(&b.x, &self.output_norm, c.rms_eps, &mut b.normed);
        self.output.apply(&b.normed, &mut b.logits, &mut b.low_rank)?;
        Ok(&b.logits)
    }
}

impl HostKvCache {
    /// Slots per kv head of `layer`.
    fn slots(&self, layer: usize) -> usize {
        self.windows[layer].unwrap_or(self.capacity)
    }

    /// The most slots any layer has (the stride of [`attend`]'s buffer).
    fn widest(&self) -> usize {
        (0..self.windows.len()).map(|layer| self.slots(layer)).max().unwrap_or(self.capacity)
    }

    fn slot(&self, layer: usize, pos: usize) -> usize {
        self.windows[layer].map_or(pos, |w| pos % w)
    }

    /// Moves every global layer's rows to a layout of `capacity` positions.
    fn grow(&mut self, capacity: usize) {
        let head_dim = self.head_dim;
        let (old, live) = (self.capacity * head_dim, self.len * head_dim);
        for (layer, window) in self.windows.iter().enumerate() {
            if window.is_some() {
                continue;
            }
            for cache in [&mut self.keys[layer], &mut self.values[layer]] {
                let mut grown = vec![0.0; self.kv_heads * capacity * head_dim];
                for (from, to) in cache.chunks_exact(old).zip(grown.chunks_exact_mut(capacity * head_dim)) {
                    to[..live].copy_from_slice(&from[..live]);
                }
                *cache = grown;
            }
        }
        self.capacity = capacity;
    }

    fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (head_dim, slots, slot) = (self.head_dim, self.slots(layer), self.slot(layer, pos));
        for (cache, new) in [(&mut self.keys[layer], k), (&mut self.values[layer], v)] {
            for (head, row) in new.chunks_exact(head_dim).enumerate() {
                let at = (head * slots + slot) * head_dim;
                cache[at..at + head_dim].copy_from_slice(row);
            }
        }
    }
}

/// Attention of one token's query heads `q` over the first `len` cached positions of `layer`
/// (those of them in its window),
/// kv head by kv head on the team's threads: the `groups` query heads that share a kv head read
/// its keys and values once, as one product of `groups` tokens (at 2048 positions, reading them
/// once per query head made attention bound by cache bandwidth). Each kv head's chunk of `out`
/// ([`attention_chunk`] values) holds its raw scores `[len, groups]`, their probabilities
/// `[groups, capacity]`, then the query heads' outputs `[groups, head_dim]`.
fn attend(cache: &HostKvCache, layer: usize, len: usize, q: &[f32], out: &mut [f32]) {
    let (head_dim, capacity) = (cache.head_dim, cache.widest());
    let groups = q.len() / head_dim / cache.kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let span = cache.slots(layer) * head_dim;
    let len = cache.windows[layer].map_or(len, |w| len.min(w));
    for_each_chunk_mut_spinning(out, attention_chunk(capacity, head_dim, groups), |kv, chunk| {
        let (raw, rest) = chunk.split_at_mut(groups * capacity);
        let (probabilities, context) = rest.split_at_mut(groups * capacity);
        let keys = &cache.keys[layer][kv * span..][..len * head_dim];
        let values = &cache.values[layer][kv * span..][..len * head_dim];
        let queries = &q[kv * groups * head_dim..][..groups * head_dim];
        f32_gemm(keys, queries, head_dim, groups, &mut raw[..len * groups]);
        for (g, p) in probabilities.chunks_exact_mut(capacity).enumerate() {
            let p = &mut p[..len];
            p.iter_mut().enumerate().for_each(|(pos, p)| *p = raw[pos * groups + g] * scale);
            softmax(p);
        }
        context.fill(0.0);
        let ops = AccOperands { a: probabilities, lda: capacity, w: values, n: len, tokens: groups };
        f32_gemm_acc(ops, context);
    });
}

/// Values of [`attend`]'s buffer per kv head.
fn attention_chunk(capacity: usize, head_dim: usize, groups: usize) -> usize {
    groups * (2 * capacity + head_dim)
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inverse = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inverse);
}
