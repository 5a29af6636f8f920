//! What the methods share: building and reading their tensors, a reproducible random stream,
//! and the row order of q/k between Hugging Face checkpoints and our RoPE-pair layout.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::format::safetensors::Dtype;
use crate::model::linear::host_f32;
use crate::model::rope::{permute_rotary_values, RowOrder};
use crate::model::{DecoderConfig, Projection};

/// `x` off the autodiff graph. (`detach` would keep a parameter's `require_grad`, so ops on it
/// would still record a graph.)
pub(crate) fn untracked<const D: usize>(x: &Tensor<D>) -> Tensor<D> {
    x.clone().set_require_grad(false)
}

pub(crate) fn tensor2(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// An error about the saved adapter `peft`.
pub(crate) fn bad(peft: &PeftDir, message: impl Into<String>) -> Error {
    Error::Adapter { path: peft.path.display().to_string(), message: message.into() }
}

/// Tensor `name` of a saved adapter, which must have `shape`.
pub(crate) fn read(peft: &PeftDir, name: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
    let info = peft
        .tensors
        .tensors()
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| bad(peft, format!("no tensor '{name}'")))?;
    if info.shape != shape {
        return Err(bad(
            peft,
            format!("tensor '{name}' has shape {:?}, expected {shape:?} for this model", info.shape),
        ));
    }
    finite_values(peft, name)
}

/// Tensor `name` of a saved adapter as f32, refused when any value is NaN or infinite: such an
/// adapter would turn every output it touches into NaN (or empty generations) without an error.
pub(crate) fn finite_values(peft: &PeftDir, name: &str) -> Result<Vec<f32>, Error> {
    let values = peft.tensors.tensor_f32(name).map_err(|e| bad(peft, e.to_string()))?;
    match values.iter().position(|v| !v.is_finite()) {
        Some(at) => Err(bad(peft, format!("tensor '{name}' holds {} at index {at}", values[at]))),
        None => Ok(values),
    }
}

/// A tensor as the saved adapter stores it: name, f32, shape, little-endian bytes.
pub type Saved = (String, Dtype, Vec<usize>, Vec<u8>);

pub(crate) fn saved(name: String, shape: Vec<usize>, values: &[f32]) -> Saved {
    (name, Dtype::F32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// The values of `t` on the host, for saving.
pub(crate) fn values<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, Error> {
    host_f32(t.clone())
}

/// Rows of a q/k output (`heads · head_dim` rows of `row_len` values) reordered between
/// Hugging Face's rotate-half order and our RoPE-pair order; other projections unchanged.
pub(crate) fn rotary_rows(
    config: &DecoderConfig,
    projection: Projection,
    values: Vec<f32>,
    row_len: usize,
    order: RowOrder,
) -> Vec<f32> {
    if !projection.is_rotary() {
        return values;
    }
    let heads = if projection == Projection::Q { config.n_heads } else { config.n_kv_heads };
    permute_rotary_values(&values, heads, config.head_dim, row_len, order)
}

/// xorshift64*: the same stream on every platform from the same seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // xorshift's state must not be 0 (it would stay 0, and every draw be −1): the one seed
        // that maps there starts elsewhere. Every other seed keeps the stream it always had.
        let state = seed ^ 0x9E37_79B9_7F4A_7C15;
        Self(if state == 0 { 0x2545_F491_4F6C_DD1D } else { state })
    }

    /// Uniform in `[-1, 1)`.
    pub(crate) fn uniform(&mut self) -> f32 {
        let s = &mut self.0;
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() * 0.5 + 0.5).max(f32::MIN_POSITIVE);
        let u2 = self.uniform() * 0.5 + 0.5;
        (-2.0 * u1.ln()).sqrt() * (core::f32::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn every_seed_gives_a_varied_stream() {
        for seed in [0, 1, 0x9E37_79B9_7F4A_7C15, u64::MAX] {
            let mut rng = Rng::new(seed);
            let draws: Vec<f32> = (0..64).map(|_| rng.uniform()).collect();
            assert!(draws.iter().all(|d| (-1.0..1.0).contains(d)), "seed {seed:#x}");
            let mean = draws.iter().sum::<f32>() / 64.0;
            assert!(mean.abs() < 0.5 && draws.iter().any(|&d| d != draws[0]), "seed {seed:#x}: {draws:?}");
        }
    }
}
