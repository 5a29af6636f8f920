//! Rotary position embedding in GGUF's layout: adjacent pairs (2i, 2i+1) of each head rotate by
//! `pos * inv_freq[i]`. HF checkpoints rotate halves instead; the safetensors loader permutes their
//! q/k rows into this layout, so there is one RoPE for both.

use burn::tensor::{Device, Tensor, TensorData};

use super::config::{DecoderConfig, RopeScaling};

pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rope {
    /// The rotation of `head_dim`-wide heads with base `theta`, stretched by `scaling`.
    pub fn new(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Self {
        let d = head_dim;
        // f32 like the reference implementations, so positions round the same way.
        let mut inv_freq: Vec<f32> =
            (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32)).collect();
        match scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::PerFrequency { factors } => {
                inv_freq.iter_mut().zip(factors).for_each(|(f, s)| *f /= s)
            }
        }
        Self { inv_freq, head_dim: d }
    }

    /// The rotations of `config`'s layers: the global one, and the local layers' own where a
    /// sliding window gives them another base (unscaled, as llama.cpp and transformers do).
    pub fn for_layers(config: &DecoderConfig) -> (Self, Option<Self>) {
        let global = Self::new(config.head_dim, config.rope_theta, &config.rope_scaling);
        let local = config
            .parts
            .sliding_window
            .map(|w| Self::new(config.head_dim, w.local_rope_theta, &RopeScaling::None));
        (global, local)
    }

    /// cos and sin tables for positions `start..start+len`, each angle repeated for both
    /// members of its pair and the sine signed for [`apply`]'s pair swap, shaped
    /// `[1, 1, len, head_dim]` to broadcast over `[batch, heads, len, head_dim]`.
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> RopeTables {
        let d = self.head_dim;
        let mut cos = Vec::with_capacity(len * d);
        let mut sin = Vec::with_capacity(len * d);
        for pos in start..start + len {
            for &f in &self.inv_freq {
                let (s, c) = ((pos as f32 * f) as f64).sin_cos();
                cos.extend([c as f32; 2]);
                sin.extend([-s as f32, s as f32]);
            }
        }
        let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, len, d]), device);
        RopeTables { cos: table(cos), signed_sin: table(sin) }
    }
}

impl Rope {
    /// cos and sin of each pair's angle at position `pos` (`head_dim / 2` each), rounded as in
    /// [`tables`](Self::tables), for [`rotate_pairs`].
    pub fn angles(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for ((f, c), s) in self.inv_freq.iter().zip(cos.iter_mut()).zip(sin.iter_mut()) {
            let (sine, cosine) = ((pos as f32 * f) as f64).sin_cos();
            (*c, *s) = (cosine as f32, sine as f32);
        }
    }
}

/// [`apply`] on the host for one position: every `head_dim`-sized head of `x` rotated pair by
/// pair, `(a, b) -> (a cos - b sin, b cos + a sin)`, with [`Rope::angles`]' `cos` and `sin`.
pub fn rotate_pairs(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(2 * cos.len()) {
        for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (pair[0], pair[1]);
            // As `apply` rounds: the two products first, then their sum.
            pair[0] = a * c + b * -s;
            pair[1] = b * c + a * s;
        }
    }
}

pub struct RopeTables {
    cos: Tensor<4>,
    /// `-sin` at the first member of each pair, `sin` at the second.
    signed_sin: Tensor<4>,
}

/// Rotates `x: [batch, heads, len, head_dim]`: each pair `(a, b)` becomes
/// `(a cos - b sin, b cos + a sin)`, i.e. `x cos + swap(x) signed_sin` where `swap` exchanges the
/// members of every pair (a fused op on the host, a burn graph elsewhere: `fused::rope`).
pub fn apply(x: Tensor<4>, tables: &RopeTables) -> Tensor<4> {
    super::fused::rope(x, &tables.cos, &tables.signed_sin)
}

/// Which way [`permute_rotary_rows`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOrder {
    /// From Hugging Face's rotate-half order to GGUF's adjacent pairs (loading).
    ToPairs,
    /// Back (saving, e.g. a PEFT adapter's `lora_B` for q/k).
    ToRotateHalf,
}

/// [`permute_rotary_rows`] of f32 values: `heads` blocks of `head_dim` rows of `row_len`.
pub fn permute_rotary_values(
    values: &[f32],
    heads: usize,
    head_dim: usize,
    row_len: usize,
    order: RowOrder,
) -> Vec<f32> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    permute_rotary_rows(&bytes, heads, head_dim, row_len * 4, order)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Reorders the output rows of a q or k projection (`heads * head_dim` rows of `row_bytes`).
/// HF keeps each head's rows as [first halves; second halves]; GGUF interleaves them, so that
/// row 2i+p of a head is HF row p*head_dim/2 + i. Rows move as bytes, whatever the dtype.
pub fn permute_rotary_rows(
    bytes: &[u8],
    heads: usize,
    head_dim: usize,
    row_bytes: usize,
    order: RowOrder,
) -> Vec<u8> {
    let half = head_dim / 2;
    let mut out = vec![0; bytes.len()];
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let pairs = (h * head_dim + 2 * i + p) * row_bytes;
                let rotate_half = (h * head_dim + p * half + i) * row_bytes;
                let (dst, src) = match order {
                    RowOrder::ToPairs => (pairs, rotate_half),
                    RowOrder::ToRotateHalf => (rotate_half, pairs),
                };
                out[dst..dst + row_bytes].copy_from_slice(&bytes[src..src + row_bytes]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::model::linear::host_f32;

    /// Pair `i` of position `pos` rotated by `pos * inv_freq[i]`, written out.
    fn rotated(x: &[f32], len: usize, start: usize, rope: &Rope, angle_sign: f32) -> Vec<f32> {
        let d = rope.head_dim;
        let mut out = x.to_vec();
        for (row, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let t = (row.as_ptr() as usize - x.as_ptr() as usize) / 4 / d % len;
            for (i, f) in rope.inv_freq.iter().enumerate() {
                let (s, c) = (f64::from(angle_sign) * ((start + t) as f32 * f) as f64).sin_cos();
                let (a, b) = (f64::from(row[2 * i]), f64::from(row[2 * i + 1]));
                out[2 * i] = (a * c - b * s) as f32;
                out[2 * i + 1] = (b * c + a * s) as f32;
            }
        }
        out
    }

    #[test]
    fn apply_rotates_each_pair_and_its_gradient_rotates_back() {
        let rope = Rope::new(16, 10_000.0, &RopeScaling::None);
        let (b, h, len, d, start) = (2, 3, 5, 16, 7);
        let values: Vec<f32> = (0..b * h * len * d).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let upstream: Vec<f32> = (0..b * h * len * d).map(|i| ((i * 53 % 89) as f32 / 44.0) - 1.0).collect();
        let device = Device::flex().autodiff();
        let x =
            Tensor::<4>::from_data(TensorData::new(values.clone(), [b, h, len, d]), &device).require_grad();
        let y = apply(x.clone(), &rope.tables(start, len, &device));
        let dy = Tensor::<4>::from_data(TensorData::new(upstream.clone(), [b, h, len, d]), &device);
        let grads = (y.clone() * dy).sum().backward();
        let got = host_f32(y).unwrap();
        let grad = host_f32(x.grad(&grads).unwrap()).unwrap();
        // A rotation's transpose is the rotation by the opposite angle.
        for (what, got, want) in [
            ("value", got, rotated(&values, len, start, &rope, 1.0)),
            ("gradient", grad, rotated(&upstream, len, start, &rope, -1.0)),
        ] {
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "{what}[{i}]: {g} vs {w}");
            }
        }
    }
}
