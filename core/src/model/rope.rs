//! Rotary position embedding in GGUF's layout: adjacent pairs (2i, 2i+1) of each head rotate by
//! `pos * inv_freq[i]`. HF checkpoints rotate halves instead; the safetensors loader permutes their
//! q/k rows into this layout, so there is one RoPE for both.

use burn::tensor::{Device, Tensor, TensorData};

use super::config::{LlamaConfig, RopeScaling};

pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rope {
    pub fn new(config: &LlamaConfig) -> Self {
        let d = config.head_dim;
        // f32 like the reference implementations, so positions round the same way.
        let mut inv_freq: Vec<f32> =
            (0..d / 2).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f32 / d as f32)).collect();
        match &config.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::PerFrequency { factors } => {
                inv_freq.iter_mut().zip(factors).for_each(|(f, s)| *f /= s)
            }
        }
        Self { inv_freq, head_dim: d }
    }

    /// cos and sin tables for positions `start..start+len`, each angle repeated for both
    /// members of its pair, shaped `[1, 1, len, head_dim]` to broadcast over
    /// `[batch, heads, len, head_dim]`; and the pair rotation `R` for [`apply`].
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> RopeTables {
        let d = self.head_dim;
        let mut cos = Vec::with_capacity(len * d);
        let mut sin = Vec::with_capacity(len * d);
        for pos in start..start + len {
            for &f in &self.inv_freq {
                let (s, c) = ((pos as f32 * f) as f64).sin_cos();
                cos.extend([c as f32; 2]);
                sin.extend([s as f32; 2]);
            }
        }
        // (x R)[2i] = -x[2i+1], (x R)[2i+1] = x[2i]: the rotation by 90 degrees of every pair.
        let mut rotation = vec![0.0f32; d * d];
        for i in 0..d / 2 {
            rotation[(2 * i + 1) * d + 2 * i] = -1.0;
            rotation[(2 * i) * d + 2 * i + 1] = 1.0;
        }
        let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, len, d]), device);
        RopeTables {
            cos: table(cos),
            sin: table(sin),
            rotation: Tensor::from_data(TensorData::new(rotation, [1, 1, d, d]), device),
        }
    }
}

pub struct RopeTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
    rotation: Tensor<4>,
}

/// Rotates `x: [batch, heads, len, head_dim]`: `x cos + (x R) sin`, four ops instead of slicing
/// and re-interleaving the pairs (decode runs this twice per layer per token).
pub fn apply(x: Tensor<4>, tables: &RopeTables) -> Tensor<4> {
    let [b, h, _, d] = x.dims();
    let rotated = x.clone().matmul(tables.rotation.clone().expand([b, h, d, d]));
    x * tables.cos.clone() + rotated * tables.sin.clone()
}

/// Which way [`permute_rotary_rows`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOrder {
    /// From Hugging Face's rotate-half order to GGUF's adjacent pairs (loading).
    ToPairs,
    /// Back (saving, e.g. a PEFT adapter's `lora_B` for q/k).
    ToRotateHalf,
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
