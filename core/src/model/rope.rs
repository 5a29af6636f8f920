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

    /// cos and sin tables for positions `start..start+len`, shaped to broadcast over
    /// `[batch, heads, len, head_dim/2, 1]`.
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> (Tensor<5>, Tensor<5>) {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in start..start + len {
            for &f in &self.inv_freq {
                let angle = (pos as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let shape = [1, 1, len, half, 1];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Rotates `x: [batch, heads, len, head_dim]` by the tables from [`Rope::tables`].
pub fn apply(x: Tensor<4>, cos: &Tensor<5>, sin: &Tensor<5>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let pairs = x.reshape([b, h, t, d / 2, 2]);
    let even = pairs.clone().slice([0..b, 0..h, 0..t, 0..d / 2, 0..1]);
    let odd = pairs.slice([0..b, 0..h, 0..t, 0..d / 2, 1..2]);
    let rotated_even = even.clone() * cos.clone() - odd.clone() * sin.clone();
    let rotated_odd = even * sin.clone() + odd * cos.clone();
    Tensor::cat(vec![rotated_even, rotated_odd], 4).reshape([b, h, t, d])
}
