//! ComPEFT (Yadav et al. 2023, "ComPEFT: Compression for communicating parameter efficient
//! updates via sparsification and quantization"): each tensor's task vector `τ = θ − θ_init` keeps
//! its top-`density` entries by magnitude, per tensor, as `±scale` (stored with
//! [`super::codec`]); the others become `θ_init`.
//!
//! Where the paper keeps one global top-k over raw LoRA factors and a hand-set `α·σ`, which on a
//! 135M model destroys a strong adapter (A's random init outranks B, so B is zeroed), this uses
//! what the LoRA structure allows. Only `ΔW = B·A` matters, so each pair is first rewritten in
//! its balanced SVD form (`B' = UΣ^½`, `A' = Σ^½Vᵀ`, same product: weak directions get small
//! entries and drop out first); `A'` is ternarized; `B` is refit by least squares to the
//! ternarized `Â` (so it corrects `Â`'s error) and ternarized; and one scale is fitted so the
//! product keeps `ΔW`'s own component whole (see `compress_pair`). Other tensors with a known init ((IA)³'s 1,
//! PEQA's 0) take the least-squares scale, the mean kept magnitude. Tensors whose init is the
//! model's own (soft prompts, DoRA's magnitudes, LoFiT) stay dense f16.

use serde_json::json;

pub use super::compeft::TensorReport;
use super::compeft::{compress_pair, compress_plain};
use super::{bad, dense_tensor, DenseType, Patch};
use crate::adapt::registry::Coding;
use crate::error::Error;
use crate::format::patch_file::{Encoding, StoredTensor};

/// `patch` with its tensors ComPEFT-coded at `density` (fraction of each task vector kept, in
/// `(0, 1]`).
pub fn compress(patch: &Patch, density: f64) -> Result<(Patch, Vec<TensorReport>), Error> {
    if !(density > 0.0 && density <= 1.0) {
        return Err(Error::InvalidArgument(format!("density {density} must be in (0, 1]")));
    }
    let values = patch.values()?;
    let mut coded: Vec<Option<StoredTensor>> = vec![None; values.len()];
    let mut reports = Vec::new();
    let coding = patch.method.spec().coding;
    for (i, a) in values.iter().enumerate() {
        let Some(prefix) = a.name.strip_suffix("lora_A.weight").filter(|_| coding == Coding::LoraPairs)
        else {
            continue;
        };
        let b_name = format!("{prefix}lora_B.weight");
        let j = values
            .iter()
            .position(|v| v.name == b_name)
            .ok_or_else(|| bad("patch", format!("'{}' has no matching '{b_name}'", a.name)))?;
        let (ta, tb, ra, rb) = compress_pair(a, &values[j], density).map_err(|m| bad("patch", m))?;
        coded[i] = Some(ta);
        coded[j] = Some(tb);
        reports.extend([ra, rb]);
    }
    for (i, v) in values.iter().enumerate() {
        if coded[i].is_some() {
            continue;
        }
        coded[i] = Some(match initial_value(coding, &v.name) {
            Some(init) => {
                let (tensor, report) = compress_plain(v, init, density);
                reports.push(report);
                tensor
            }
            None => dense_tensor(v, DenseType::F16),
        });
    }
    let mut out = patch.clone();
    out.tensors = coded.into_iter().flatten().collect();
    // Aggregates only: per-tensor statistics would cost more metadata than the codec saves
    // (`patch inspect` recomputes what it can from the tensors).
    let mean = |f: &dyn Fn(&TensorReport) -> Option<f64>| {
        let xs: Vec<f64> = reports.iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    out.compression = Some(json!({
        "codec": "compeft",
        "density": density,
        "mean_alpha": mean(&|r| Some(f64::from(r.alpha))),
        "mean_product_cosine": mean(&|r| r.product_cosine),
    }));
    Ok((out, reports))
}

/// The value a tensor starts from, when it is known without the model (the task vector is
/// measured from it); `None` for tensors that stay dense.
fn initial_value(coding: Coding, name: &str) -> Option<f32> {
    match coding {
        Coding::LoraPairs if name.contains(".lora_A.") || name.contains(".lora_B.") => Some(0.0),
        Coding::FromInit(init) => Some(init),
        Coding::LoraPairs | Coding::Dense => None,
    }
}

/// `patch` with every coded change multiplied by `factor` (the α search of `--density auto`):
/// a LoRA pair's product through both of its scales, other tensors' `τ` directly.
pub fn amplify(patch: &Patch, factor: f32) -> Patch {
    let mut out = patch.clone();
    for t in &mut out.tensors {
        if let Encoding::Ternary { scale, .. } = &mut t.encoding {
            let pair = t.name.ends_with("lora_A.weight") || t.name.ends_with("lora_B.weight");
            *scale *= if pair { factor.sqrt() } else { factor };
        }
    }
    out
}

/// What `--density auto` tried: each candidate's density, scale factor and perplexities.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Trial {
    pub density: f64,
    pub alpha_factor: f32,
    pub perplexity: f64,
    /// Fraction of the adapter's log-perplexity gain over the base that it keeps.
    pub gain_kept: f64,
    /// Perplexity on the general text, when one is watched.
    pub general: Option<f64>,
    pub bytes: usize,
    pub accepted: bool,
}

/// Perplexities of one model state: on the held-out text, and on general text when watched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub held_out: f64,
    pub general: Option<f64>,
}

/// What `--density auto` must keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Fraction of the dense adapter's held-out log-perplexity gain over the base.
    pub keep_gain: f64,
    /// Largest relative rise of general-text perplexity over the dense adapter's.
    pub max_general_rise: f64,
}

/// The densities `--density auto` tries, smallest first.
pub const AUTO_DENSITIES: [f64; 8] = [0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5];

/// The result of [`auto`]: the chosen patch, every trial, and the base's and dense adapter's
/// scores.
pub struct AutoChoice {
    pub patch: Patch,
    pub trials: Vec<Trial>,
    pub base: Scores,
    pub dense: Scores,
}

/// `--density auto`: the smallest density (and a factor on its fitted scale) whose patch keeps
/// `budget` on the texts `score` measures (`None`: the base model alone). A fitted scale that
/// keeps too little gain is raised (x1.25, x1.5); one that hurts general text too much is
/// lowered (x0.8, x0.65).
pub fn auto(
    patch: &Patch,
    budget: Budget,
    score: &mut dyn FnMut(Option<&Patch>) -> Result<Scores, Error>,
) -> Result<AutoChoice, Error> {
    if !(0.0..=1.0).contains(&budget.keep_gain)
        || budget.max_general_rise.is_nan()
        || budget.max_general_rise < 0.0
    {
        return Err(Error::InvalidArgument(format!(
            "keep-gain {} must be in [0, 1] and max-general-rise {} at least 0",
            budget.keep_gain, budget.max_general_rise
        )));
    }
    let base = score(None)?;
    let dense = score(Some(patch))?;
    let full_gain = base.held_out.ln() - dense.held_out.ln();
    if full_gain <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "the adapter does not lower the held-out perplexity (base {:.3}, adapter {:.3}); there is no gain to keep",
            base.held_out, dense.held_out
        )));
    }
    let mut trials = Vec::new();
    for density in AUTO_DENSITIES {
        let (coded, _) = compress(patch, density)?;
        let mut factors = vec![1.0f32];
        while let Some(factor) = factors.pop() {
            let candidate = if factor == 1.0 { coded.clone() } else { amplify(&coded, factor) };
            let scores = score(Some(&candidate))?;
            let gain_kept = (base.held_out.ln() - scores.held_out.ln()) / full_gain;
            let general_ok = match (scores.general, dense.general) {
                (Some(g), Some(d)) => g <= d * (1.0 + budget.max_general_rise),
                _ => true,
            };
            let accepted = gain_kept >= budget.keep_gain && general_ok;
            trials.push(Trial {
                density,
                alpha_factor: factor,
                perplexity: scores.held_out,
                gain_kept,
                general: scores.general,
                bytes: candidate.payload_bytes(),
                accepted,
            });
            if accepted {
                let mut chosen = candidate;
                if let Some(c) = chosen.compression.as_mut().and_then(|c| c.as_object_mut()) {
                    c.insert("alpha_factor".into(), json!(factor));
                    c.insert(
                        "auto".into(),
                        json!({"keep_gain": budget.keep_gain, "max_general_rise": budget.max_general_rise,
                               "base_perplexity": base.held_out, "dense_perplexity": dense.held_out,
                               "perplexity": scores.held_out, "gain_kept": gain_kept}),
                    );
                }
                return Ok(AutoChoice { patch: chosen, trials, base, dense });
            }
            // Only from the fitted scale: one direction of adjustment per density.
            if factor == 1.0 {
                factors = if gain_kept < budget.keep_gain { vec![1.5, 1.25] } else { vec![0.65, 0.8] };
            }
        }
    }
    Err(Error::InvalidArgument(format!(
        "no density up to {} keeps {:.0}% of the adapter's gain within the budget on this text; keep it dense (--density dense)",
        AUTO_DENSITIES[AUTO_DENSITIES.len() - 1],
        budget.keep_gain * 100.0
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::codec;
    use crate::patch::compeft::{balance, inner, matmul, std_dev, ternary, top_k, Values};

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                let mut u = || {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 11) as f64 / (1u64 << 53) as f64).max(1e-300)
                };
                ((-2.0 * u().ln()).sqrt() * (std::f64::consts::TAU * u()).cos()) as f32
            })
            .collect()
    }

    /// ComPEFT's properties on a random task vector of 10⁶ values at 10% density.
    #[test]
    fn compeft_keeps_the_top_tenth_as_signs_at_golomb_cost() {
        let n = 1_000_000;
        let tau = Values { name: "t".into(), shape: vec![n], values: gaussian(n, 7) };
        let (tensor, report) = compress_plain(&tau, 0.0, 0.1);
        let Encoding::Ternary { scale, nonzeros, rice_bits, .. } = tensor.encoding else { panic!() };
        // 1. Exactly ⌊0.1·N⌋ nonzeros (no ties among continuous values).
        assert_eq!(nonzeros as usize, n / 10);
        let decoded = crate::patch::decode_tensor(&tensor).unwrap().values;
        // 2. Every nonzero is ±α·σ, σ of the whole vector before sparsification.
        assert!((report.alpha * report.sigma - scale).abs() < 1e-6 * scale);
        assert!((report.sigma - std_dev(&tau.values)).abs() < 1e-7);
        assert!(decoded.iter().all(|&v| v == 0.0 || v.abs() == scale));
        // 3. What was kept outranks what was dropped, with the signs kept.
        let kept_min =
            (0..n).filter(|&i| decoded[i] != 0.0).map(|i| tau.values[i].abs()).fold(f32::MAX, f32::min);
        let dropped_max =
            (0..n).filter(|&i| decoded[i] == 0.0).map(|i| tau.values[i].abs()).fold(0.0, f32::max);
        assert!(kept_min >= dropped_max);
        assert!((0..n).all(|i| decoded[i] == 0.0 || decoded[i].signum() == tau.values[i].signum()));
        // 4. The stored stream decodes to exactly the ternary top-k of τ (the Rice code itself
        // is checked against a hand-written stream in `codec`'s tests).
        let t = ternary(&tau.values, top_k(&tau.values, 0.1));
        assert_eq!(codec::decode(&tensor.bytes, n, nonzeros as usize, rice_bits).unwrap(), t);
        let bytes = &tensor.bytes;
        // 5. Within the Golomb bound of 0.576 bits per value and 2% of its expectation.
        let p: f64 = 0.1;
        let b = 1.0 + ((((5f64.sqrt() - 1.0) / 2.0).ln() / (1.0 - p).ln()).log2()).floor();
        let expected_bits = p * n as f64 * (b + 1.0 / (1.0 - (1.0 - p).powf(2f64.powf(b))) + 1.0);
        assert!(bytes.len() as f64 <= n as f64 * 0.576 / 8.0 + 4.0, "{} bytes", bytes.len());
        assert!(
            ((bytes.len() * 8) as f64 / expected_bits - 1.0).abs() < 0.02,
            "{} bits vs {expected_bits}",
            bytes.len() * 8
        );
    }

    /// A trained LoRA pair looks like this: A still near its random init, B small and low-rank.
    /// Coding the product (balanced, B refit) keeps more of `ΔW`'s direction than
    /// per-tensor top-k of the raw factors, and the scale keeps `ΔW`'s own component whole.
    #[test]
    fn lora_structure_beats_plain_per_tensor_top_k() {
        let (r, inp, out) = (8, 96, 64);
        let a = Values { name: "m.lora_A.weight".into(), shape: vec![r, inp], values: gaussian(r * inp, 3) };
        let directions = gaussian(out * 2, 4);
        let mix = gaussian(2 * r, 5);
        // B = (out x 2)·(2 x r): rank 2, as training leaves it.
        let b_values: Vec<f32> = (0..out * r)
            .map(|i| (0..2).map(|k| directions[(i / r) * 2 + k] * mix[k * r + i % r]).sum::<f32>() * 0.01)
            .collect();
        let b = Values { name: "m.lora_B.weight".into(), shape: vec![out, r], values: b_values };
        let product = |a: &[f32], b: &[f32]| {
            let a: Vec<f64> = a.iter().map(|&x| f64::from(x)).collect();
            let b: Vec<f64> = b.iter().map(|&x| f64::from(x)).collect();
            matmul(&b, &a, out, r, inp)
        };
        let exact = product(&a.values, &b.values);
        let cosine =
            |approx: &[f64]| inner(&exact, approx) / (inner(&exact, &exact) * inner(approx, approx)).sqrt();
        let decode = |t: &StoredTensor| crate::patch::decode_tensor(t).unwrap().values;
        // The densities a patch ≥10x smaller than f16 uses; at 50% both keep about 0.8.
        for density in [0.05, 0.1, 0.2, 0.3] {
            let (ta, tb, _, report) = compress_pair(&a, &b, density).unwrap();
            let ours = product(&decode(&ta), &decode(&tb));
            assert!(
                (cosine(&ours) - report.product_cosine.unwrap()).abs() < 1e-4,
                "the reported cosine is the real one"
            );
            // ΔW's own component is kept whole: <ΔW, ΔŴ> = ‖ΔW‖².
            assert!((inner(&exact, &ours) / inner(&exact, &exact) - 1.0).abs() < 1e-3);
            let (pa, _) = compress_plain(&a, 0.0, density);
            let (pb, _) = compress_plain(&b, 0.0, density);
            let plain = cosine(&product(&decode(&pa), &decode(&pb)));
            assert!(
                cosine(&ours) > plain + 0.05,
                "density {density}: cosine {:.3} vs plain top-k {plain:.3}",
                cosine(&ours)
            );
        }
    }

    #[test]
    fn balancing_keeps_the_product_and_evens_the_factors() {
        let (r, inp, out) = (4, 30, 20);
        let a: Vec<f64> = gaussian(r * inp, 1).iter().map(|&x| f64::from(x) * 5.0).collect();
        let b: Vec<f64> = gaussian(out * r, 2).iter().map(|&x| f64::from(x) * 0.01).collect();
        let (a2, b2) = balance(&a, &b, r, inp, out);
        let before = matmul(&b, &a, out, r, inp);
        let after = matmul(&b2, &a2, out, r, inp);
        let scale = before.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(before.iter().zip(&after).all(|(x, y)| (x - y).abs() < 1e-9 * scale));
        // Balanced: each direction's A row and B column have the same norm.
        for j in 0..r {
            let row: f64 = a2[j * inp..(j + 1) * inp].iter().map(|x| x * x).sum();
            let col: f64 = (0..out).map(|i| b2[i * r + j].powi(2)).sum();
            assert!((row - col).abs() < 1e-9 * row.max(1e-12), "direction {j}: {row} vs {col}");
        }
    }
}
