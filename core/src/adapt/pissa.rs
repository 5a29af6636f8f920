//! PiSSA (Meng et al. 2024): LoRA whose `A` and `B` start as the principal singular components
//! of the frozen weight, `A = sqrt(S_r / s)·V_rᵀ` and `B = U_r·sqrt(S_r / s)` (as Hugging Face
//! PEFT's `init_lora_weights="pissa"`), trained against the residual `W − s·B₀·A₀`. Training
//! then adapts the directions that matter most. The residual is never materialised: the
//! adapter acts as `s·(B·A − B₀·A₀)` beside the unchanged base (exactly the base at the start,
//! with no requantization error, and the model shared with other callers is left alone), which
//! is also how it is saved: a plain LoRA of twice the rank, `A' = [A; A₀]`, `B' = [B, −B₀]`.

use crate::error::Error;
use crate::linalg::symmetric_eigen;
use crate::model::{Decoder, Projection};
use crate::quant::QuantMatrix;

/// The top `rank` singular triplets of a row-major `rows x cols` matrix: `u` (`rows x rank`,
/// row-major), `s` (descending) and `vt` (`rank x cols`, row-major).
pub struct Principal {
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    pub vt: Vec<f64>,
}

/// Power iterations of the randomized range finder: enough for the top singular vectors of the
/// model's weights to agree with a full SVD to ~1e-6 (tested on spectra decaying like theirs).
const POWER_ITERATIONS: usize = 4;
/// Extra columns of the random subspace beyond `rank`.
const OVERSAMPLING: usize = 8;

/// Randomized SVD (Halko, Martinsson and Tropp 2011) in f64, seeded for reproducibility.
pub fn principal_components(w: &[f32], rows: usize, cols: usize, rank: usize, seed: u64) -> Principal {
    let k = (rank + OVERSAMPLING).min(rows).min(cols);
    let w: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut state = seed ^ 0x6A09_E667_F3BC_C908;
    let mut omega = vec![0f64; cols * k];
    for v in &mut omega {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        *v = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
    }
    // Y = W·Ω, then (W·Wᵀ)^q·Y, orthonormalised along the way.
    let mut y = product(&w, rows, cols, &omega, k, false);
    orthonormalise(&mut y, rows, k);
    for _ in 0..POWER_ITERATIONS {
        let mut z = product(&w, rows, cols, &y, k, true);
        orthonormalise(&mut z, cols, k);
        y = product(&w, rows, cols, &z, k, false);
        orthonormalise(&mut y, rows, k);
    }
    // B = Yᵀ·W (k x cols); the SVD of W is Y times that of B, from the eigenvectors of B·Bᵀ.
    let mut b = vec![0f64; k * cols];
    for i in 0..k {
        for r in 0..rows {
            let yi = y[r * k + i];
            b[i * cols..(i + 1) * cols]
                .iter_mut()
                .zip(&w[r * cols..(r + 1) * cols])
                .for_each(|(b, w)| *b += yi * w);
        }
    }
    let mut gram = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            gram[i * k + j] = dot(&b[i * cols..(i + 1) * cols], &b[j * cols..(j + 1) * cols]);
        }
    }
    let (values, vectors) = symmetric_eigen(gram, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let rank = rank.min(k);
    let mut principal =
        Principal { u: vec![0.0; rows * rank], s: vec![0.0; rank], vt: vec![0.0; rank * cols] };
    for (out, &i) in order.iter().take(rank).enumerate() {
        let sigma = values[i].max(0.0).sqrt();
        principal.s[out] = sigma;
        for r in 0..rows {
            principal.u[r * rank + out] = (0..k).map(|j| y[r * k + j] * vectors[j * k + i]).sum();
        }
        if sigma > 0.0 {
            for c in 0..cols {
                principal.vt[out * cols + c] =
                    (0..k).map(|j| vectors[j * k + i] * b[j * cols + c]).sum::<f64>() / sigma;
            }
        }
    }
    principal
}

/// `W·X` (`x: cols x k`) or, with `transposed`, `Wᵀ·X` (`x: rows x k`), row-major.
fn product(w: &[f64], rows: usize, cols: usize, x: &[f64], k: usize, transposed: bool) -> Vec<f64> {
    if transposed {
        let mut out = vec![0f64; cols * k];
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            for c in 0..cols {
                let wv = w[r * cols + c];
                out[c * k..(c + 1) * k].iter_mut().zip(xr).for_each(|(o, x)| *o += wv * x);
            }
        }
        out
    } else {
        let mut out = vec![0f64; rows * k];
        for r in 0..rows {
            let row = &mut out[r * k..(r + 1) * k];
            for c in 0..cols {
                let wv = w[r * cols + c];
                row.iter_mut().zip(&x[c * k..(c + 1) * k]).for_each(|(o, x)| *o += wv * x);
            }
        }
        out
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Modified Gram-Schmidt, twice, on the `k` columns of a row-major `n x k` matrix.
fn orthonormalise(m: &mut [f64], n: usize, k: usize) {
    for _ in 0..2 {
        for j in 0..k {
            for i in 0..j {
                let d: f64 = (0..n).map(|r| m[r * k + i] * m[r * k + j]).sum();
                (0..n).for_each(|r| m[r * k + j] -= d * m[r * k + i]);
            }
            let norm = (0..n).map(|r| m[r * k + j] * m[r * k + j]).sum::<f64>().sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            (0..n).for_each(|r| m[r * k + j] *= inv);
        }
    }
}

/// PiSSA's starting `A` (`rank x in`) and `B` (`out x rank`) for one weight: `s·B·A` is its
/// best rank-`rank` approximation.
pub(crate) fn split(weight: &QuantMatrix, rank: usize, scale: f32, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (rows, cols) = (weight.rows(), weight.cols());
    let p = principal_components(&weight.dequantize(), rows, cols, rank, seed);
    let r = p.s.len();
    let root: Vec<f64> = p.s.iter().map(|s| (s / f64::from(scale)).sqrt()).collect();
    let a: Vec<f32> = (0..r * cols).map(|i| (root[i / cols] * p.vt[i]) as f32).collect();
    let b: Vec<f32> = (0..rows * r).map(|i| (p.u[i] * root[i % r]) as f32).collect();
    (a, b)
}

/// Whether `projection` of every layer can be split at `rank` (PiSSA needs `rank` below both
/// dimensions of the weight).
pub(crate) fn check_rank(model: &Decoder, projection: Projection, rank: usize) -> Result<(), Error> {
    let (out, inp) = model.config().projection_shape(projection);
    if rank > out.min(inp) {
        return Err(Error::InvalidArgument(format!(
            "PiSSA rank {rank} exceeds the {out}x{inp} {} weight",
            projection.hf_name()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix with known singular values: `Q₁·diag(s)·Q₂ᵀ` with random orthonormal columns.
    #[test]
    fn recovers_the_top_singular_triplets() {
        let (rows, cols, full) = (60, 40, 20);
        let sigma: Vec<f64> = (0..full).map(|i| 10.0 * 0.7f64.powi(i as i32)).collect();
        let random = |n: usize, seed: u64| -> Vec<f64> {
            let mut s = seed;
            (0..n * full)
                .map(|_| {
                    s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect()
        };
        let (mut q1, mut q2) = (random(rows, 1), random(cols, 2));
        orthonormalise(&mut q1, rows, full);
        orthonormalise(&mut q2, cols, full);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                (0..full).map(|j| q1[r * full + j] * sigma[j] * q2[c * full + j]).sum::<f64>() as f32
            })
            .collect();
        let rank = 4;
        let p = principal_components(&w, rows, cols, rank, 7);
        for j in 0..rank {
            assert!((p.s[j] - sigma[j]).abs() < 1e-5 * sigma[0], "s[{j}] = {} vs {}", p.s[j], sigma[j]);
        }
        // The rank-4 reconstruction is the truncated matrix.
        for r in 0..rows {
            for c in 0..cols {
                let got: f64 = (0..rank).map(|j| p.u[r * rank + j] * p.s[j] * p.vt[j * cols + c]).sum();
                let want: f64 = (0..rank).map(|j| q1[r * full + j] * sigma[j] * q2[c * full + j]).sum();
                assert!((got - want).abs() < 1e-4, "({r}, {c}): {got} vs {want}");
            }
        }
    }
}
