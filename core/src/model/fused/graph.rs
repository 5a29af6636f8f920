//! The fused operators' maths as chains of burn ops: what devices without the host kernels (GPUs)
//! run, and the reference the fused ops are tested against.

use burn::tensor::activation::{silu, softmax};

use super::super::architecture::Activation;
use burn::tensor::{Device, Tensor, TensorData};

pub fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f32) -> Tensor<3> {
    let d = weight.dims()[0];
    let inverse_rms = x.clone().square().mean_dim(2).add_scalar(eps).sqrt().recip();
    x * inverse_rms * weight.clone().reshape([1, 1, d])
}

pub fn gated(activation: Activation, gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    let activated = match activation {
        Activation::Silu => silu(gate),
        Activation::GeluTanh => gelu_tanh(gate),
    };
    activated * up
}

/// `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`, as PyTorch's `gelu(approximate="tanh")` (burn's
/// `gelu` is the exact, erf one).
fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044_715)).mul_scalar(0.797_884_6);
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

/// `x ⊙ cos + swap(x) ⊙ signed_sin`, where `swap` exchanges the members of every pair: a flip of
/// a size-2 axis (a view on the CPU, its own gradient), where a `head_dim x head_dim` rotation
/// matrix cost a matrix product per pass.
pub fn rope(x: Tensor<4>, cos: &Tensor<4>, signed_sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let swapped = x.clone().reshape([b, h, t, d / 2, 2]).flip([4]).reshape([b, h, t, d]);
    x * cos.clone() + swapped * signed_sin.clone()
}

/// [`super::attention`] with its causal `mask` added to the scores (`None`: every query row sees
/// every key, as one query token does).
pub fn attention(q: Tensor<4>, keys: Tensor<4>, values: Tensor<4>, mask: Option<&Tensor<4>>) -> Tensor<4> {
    let head_dim = q.dims()[3];
    let mut scores = q.matmul(keys.swap_dims(2, 3)).mul_scalar(1.0 / (head_dim as f32).sqrt());
    if let Some(mask) = mask {
        scores = scores + mask.clone();
    }
    softmax(scores, 3).matmul(values)
}

/// Additive mask `[1, 1, groups*len, start+len]`: query `i` (key `start+i`) sees keys
/// `0..=start+i`, or with a sliding `window` the last `window` of them.
pub fn causal_mask(
    start: usize,
    len: usize,
    groups: usize,
    window: Option<usize>,
    device: &Device,
) -> Tensor<4> {
    let keys = start + len;
    let mut mask = vec![0.0f32; groups * len * keys];
    for g in 0..groups {
        for i in 0..len {
            let row = &mut mask[(g * len + i) * keys..][..keys];
            let end = start + i + 1;
            row[end..].fill(f32::NEG_INFINITY);
            row[..end.saturating_sub(window.unwrap_or(usize::MAX))].fill(f32::NEG_INFINITY);
        }
    }
    Tensor::from_data(TensorData::new(mask, [1, 1, groups * len, keys]), device)
}

/// [`super::low_rank`]: `scale · (x Aᵀ) Bᵀ`.
pub fn low_rank(x: Tensor<2>, a: &Tensor<2>, b: &Tensor<2>, scale: f32) -> Tensor<2> {
    x.matmul(a.clone().transpose()).matmul(b.clone().transpose()).mul_scalar(scale)
}
