//! Client-level differential privacy for federated rounds (DP-FedAvg, McMahan et al. 2018;
//! methods.md §8.3): each device clips its update to L2 norm `C` and adds its share of the
//! Gaussian noise, so that the sum of any quorum of `m` updates carries noise of standard
//! deviation at least `z·C` without the server adding (or seeing) anything; each device takes
//! part in a round with probability `q` (Poisson sampling, decided on the device). An RDP
//! accountant for the sampled Gaussian mechanism (Mironov 2017; Mironov, Talwar and Zhang 2019)
//! turns `(q, z, rounds)` into `(ε, δ)`.

use serde::{Deserialize, Serialize};

use super::prg::Prg;
use crate::patch::Values;

/// A task's privacy settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// `C`: each update's L2 norm is clipped to this.
    pub clip_norm: f64,
    /// `z`: the noise on a round's sum has standard deviation `z·C`.
    pub noise_multiplier: f64,
    /// `q`: the probability that an enrolled device takes part in a round.
    pub sample_rate: f64,
    pub delta: f64,
    /// The task stops before a round would take `ε` past this.
    pub epsilon_budget: f64,
}

impl Privacy {
    /// Refuses settings out of range, naming the field.
    pub fn check(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("privacy.{name} = {v}: must be a positive number"))
            }
        };
        positive("clip_norm", self.clip_norm)?;
        positive("noise_multiplier", self.noise_multiplier)?;
        positive("epsilon_budget", self.epsilon_budget)?;
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(format!("privacy.sample_rate = {}: must be in (0, 1]", self.sample_rate));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("privacy.delta = {}: must be in (0, 1)", self.delta));
        }
        Ok(())
    }

    /// The standard deviation of the noise one device adds when a round needs at least
    /// `min_clients` updates: `z·C/√m`, so any `m` of them sum to noise of `z·C`.
    pub fn client_noise_std(&self, min_clients: usize) -> f64 {
        self.noise_multiplier * self.clip_norm / (min_clients.max(1) as f64).sqrt()
    }

    /// `ε` after `rounds` rounds at this `δ`.
    pub fn epsilon(&self, rounds: u64) -> f64 {
        epsilon(self.sample_rate, self.noise_multiplier, rounds, self.delta)
    }
}

/// The L2 norm of every value of `update` together.
pub fn norm(update: &[Values]) -> f64 {
    update.iter().flat_map(|v| &v.values).map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// Scales `update` to L2 norm at most `clip_norm`; returns its norm before.
pub fn clip(update: &mut [Values], clip_norm: f64) -> f64 {
    let before = norm(update);
    if before > clip_norm {
        let factor = (clip_norm / before) as f32;
        update.iter_mut().flat_map(|v| &mut v.values).for_each(|x| *x *= factor);
    }
    before
}

/// Adds independent `N(0, std²)` noise to every value of `update`.
pub fn add_noise(update: &mut [Values], std: f64, prg: &mut Prg) {
    update.iter_mut().flat_map(|v| &mut v.values).for_each(|x| *x += (std * prg.normal()) as f32);
}

/// The RDP orders the accountant minimises over (those of Google's `dp-accounting`).
fn orders() -> impl Iterator<Item = f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((11..64).map(f64::from))
        .chain([128.0, 256.0, 512.0, 1024.0])
}

/// `ε` of `rounds` compositions of the Poisson-subsampled Gaussian mechanism (rate `q`, noise
/// multiplier `z`) at `δ`, from its Rényi DP with the conversion of Balle et al. (2020).
pub fn epsilon(q: f64, z: f64, rounds: u64, delta: f64) -> f64 {
    orders()
        .map(|alpha| {
            let rdp = rounds as f64 * rdp_sampled_gaussian(q, z, alpha);
            if delta * delta + (-rdp).exp_m1() > 0.0 {
                0.0
            } else {
                rdp + (-1.0 / alpha).ln_1p() - (delta * alpha).ln() / (alpha - 1.0)
            }
        })
        .fold(f64::INFINITY, f64::min)
        .max(0.0)
}

/// RDP of order `alpha` of one step of the sampled Gaussian mechanism.
fn rdp_sampled_gaussian(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        0.0
    } else if q == 1.0 {
        alpha / (2.0 * sigma * sigma)
    } else if alpha.fract() == 0.0 {
        log_a_int(q, sigma, alpha as u64) / (alpha - 1.0)
    } else {
        log_a_frac(q, sigma, alpha) / (alpha - 1.0)
    }
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

fn log_sub(a: f64, b: f64) -> f64 {
    if b == f64::NEG_INFINITY {
        a
    } else if a <= b {
        // The series' partial sums stay positive; equal terms cancel to nothing.
        f64::NEG_INFINITY
    } else {
        a + (-(b - a).exp()).ln_1p()
    }
}

/// `ln |C(n, k)|` for real `n` (the generalized binomial) by the log-gamma function (`lgamma`
/// is `ln |Γ|`, also for the negative arguments of `k > n + 1`).
fn log_binomial(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `ln A_α` for an integer order: the binomial expansion.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    (0..=alpha)
        .map(|i| {
            let i = i as f64;
            log_binomial(alpha as f64, i)
                + i * q.ln()
                + (alpha as f64 - i) * (1.0 - q).ln()
                + (i * i - i) / (2.0 * sigma * sigma)
        })
        .fold(f64::NEG_INFINITY, log_add)
}

/// `ln A_α` for a fractional order: the two series of Mironov, Talwar and Zhang (2019), summed
/// until their terms vanish.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let mut i = 0.0f64;
    loop {
        let j = alpha - i;
        // The generalized binomial C(α, i) is negative for odd i > α; its sign picks add/subtract.
        let negative = i > alpha.floor() + 1.0 && (i - alpha.floor() - 1.0) % 2.0 == 1.0;
        let log_coef = log_binomial(alpha, i);
        let log_t0 = log_coef + i * q.ln() + j * (1.0 - q).ln();
        let log_t1 = log_coef + j * q.ln() + i * (1.0 - q).ln();
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (std::f64::consts::SQRT_2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        if negative {
            log_a0 = log_sub(log_a0, log_s0);
            log_a1 = log_sub(log_a1, log_s1);
        } else {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        }
        i += 1.0;
        if log_s0.max(log_s1) < -30.0 {
            return log_add(log_a0, log_a1);
        }
        if i >= 1000.0 {
            // Not converged: the order is left out (it can only raise ε), as dp-accounting does.
            return f64::INFINITY;
        }
    }
}

/// `ln erfc(x)`, accurate where `erfc` underflows (large `x`: its asymptotic series).
fn log_erfc(x: f64) -> f64 {
    if x < 20.0 {
        libm::erfc(x).ln()
    } else {
        let x2 = x * x;
        -x2 - x.ln() - 0.5 * std::f64::consts::PI.ln() + (1.0 - 0.5 / x2 + 0.75 / (x2 * x2)).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_bounds_the_norm_and_keeps_small_updates() {
        let mut big = vec![Values { name: "b".into(), shape: vec![2, 2], values: vec![3.0, 4.0, 0.0, 12.0] }];
        assert_eq!(clip(&mut big, 1.0), 13.0);
        assert!((norm(&big) - 1.0).abs() < 1e-6);
        let mut small = vec![Values { name: "b".into(), shape: vec![1, 2], values: vec![0.3, 0.4] }];
        clip(&mut small, 1.0);
        assert_eq!(small[0].values, vec![0.3, 0.4]);
    }

    #[test]
    fn the_noise_of_a_quorum_sums_to_z_c() {
        let privacy = Privacy {
            clip_norm: 0.5,
            noise_multiplier: 1.2,
            sample_rate: 0.1,
            delta: 1e-5,
            epsilon_budget: 8.0,
        };
        let m = 8;
        let std = privacy.client_noise_std(m);
        let mut prg = Prg::new([3; 32]);
        let n = 20_000;
        let mut sum = vec![Values { name: "b".into(), shape: vec![1, n], values: vec![0.0; n] }];
        for _ in 0..m {
            add_noise(&mut sum, std, &mut prg);
        }
        let measured = norm(&sum) / (n as f64).sqrt();
        assert!((measured / (1.2 * 0.5) - 1.0).abs() < 0.02, "sum noise std {measured}");
    }

    #[test]
    fn full_participation_matches_the_gaussian_closed_form() {
        // q = 1: RDP(α) = Tα/(2z²); the conversion's minimum over the orders.
        let (z, t, delta) = (2.0, 10u64, 1e-5);
        let want = orders()
            .map(|a| t as f64 * a / (2.0 * z * z) + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0))
            .fold(f64::INFINITY, f64::min);
        assert!((epsilon(1.0, z, t, delta) - want).abs() < 1e-12);
    }

    #[test]
    fn subsampling_amplifies_privacy_and_more_rounds_cost_more() {
        let e1 = epsilon(0.01, 1.1, 1000, 1e-5);
        let e2 = epsilon(0.01, 1.1, 4000, 1e-5);
        let full = epsilon(1.0, 1.1, 1000, 1e-5);
        assert!(e1 > 0.0 && e1 < e2 && e2 < full, "{e1} {e2} {full}");
        // Abadi et al. (2016)'s known figure: q = 0.01, z = 4, 10⁴ steps, δ = 1e-5 gives ε ≈ 1.2
        // with the moments accountant; RDP with this conversion is a little tighter.
        let e = epsilon(0.01, 4.0, 10_000, 1e-5);
        assert!(e > 0.8 && e < 1.3, "{e}");
    }

    /// Against Google's dp-accounting (tests/reference/make_dp_epsilons.py made the figures).
    #[test]
    fn epsilons_match_dp_accounting_within_one_percent() {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/reference/golden/dp_epsilons.json")).unwrap();
        for case in golden["cases"].as_array().unwrap() {
            let f = |k: &str| case[k].as_f64().unwrap();
            let ours = epsilon(f("q"), f("z"), f("rounds") as u64, f("delta"));
            let theirs = f("epsilon");
            assert!((ours / theirs - 1.0).abs() < 0.01, "{case}: ours {ours}");
        }
    }
}
