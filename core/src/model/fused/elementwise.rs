//! RMSNorm, the gated MLP's activation (SwiGLU, GeGLU) and RoPE on host buffers, row blocks
//! spread over the installed thread pool.

use super::super::architecture::Activation;
use crate::parallel::{for_each_chunk_mut, for_each_chunk_pair_mut};

/// Rows per task of RMSNorm (of 576 values, about 70 KB of input per task).
const ROWS_PER_TASK: usize = 32;
/// Values per task of the gated activation.
const VALUES_PER_TASK: usize = 1 << 14;

/// `out = x / rms(x) * weight` for one row; returns `1 / rms(x)`.
pub(crate) fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> f32 {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inverse = 1.0 / (mean_square + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inverse * w;
    }
    inverse
}

/// [`rms_norm_row`] on every `weight.len()`-long row of `x`, each row's `1 / rms` into
/// `inverse_rms`.
pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32], inverse_rms: &mut [f32]) {
    let d = weight.len();
    for_each_chunk_pair_mut(y, ROWS_PER_TASK * d, inverse_rms, ROWS_PER_TASK, |task, y, inverse_rms| {
        let x = &x[task * ROWS_PER_TASK * d..];
        for ((y, r), x) in y.chunks_exact_mut(d).zip(inverse_rms).zip(x.chunks_exact(d)) {
            *r = rms_norm_row(x, weight, eps, y);
        }
    });
}

/// The gradients of [`rms_norm`]: with `r = 1 / rms(x)` and `g = dy ⊙ weight`,
/// `dx = r·g − x·r³·(g·x)/d` per row, and `dw = Σ_rows dy ⊙ x·r`.
pub(super) fn rms_norm_backward(
    x: &[f32],
    weight: &[f32],
    inverse_rms: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
) {
    let d = weight.len();
    for_each_chunk_mut(dx, ROWS_PER_TASK * d, |task, dx| {
        let first = task * ROWS_PER_TASK;
        for (row, dx) in dx.chunks_exact_mut(d).enumerate() {
            let at = (first + row) * d;
            let (x, dy, r) = (&x[at..at + d], &dy[at..at + d], inverse_rms[first + row]);
            let gx: f32 = dy.iter().zip(weight).zip(x).map(|((g, w), x)| g * w * x).sum();
            let correction = r * r * r * gx / d as f32;
            for (((dx, g), w), x) in dx.iter_mut().zip(dy).zip(weight).zip(x) {
                *dx = r * g * w - x * correction;
            }
        }
    });
    if let Some(dw) = dw {
        dw.fill(0.0);
        for ((x, dy), r) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(inverse_rms) {
            for ((dw, x), g) in dw.iter_mut().zip(x).zip(dy) {
                *dw += g * x * r;
            }
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x · sigmoid(x)`.
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `√(2/π)` and the cubic coefficient of GELU's tanh approximation.
const GELU_SCALE: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// `tanh(u)` as `(e^{2u} − 1) / (e^{2u} + 1)`: libm's `tanhf` (through `expm1f`) took a tenth
/// of Gemma's prefill. Past |u| = 9 tanh is ±1 in f32, and the clamp keeps `e^{2u}` finite; near
/// 0 the subtraction loses relative precision but not absolute (~1e-7), which is what GELU's
/// `1 + tanh` sees.
fn tanh(u: f32) -> f32 {
    let e = (2.0 * u.clamp(-9.0, 9.0)).exp();
    (e - 1.0) / (e + 1.0)
}

/// GELU, tanh-approximated (PyTorch's `gelu(x, approximate="tanh")`).
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))
}

/// `activation(x)` and its derivative.
fn activation_and_slope(activation: Activation, x: f32) -> (f32, f32) {
    match activation {
        Activation::Silu => {
            let s = sigmoid(x);
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
        Activation::GeluTanh => {
            let t = tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x));
            let inner_slope = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
            (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner_slope)
        }
    }
}

/// `activation(x)` of one value (the host decoder's MLP).
pub(crate) fn activate(activation: Activation, x: f32) -> f32 {
    match activation {
        Activation::Silu => silu(x),
        Activation::GeluTanh => gelu_tanh(x),
    }
}

/// `y = activation(gate) ⊙ up`.
pub(super) fn gated(activation: Activation, gate: &[f32], up: &[f32], y: &mut [f32]) {
    for_each_chunk_mut(y, VALUES_PER_TASK, |task, y| {
        let at = task * VALUES_PER_TASK;
        for ((y, g), u) in y.iter_mut().zip(&gate[at..]).zip(&up[at..]) {
            *y = activate(activation, *g) * u;
        }
    });
}

/// The gradients of [`gated`]: `d_gate = dy ⊙ up ⊙ activation'(gate)` and
/// `d_up = dy ⊙ activation(gate)`.
pub(super) fn gated_backward(
    activation: Activation,
    gate: &[f32],
    up: &[f32],
    dy: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    for_each_chunk_pair_mut(d_gate, VALUES_PER_TASK, d_up, VALUES_PER_TASK, |task, d_gate, d_up| {
        let at = task * VALUES_PER_TASK;
        let inputs = gate[at..].iter().zip(&up[at..]).zip(&dy[at..]);
        for ((dg, du), ((g, u), dy)) in d_gate.iter_mut().zip(d_up.iter_mut()).zip(inputs) {
            let (value, slope) = activation_and_slope(activation, *g);
            *dg = dy * u * slope;
            *du = dy * value;
        }
    });
}

/// RoPE's rotation of `x` (rows of `head_dim`; row `r` at position `r % len` of the tables
/// `cos` and `signed_sin`, `[len, head_dim]`): `y = x ⊙ cos + swap(x) ⊙ signed_sin`, where
/// `swap` exchanges the members of every pair. With `back`, the transposed rotation (the
/// gradient): `dx = dy ⊙ cos + swap(dy ⊙ signed_sin)`.
pub(super) fn rope(x: &[f32], cos: &[f32], signed_sin: &[f32], head_dim: usize, back: bool, y: &mut [f32]) {
    let len = cos.len() / head_dim;
    for_each_chunk_mut(y, ROWS_PER_TASK * head_dim, |task, y| {
        let first = task * ROWS_PER_TASK;
        let x = &x[first * head_dim..];
        for (row, (y, x)) in y.chunks_exact_mut(head_dim).zip(x.chunks_exact(head_dim)).enumerate() {
            let at = (first + row) % len * head_dim;
            let (c, s) = (&cos[at..at + head_dim], &signed_sin[at..at + head_dim]);
            for (((y, x), c), s) in
                y.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(c.chunks_exact(2)).zip(s.chunks_exact(2))
            {
                if back {
                    y[0] = x[0] * c[0] + x[1] * s[1];
                    y[1] = x[1] * c[1] + x[0] * s[0];
                } else {
                    y[0] = x[0] * c[0] + x[1] * s[0];
                    y[1] = x[1] * c[1] + x[0] * s[1];
                }
            }
        }
    });
}
