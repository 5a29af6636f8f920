//! Aggregating adapters trained on many devices into one shared adapter (methods.md §8.1-8.2).
//!
//! Averaging LoRA's `A` and `B` separately (FedIT, what FlowerTune does) is biased:
//! `mean(B)·mean(A) ≠ mean(B·A)` as soon as devices diverge. [`Rule::FedAvg`] averages the true
//! weight changes `ΔW_i = B_i·A_i` and factors the sum back to the task's rank; [`Rule::Ffa`]
//! (FFA-LoRA: `A` frozen and shared, only `B` trained) averages `B`, which is exact because
//! `Σ p_i B_i A = (Σ p_i B_i) A`, and is a plain weighted sum, so it composes with secure
//! aggregation and noise. [`Rule::FedIt`] is kept to measure the bias against.
//!
//! Tensors are PEFT's (`…lora_A.weight` `[r, in]`, `…lora_B.weight` `[out, r]`); what is not a
//! LoRA pair ((IA)³ vectors, soft prompts) is averaged element by element under every rule.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::linalg::symmetric_eigen;
use crate::parallel::for_each_chunk_mut;
use crate::patch::Values;

/// How a round's adapters become the next shared one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    /// Weighted mean of `ΔW_i = B_i A_i`, re-factored to the task's rank (truncated SVD).
    #[default]
    FedAvg,
    /// FFA-LoRA: `A` is the shared frozen one, `B` the weighted mean; exact and linear.
    Ffa,
    /// Weighted mean of `A` and of `B` separately (biased; for comparison).
    FedIt,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Self::FedAvg => "fedavg",
            Self::Ffa => "ffa",
            Self::FedIt => "fedit",
        }
    }

    /// Whether the server needs only the weighted sum of what devices send (so secure
    /// aggregation and client-side noise can apply).
    pub fn is_linear(self) -> bool {
        self != Self::FedAvg
    }
}

impl core::str::FromStr for Rule {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "fedavg" => Ok(Self::FedAvg),
            "ffa" => Ok(Self::Ffa),
            "fedit" => Ok(Self::FedIt),
            other => Err(format!("unknown aggregation rule '{other}' (fedavg, ffa or fedit)")),
        }
    }
}

/// One device's adapter (every tensor of the shared adapter, in any order) and its weight.
#[derive(Clone, Debug)]
pub struct Contribution {
    pub tensors: Vec<Values>,
    pub weight: f64,
}

/// What aggregation did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregateReport {
    pub rule: Rule,
    pub contributions: usize,
    /// LoRA pairs combined.
    pub lora_sites: usize,
    /// FedAvg: the smallest share of a site's `‖ΔW‖²_F` the rank-`r` factors keep (1 when the
    /// sum had rank `r` or less); 1 for the other rules, which need no truncation.
    pub min_energy_kept: f64,
}

/// The shared adapter after a round: `global`'s tensors (names, shapes, order) with the
/// contributions combined under `rule`. Errors name the tensor and the device (its index).
pub fn aggregate(
    rule: Rule,
    global: &[Values],
    contributions: &[Contribution],
) -> Result<(Vec<Values>, AggregateReport), String> {
    let mut aggregator = Aggregator::new(rule, global);
    for c in contributions {
        aggregator.add(c)?;
    }
    aggregator.finish()
}

/// [`aggregate`] one contribution at a time: under the linear rules (FFA-LoRA, FedIt) only a
/// running weighted sum is kept, so a round of any size takes the memory of two adapters;
/// FedAvg keeps every device's LoRA factors, which its SVD needs together.
pub struct Aggregator<'g> {
    rule: Rule,
    global: &'g [Values],
    index: BTreeMap<&'g str, usize>,
    pairs: Vec<(usize, usize)>,
    /// Per tensor: its weighted sum, when it is averaged element by element.
    sums: Vec<Option<Vec<f64>>>,
    total: f64,
    devices: usize,
    /// FedAvg: each device's weight and its `(A, B)` at every pair.
    factors: Vec<(f64, Vec<(Vec<f32>, Vec<f32>)>)>,
}

impl<'g> Aggregator<'g> {
    pub fn new(rule: Rule, global: &'g [Values]) -> Self {
        let pairs = lora_pairs(global);
        let mut summed = vec![true; global.len()];
        for &(a, b) in &pairs {
            match rule {
                Rule::FedAvg => (summed[a], summed[b]) = (false, false),
                Rule::Ffa => summed[a] = false,
                Rule::FedIt => {}
            }
        }
        Self {
            rule,
            global,
            index: global.iter().enumerate().map(|(i, v)| (v.name.as_str(), i)).collect(),
            sums: global.iter().zip(summed).map(|(g, s)| s.then(|| vec![0f64; g.values.len()])).collect(),
            pairs,
            total: 0.0,
            devices: 0,
            factors: Vec::new(),
        }
    }

    /// Adds one device's adapter (every tensor of the shared adapter, in any order).
    pub fn add(&mut self, c: &Contribution) -> Result<(), String> {
        let (d, global) = (self.devices, self.global);
        if !(c.weight.is_finite() && c.weight >= 0.0) {
            return Err(format!("device {d}: weight {} is not a finite non-negative number", c.weight));
        }
        let mut tensors: Vec<Option<&[f32]>> = vec![None; global.len()];
        for v in &c.tensors {
            let &i = self
                .index
                .get(v.name.as_str())
                .ok_or_else(|| format!("device {d}: tensor '{}' is not in the shared adapter", v.name))?;
            if v.shape != global[i].shape || v.values.len() != global[i].values.len() {
                return Err(format!(
                    "device {d}: tensor '{}' has shape {:?}, the shared adapter's is {:?}",
                    v.name, v.shape, global[i].shape
                ));
            }
            if let Some(bad) = v.values.iter().find(|x| !x.is_finite()) {
                return Err(format!("device {d}: tensor '{}' holds {bad}", v.name));
            }
            tensors[i] = Some(&v.values);
        }
        let tensors = tensors
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| format!("device {d}: tensor '{}' is missing", global[i].name)))
            .collect::<Result<Vec<_>, _>>()?;
        if self.rule == Rule::Ffa {
            for &(a, _) in &self.pairs {
                let shared = &global[a].values;
                let scale = shared.iter().map(|x| x.abs()).fold(0f32, f32::max).max(f32::MIN_POSITIVE);
                let moved = tensors[a].iter().zip(shared).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                // f16 uploads round A; more than that means the device trained it.
                if moved > 1e-3 * scale {
                    return Err(format!(
                        "device {d}: '{}' moved by {moved:e}; this task trains B only (FFA-LoRA, freeze_a)",
                        global[a].name
                    ));
                }
            }
        }
        for (sum, t) in self.sums.iter_mut().zip(&tensors) {
            if let Some(sum) = sum {
                sum.iter_mut().zip(t.iter()).for_each(|(s, &x)| *s += c.weight * f64::from(x));
            }
        }
        if self.rule == Rule::FedAvg {
            let pairs = self.pairs.iter().map(|&(a, b)| (tensors[a].to_vec(), tensors[b].to_vec())).collect();
            self.factors.push((c.weight, pairs));
        }
        self.total += c.weight;
        self.devices += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<(Vec<Values>, AggregateReport), String> {
        if self.devices == 0 {
            return Err("no contributions to aggregate".into());
        }
        if !(self.total > 0.0) {
            return Err("the contributions' weights sum to zero".into());
        }
        let global = self.global;
        let mut out: Vec<Values> = global.to_vec();
        for (tensor, sum) in out.iter_mut().zip(&self.sums) {
            if let Some(sum) = sum {
                tensor.values = sum.iter().map(|s| (s / self.total) as f32).collect();
            }
        }
        let mut min_energy_kept = 1.0f64;
        if self.rule == Rule::FedAvg {
            let mut results: Vec<Option<(Vec<f32>, Vec<f32>, f64)>> = vec![None; self.pairs.len()];
            let (pairs, factors, total) = (&self.pairs, &self.factors, self.total);
            for_each_chunk_mut(&mut results, 1, |s, slot| {
                let (a, b) = pairs[s];
                let (rank, inputs) = (global[a].shape[0], global[a].shape[1]);
                let outputs = global[b].shape[0];
                let terms: Vec<Term> = factors
                    .iter()
                    .map(|(w, pairs)| Term { weight: w / total, a: &pairs[s].0, b: &pairs[s].1 })
                    .collect();
                slot[0] = Some(low_rank_sum(&terms, outputs, inputs, rank, s as u64));
            });
            for (&(a, b), result) in self.pairs.iter().zip(results) {
                let (bv, av, kept) = result.expect("every site was aggregated");
                out[a].values = av;
                out[b].values = bv;
                min_energy_kept = min_energy_kept.min(kept);
            }
        }
        let report = AggregateReport {
            rule: self.rule,
            contributions: self.devices,
            lora_sites: self.pairs.len(),
            min_energy_kept,
        };
        Ok((out, report))
    }
}

/// Indices of each `(lora_A, lora_B)` pair in `tensors`.
fn lora_pairs(tensors: &[Values]) -> Vec<(usize, usize)> {
    let index: BTreeMap<&str, usize> =
        tensors.iter().enumerate().map(|(i, v)| (v.name.as_str(), i)).collect();
    tensors
        .iter()
        .enumerate()
        .filter_map(|(a, v)| {
            let site = v.name.strip_suffix(".lora_A.weight")?;
            let &b = index.get(format!("{site}.lora_B.weight").as_str())?;
            (v.shape.len() == 2 && tensors[b].shape.len() == 2 && tensors[b].shape[1] == v.shape[0])
                .then_some((a, b))
        })
        .collect()
}

/// `weight · B·A` of one device at one site (`B: [out, r]`, `A: [r, in]`, row-major).
struct Term<'a> {
    weight: f64,
    b: &'a [f32],
    a: &'a [f32],
}

/// Extra directions the randomized range finder samples beyond the rank it keeps.
const OVERSAMPLE: usize = 10;
/// Power iterations: each sharpens the range towards the top singular directions.
const POWER_ITERATIONS: usize = 2;

/// `M = Σ w_i B_i A_i` (`out x in`) as `B'·A'` of rank `rank`, balanced (`B' = U√Σ`,
/// `A' = √Σ Vᵀ`), and the share of `‖M‖²_F` it keeps among the directions found. Never forms
/// `M`: a randomized range finder with power iterations (Halko et al. 2011) works through the
/// factors, so the cost grows linearly with the devices; when the factors' total rank is at
/// most `rank + OVERSAMPLE` the range is sampled whole and the result is exact.
fn low_rank_sum(terms: &[Term], out: usize, inp: usize, rank: usize, seed: u64) -> (Vec<f32>, Vec<f32>, f64) {
    let total_rank: usize = terms.iter().map(|t| t.a.len() / inp).sum();
    let k = total_rank.min(rank + OVERSAMPLE).min(out).min(inp).max(1);
    // M·X for X `in x k`, and Mᵀ·Y for Y `out x k`, through the factors.
    let m_times = |x: &[f64]| {
        let mut y = vec![0f64; out * k];
        for t in terms {
            let r = t.a.len() / inp;
            let ax = matmul(t.a, r, inp, x, k);
            let bax = matmul(t.b, out, r, &ax, k);
            y.iter_mut().zip(bax).for_each(|(y, v)| *y += t.weight * v);
        }
        y
    };
    let mt_times = |y: &[f64]| {
        let mut x = vec![0f64; inp * k];
        for t in terms {
            let r = t.a.len() / inp;
            let bty = matmul_t(t.b, out, r, y, k);
            let atbty = matmul_t(t.a, r, inp, &bty, k);
            x.iter_mut().zip(atbty).for_each(|(x, v)| *x += t.weight * v);
        }
        x
    };
    let mut rng = SplitMix(seed ^ 0x5EED_F00D);
    let omega: Vec<f64> = (0..inp * k).map(|_| rng.normal()).collect();
    let mut q = m_times(&omega);
    orthonormalize(&mut q, out, k);
    for _ in 0..POWER_ITERATIONS {
        let mut z = mt_times(&q);
        orthonormalize(&mut z, inp, k);
        q = m_times(&z);
        orthonormalize(&mut q, out, k);
    }
    // C = Qᵀ M (`k x in`) = (Mᵀ Q)ᵀ; its left singular vectors come from C Cᵀ (`k x k`).
    let ct = mt_times(&q); // `in x k`
    let mut gram = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            gram[i * k + j] = (0..inp).map(|p| ct[p * k + i] * ct[p * k + j]).sum();
        }
    }
    let (eigenvalues, vectors) = symmetric_eigen(gram, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| eigenvalues[j].total_cmp(&eigenvalues[i]));
    let energy: f64 = eigenvalues.iter().map(|&l| l.max(0.0)).sum();
    let mut kept = 0.0;
    let (mut b_out, mut a_out) = (vec![0f32; out * rank], vec![0f32; rank * inp]);
    for (j, &e) in order.iter().take(rank).enumerate() {
        let lambda = eigenvalues[e].max(0.0);
        let sigma = crate::linalg::sqrt(lambda);
        if sigma <= 1e-12 * crate::linalg::sqrt(energy.max(f64::MIN_POSITIVE)) {
            continue;
        }
        kept += lambda;
        let root = crate::linalg::sqrt(sigma);
        // Left vector: Q·u (out); right vector: Cᵀ·u / σ (in).
        for row in 0..out {
            let v: f64 = (0..k).map(|c| q[row * k + c] * vectors[c * k + e]).sum();
            b_out[row * rank + j] = (v * root) as f32;
        }
        for col in 0..inp {
            let v: f64 = (0..k).map(|c| ct[col * k + c] * vectors[c * k + e]).sum::<f64>() / sigma;
            a_out[j * inp + col] = (v * root) as f32;
        }
    }
    let kept_share = if energy > 0.0 { kept / energy } else { 1.0 };
    (b_out, a_out, kept_share)
}

/// `a (rows x inner, f32) · x (inner x k)`.
fn matmul(a: &[f32], rows: usize, inner: usize, x: &[f64], k: usize) -> Vec<f64> {
    let mut y = vec![0f64; rows * k];
    for i in 0..rows {
        let yi = &mut y[i * k..(i + 1) * k];
        for p in 0..inner {
            let av = f64::from(a[i * inner + p]);
            if av != 0.0 {
                yi.iter_mut().zip(&x[p * k..(p + 1) * k]).for_each(|(y, &x)| *y += av * x);
            }
        }
    }
    y
}

/// `aᵀ · y` for `a (rows x cols, f32)` and `y (rows x k)`: `cols x k`.
fn matmul_t(a: &[f32], rows: usize, cols: usize, y: &[f64], k: usize) -> Vec<f64> {
    let mut x = vec![0f64; cols * k];
    for i in 0..rows {
        let yi = &y[i * k..(i + 1) * k];
        for p in 0..cols {
            let av = f64::from(a[i * cols + p]);
            if av != 0.0 {
                x[p * k..(p + 1) * k].iter_mut().zip(yi).for_each(|(x, &y)| *x += av * y);
            }
        }
    }
    x
}

/// Orthonormal columns of `m (rows x k)` by modified Gram-Schmidt, run twice for stability;
/// a column with nothing left (a rank-deficient range) becomes zero.
fn orthonormalize(m: &mut [f64], rows: usize, k: usize) {
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _ in 0..2 {
        for j in 0..k {
            for i in 0..j {
                let dot: f64 = (0..rows).map(|r| m[r * k + i] * m[r * k + j]).sum();
                (0..rows).for_each(|r| m[r * k + j] -= dot * m[r * k + i]);
            }
            let norm = crate::linalg::sqrt((0..rows).map(|r| m[r * k + j] * m[r * k + j]).sum());
            let factor = if norm * norm > 1e-24 * scale { 1.0 / norm } else { 0.0 };
            (0..rows).for_each(|r| m[r * k + j] *= factor);
        }
    }
}

/// A small deterministic generator for the range finder's test matrix (not for secrets).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A standard normal sample (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        crate::linalg::sqrt(-2.0 * u1.ln()) * (2.0 * core::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(name: &str, shape: [usize; 2], seed: u64) -> Values {
        let mut rng = SplitMix(seed);
        Values {
            name: name.into(),
            shape: shape.to_vec(),
            values: (0..shape[0] * shape[1]).map(|_| rng.normal() as f32).collect(),
        }
    }

    fn adapter(seed: u64, rank: usize) -> Vec<Values> {
        vec![
            values("m.layers.0.self_attn.q_proj.lora_A.weight", [rank, 24], seed),
            values("m.layers.0.self_attn.q_proj.lora_B.weight", [16, rank], seed + 1),
            values("m.layers.0.ia3_l", [1, 5], seed + 2),
        ]
    }

    /// Σ w_i B_i A_i as a dense `out x in` matrix.
    fn dense_sum(adapters: &[Vec<Values>], weights: &[f64]) -> Vec<f64> {
        let total: f64 = weights.iter().sum();
        let mut m = vec![0f64; 16 * 24];
        for (t, w) in adapters.iter().zip(weights) {
            let (a, b) = (&t[0], &t[1]);
            let r = a.shape[0];
            for i in 0..16 {
                for j in 0..24 {
                    m[i * 24 + j] += w / total
                        * (0..r)
                            .map(|p| f64::from(b.values[i * r + p]) * f64::from(a.values[p * 24 + j]))
                            .sum::<f64>();
                }
            }
        }
        m
    }

    fn product(t: &[Values]) -> Vec<f64> {
        dense_sum(&[t.to_vec()], &[1.0])
    }

    #[test]
    fn fedavg_is_the_exact_mean_of_the_deltas_when_the_rank_allows() {
        // Two devices of rank 4 into rank 8: the mean of B_i A_i has rank 8, kept exactly.
        let devices = [adapter(1, 4), adapter(10, 4)];
        let global4 = adapter(100, 4);
        let mut global = adapter(100, 8);
        global[2] = global4[2].clone();
        let contributions: Vec<Contribution> = devices
            .iter()
            .zip([1.0, 3.0])
            .map(|(t, w)| Contribution { tensors: t.clone(), weight: w })
            .collect();
        // Shapes must match the shared adapter: rank 4 devices into a rank 8 global is refused…
        assert!(aggregate(Rule::FedAvg, &global, &contributions).unwrap_err().contains("shape"));
        // …so pad each device's factors to rank 8 with zeros (the same product).
        let pad = |t: &Vec<Values>| {
            let mut t = t.clone();
            t[0].values.extend(vec![0.0; 4 * 24]);
            t[0].shape = vec![8, 24];
            t[1].values = t[1].values.chunks(4).flat_map(|row| row.iter().copied().chain([0.0; 4])).collect();
            t[1].shape = vec![16, 8];
            t
        };
        let padded: Vec<Contribution> = contributions
            .iter()
            .map(|c| Contribution { tensors: pad(&c.tensors), weight: c.weight })
            .collect();
        let (out, report) = aggregate(Rule::FedAvg, &global, &padded).unwrap();
        let want = dense_sum(&[devices[0].clone(), devices[1].clone()], &[1.0, 3.0]);
        let got = product(&out);
        let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "max error {err}");
        assert!((report.min_energy_kept - 1.0).abs() < 1e-9);
        // The non-LoRA tensor is the weighted mean.
        let mean = 0.25 * devices[0][2].values[3] + 0.75 * devices[1][2].values[3];
        assert!((out[2].values[3] - mean).abs() < 1e-6);
    }

    #[test]
    fn fedavg_truncation_is_the_best_rank_r_approximation_and_fedit_is_biased() {
        let devices: Vec<Vec<Values>> = (0..6).map(|d| adapter(7 * d + 1, 4)).collect();
        let global = adapter(1000, 4);
        let contributions: Vec<Contribution> =
            devices.iter().map(|t| Contribution { tensors: t.clone(), weight: 1.0 }).collect();
        let want = dense_sum(&devices, &[1.0; 6]);
        let frob = |m: &[f64]| m.iter().map(|x| x * x).sum::<f64>().sqrt();
        let residual = |t: &[Values]| {
            let got = product(t);
            frob(&want.iter().zip(&got).map(|(a, b)| a - b).collect::<Vec<_>>()) / frob(&want)
        };
        let (fedavg, report) = aggregate(Rule::FedAvg, &global, &contributions).unwrap();
        let (fedit, _) = aggregate(Rule::FedIt, &global, &contributions).unwrap();
        // The optimal rank-4 error from the dense SVD: √(Σ_{j>4} σ_j²)/‖M‖, via MᵀM's eigenvalues.
        let mut gram = vec![0f64; 24 * 24];
        for i in 0..24 {
            for j in 0..24 {
                gram[i * 24 + j] = (0..16).map(|r| want[r * 24 + i] * want[r * 24 + j]).sum();
            }
        }
        let (mut eig, _) = symmetric_eigen(gram, 24);
        eig.sort_by(|a, b| b.total_cmp(a));
        let optimal = (eig[4..].iter().map(|l| l.max(0.0)).sum::<f64>()
            / eig.iter().map(|l| l.max(0.0)).sum::<f64>())
        .sqrt();
        let (r_avg, r_it) = (residual(&fedavg), residual(&fedit));
        assert!((r_avg - optimal).abs() < 1e-3, "fedavg {r_avg} vs optimal {optimal}");
        assert!(r_it > r_avg + 0.1, "fedit {r_it} should be clearly worse than fedavg {r_avg}");
        assert!(report.min_energy_kept < 1.0 && report.min_energy_kept > 0.3);
    }

    #[test]
    fn ffa_averages_b_exactly_and_refuses_a_trained_a() {
        let global = adapter(5, 4);
        let devices: Vec<Vec<Values>> = (0..3)
            .map(|d| {
                let mut t = adapter(50 + d, 4);
                t[0] = global[0].clone();
                t
            })
            .collect();
        let contributions: Vec<Contribution> = devices
            .iter()
            .zip([1.0, 1.0, 2.0])
            .map(|(t, w)| Contribution { tensors: t.clone(), weight: w })
            .collect();
        let (out, _) = aggregate(Rule::Ffa, &global, &contributions).unwrap();
        let want = dense_sum(&devices, &[1.0, 1.0, 2.0]);
        let got = product(&out);
        assert!(want.iter().zip(&got).all(|(a, b)| (a - b).abs() < 1e-5));
        let mut moved = contributions.clone();
        moved[1].tensors[0].values[0] += 0.5;
        let err = aggregate(Rule::Ffa, &global, &moved).unwrap_err();
        assert!(err.contains("device 1") && err.contains("freeze_a"), "{err}");
    }

    #[test]
    fn bad_contributions_are_named() {
        let global = adapter(5, 4);
        let mut nan = adapter(6, 4);
        nan[1].values[2] = f32::NAN;
        let err =
            aggregate(Rule::FedAvg, &global, &[Contribution { tensors: nan, weight: 1.0 }]).unwrap_err();
        assert!(err.contains("device 0") && err.contains("lora_B") && err.contains("NaN"), "{err}");
        let mut missing = adapter(6, 4);
        missing.pop();
        let err =
            aggregate(Rule::FedAvg, &global, &[Contribution { tensors: missing, weight: 1.0 }]).unwrap_err();
        assert!(err.contains("missing"), "{err}");
        let err = aggregate(Rule::FedAvg, &global, &[Contribution { tensors: adapter(6, 4), weight: -1.0 }])
            .unwrap_err();
        assert!(err.contains("weight"), "{err}");
    }
}
