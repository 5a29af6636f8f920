//! The ComPEFT coding of adapter tensors, pure arithmetic that builds without `std`: each tensor's
//! task vector keeps its top entries by magnitude as `±scale`; a LoRA pair is coded through its
//! product (balanced SVD form, `A` ternarized, `B` refit to it by least squares and ternarized,
//! one scale fitted). [`super::compress`] applies it to a patch; the reasons are there.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::codec::{self, Ternary};
use crate::format::patch_file::{Encoding, StoredTensor};
use crate::linalg::{sqrt, symmetric_eigen};

/// A tensor's decoded values.
#[derive(Clone, Debug, PartialEq)]
pub struct Values {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// What one coded tensor kept, for reports and `patch inspect`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorReport {
    pub name: String,
    pub elements: usize,
    pub nonzeros: usize,
    /// Standard deviation of the task vector before sparsification.
    pub sigma: f32,
    /// The fitted scale over `sigma` (the paper's α).
    pub alpha: f32,
    /// Stored bits per value, signs included.
    pub bits_per_value: f64,
    /// Cosine between a LoRA pair's `ΔW` and its coded `ΔŴ` (reported on its B tensor): how
    /// much of the change's direction survives, whatever the scale.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub product_cosine: Option<f64>,
}

/// Positions of the largest `|values|`, ascending: at most `density·n` of them (ties at the
/// threshold kept, zeros never), and fewer when fewer make a better sign pattern. A ternary
/// vector's cosine with `x` is `Σ_top-k |x| / (√k·‖x‖)`, which rises with `k` up to about 60%
/// of a Gaussian's entries and falls after; a tensor with many zeros (a balanced LoRA factor
/// of lower rank than `r`) would otherwise spend its budget past that peak.
pub(crate) fn top_k(values: &[f32], density: f64) -> Vec<u32> {
    let n = values.len();
    // ⌊density·n⌋ (the paper's count), with a hair of slack for products like 0.3·10.
    let budget = (libm::floor(density * n as f64 + 1e-9) as usize).clamp(usize::from(n > 0), n);
    let mut magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).filter(|&m| m > 0.0).collect();
    magnitudes.sort_unstable_by(|a, b| b.total_cmp(a));
    let (mut sum, mut best, mut keep) = (0f64, 0f64, 0usize);
    for (i, &m) in magnitudes.iter().take(budget).enumerate() {
        sum += f64::from(m);
        let score = sum / sqrt((i + 1) as f64);
        if score > best {
            (best, keep) = (score, i + 1);
        }
    }
    if keep == 0 {
        return Vec::new();
    }
    let threshold = magnitudes[keep - 1];
    (0..n as u32).filter(|&i| values[i as usize].abs() >= threshold && values[i as usize] != 0.0).collect()
}

pub(crate) fn ternary(values: &[f32], positions: Vec<u32>) -> Ternary {
    let negative = positions.iter().map(|&p| values[p as usize] < 0.0).collect();
    Ternary { len: values.len(), positions, negative }
}

fn stored(v: &Values, t: &Ternary, scale: f32, init: f32) -> StoredTensor {
    let (bytes, rice_bits) = codec::encode(t);
    StoredTensor {
        name: v.name.clone(),
        shape: v.shape.clone(),
        encoding: Encoding::Ternary { scale, init, nonzeros: t.positions.len() as u64, rice_bits },
        bytes,
    }
}

pub(crate) fn std_dev(values: &[f32]) -> f32 {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    sqrt(values.iter().map(|&v| (f64::from(v) - mean) * (f64::from(v) - mean)).sum::<f64>() / n) as f32
}

fn report(v: &Values, t: &Ternary, tensor: &StoredTensor, sigma: f32, scale: f32) -> TensorReport {
    TensorReport {
        name: v.name.clone(),
        elements: t.len,
        nonzeros: t.positions.len(),
        sigma,
        alpha: if sigma > 0.0 { scale / sigma } else { 0.0 },
        bits_per_value: tensor.bytes.len() as f64 * 8.0 / t.len.max(1) as f64,
        product_cosine: None,
    }
}

/// A tensor with a known init: top-k of `τ = v − init`, at the least-squares scale.
pub fn compress_plain(v: &Values, init: f32, density: f64) -> (StoredTensor, TensorReport) {
    let tau: Vec<f32> = v.values.iter().map(|&x| x - init).collect();
    let t = ternary(&tau, top_k(&tau, density));
    let kept: f64 = t.positions.iter().map(|&p| f64::from(tau[p as usize].abs())).sum();
    let scale = (kept / t.positions.len().max(1) as f64) as f32;
    let tensor = stored(v, &t, scale, init);
    let report = report(v, &t, &tensor, std_dev(&tau), scale);
    (tensor, report)
}

/// Row-major `rows x cols` f64 matrix helpers for the rank-sized algebra below.
pub(crate) fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for p in 0..k {
            let x = a[i * k + p];
            if x != 0.0 {
                for j in 0..m {
                    out[i * m + j] += x * b[p * m + j];
                }
            }
        }
    }
    out
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = a[i * cols + j];
        }
    }
    out
}

/// `tr(XᵀY)` for same-shaped matrices: their Frobenius inner product.
pub(crate) fn inner(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// `(B', A')` with `B'A' = BA`, `A'` = `Σ^½Vᵀ` and `B'` = `UΣ^½` from the SVD `BA = UΣVᵀ`
/// (computed through the `r x r` Gram matrices; directions with no weight become zeros).
pub(crate) fn balance(a: &[f64], b: &[f64], r: usize, inp: usize, out: usize) -> (Vec<f64>, Vec<f64>) {
    // A = Q Λ^½ Ã with Ã's rows orthonormal.
    let (lambda, q) = symmetric_eigen(matmul(a, &transpose(a, r, inp), r, inp, r), r);
    let top = lambda.iter().cloned().fold(0.0, f64::max);
    let keep: Vec<bool> = lambda.iter().map(|&l| l > top * 1e-12 && l > 0.0).collect();
    let qt = transpose(&q, r, r);
    let mut a_orth = matmul(&qt, a, r, r, inp);
    let mut c = matmul(b, &q, out, r, r);
    for i in 0..r {
        let s = if keep[i] { sqrt(lambda[i]) } else { 0.0 };
        a_orth[i * inp..(i + 1) * inp].iter_mut().for_each(|x| *x = if s > 0.0 { *x / s } else { 0.0 });
        (0..out).for_each(|row| c[row * r + i] *= s);
    }
    // C = BQΛ^½ = U Σ Pᵀ: its Gram matrix gives P and Σ².
    let (mu, p) = symmetric_eigen(matmul(&transpose(&c, out, r), &c, r, out, r), r);
    let top = mu.iter().cloned().fold(0.0, f64::max);
    let mut b_bal = matmul(&c, &p, out, r, r);
    let mut a_bal = matmul(&transpose(&p, r, r), &a_orth, r, r, inp);
    for j in 0..r {
        let sigma = if mu[j] > top * 1e-12 && mu[j] > 0.0 { sqrt(mu[j]) } else { 0.0 };
        let (to_b, to_a) = if sigma > 0.0 { (1.0 / sqrt(sigma), sqrt(sigma)) } else { (0.0, 0.0) };
        (0..out).for_each(|row| b_bal[row * r + j] *= to_b);
        a_bal[j * inp..(j + 1) * inp].iter_mut().for_each(|x| *x *= to_a);
    }
    (a_bal, b_bal)
}

/// Solves `X·N = M` for `X` (`out x r`) with `N` symmetric positive semi-definite, through its
/// eigendecomposition (directions `N` does not span get no weight).
fn solve_right(m: &[f64], n: &[f64], rows: usize, r: usize) -> Vec<f64> {
    let (nu, v) = symmetric_eigen(n.to_vec(), r);
    let top = nu.iter().cloned().fold(0.0, f64::max);
    let mut mv = matmul(m, &v, rows, r, r);
    for j in 0..r {
        let inv = if nu[j] > top * 1e-9 && nu[j] > 0.0 { 1.0 / nu[j] } else { 0.0 };
        (0..rows).for_each(|row| mv[row * r + j] *= inv);
    }
    matmul(&mv, &transpose(&v, r, r), rows, r, r)
}

/// A LoRA pair (`A`: `r x in`, `B`: `out x r`, PEFT layout) coded as described at the top.
pub fn compress_pair(
    a: &Values,
    b: &Values,
    density: f64,
) -> Result<(StoredTensor, StoredTensor, TensorReport, TensorReport), String> {
    let (r, inp) = match a.shape[..] {
        [r, inp] => (r, inp),
        _ => return Err(format!("'{}' has shape {:?}, not [r, in]", a.name, a.shape)),
    };
    let out = match b.shape[..] {
        [out, rb] if rb == r => out,
        _ => return Err(format!("'{}' has shape {:?}, not [out, {r}]", b.name, b.shape)),
    };
    let a64: Vec<f64> = a.values.iter().map(|&x| f64::from(x)).collect();
    let b64: Vec<f64> = b.values.iter().map(|&x| f64::from(x)).collect();
    let (a_bal, b_bal) = balance(&a64, &b64, r, inp, out);

    // A: the sign pattern of its largest balanced entries; its scale is folded into B's below.
    let a_f32: Vec<f32> = a_bal.iter().map(|&x| x as f32).collect();
    let ta = ternary(&a_f32, top_k(&a_f32, density));
    let a_hat: Vec<f64> = ta.signs().iter().map(|&s| f64::from(s)).collect();
    // B refit to Â: argmin ‖B'A' − X·Â‖ = B'·(A'Âᵀ)·(ÂÂᵀ)⁻¹.
    let a_at = matmul(&a_bal, &transpose(&a_hat, r, inp), r, inp, r);
    let ah_aht = matmul(&a_hat, &transpose(&a_hat, r, inp), r, inp, r);
    let b_refit = solve_right(&matmul(&b_bal, &a_at, out, r, r), &ah_aht, out, r);
    let b_f32: Vec<f32> = b_refit.iter().map(|&x| x as f32).collect();
    let tb = ternary(&b_f32, top_k(&b_f32, density));
    let b_hat: Vec<f64> = tb.signs().iter().map(|&s| f64::from(s)).collect();
    // The product's scale c: argmin ‖ΔW − c·T_B·Â‖, all through r x r matrices.
    let bt_tb = matmul(&transpose(&b_bal, out, r), &b_hat, r, out, r);
    let cross = inner(&bt_tb, &a_at);
    let tbt_tb = matmul(&transpose(&b_hat, out, r), &b_hat, r, out, r);
    let approx_sq = inner(&tbt_tb, &ah_aht);
    // The product's scale c. Least squares (`cross / ‖T_B·Â‖²`) shrinks ΔW's own component by
    // cos²θ, and on the real model that costs most of the adapter's gain (README: at 10%
    // density it kept 62% of it). The scale that keeps that component whole, `‖ΔW‖² / cross`,
    // leaves the rest of the error as noise in directions the model barely reacts to.
    let exact_sq = inner(
        &matmul(&transpose(&b_bal, out, r), &b_bal, r, out, r),
        &matmul(&a_bal, &transpose(&a_bal, r, inp), r, inp, r),
    );
    let c = if cross > 0.0 { exact_sq / cross } else { 0.0 };
    let product_cosine =
        if exact_sq > 0.0 && approx_sq > 0.0 { cross / sqrt(exact_sq * approx_sq) } else { 0.0 };

    // Split c between the two scales: A at its own least-squares scale, B the rest.
    let kept_a: f64 = ta.positions.iter().map(|&p| a_bal[p as usize].abs()).sum();
    let scale_a = if ta.positions.is_empty() { 0.0 } else { kept_a / ta.positions.len() as f64 };
    let scale_b = if scale_a > 0.0 { c / scale_a } else { 0.0 };
    let stored_a = stored(a, &ta, scale_a as f32, 0.0);
    let stored_b = stored(b, &tb, scale_b as f32, 0.0);
    let report_a = report(a, &ta, &stored_a, std_dev(&a_f32), scale_a as f32);
    // B's values were fitted against Â at unit scale; at A's scale they are 1/scale_a of that.
    let sigma_b = if scale_a > 0.0 { std_dev(&b_f32) / scale_a as f32 } else { 0.0 };
    let mut report_b = report(b, &tb, &stored_b, sigma_b, scale_b as f32);
    report_b.product_cosine = Some(product_cosine);
    Ok((stored_a, stored_b, report_a, report_b))
}
