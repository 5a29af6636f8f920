//! Turns logits into the next token: repetition penalty, temperature, top-k, top-p, min-p, then a
//! seeded draw. Greedy when the temperature is 0.

use crate::error::Error;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = no limit.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 1 = no limit.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens; 1 = off (the
    /// default, as in transformers and llama.cpp, so that temperature 0 is plain greedy).
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::option("temperature", self.temperature, "must be >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::option("top_p", self.top_p, "must be in (0, 1]"));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(Error::option("min_p", self.min_p, "must be in [0, 1)"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::option("repetition_penalty", self.repetition_penalty, "must be > 0"));
        }
        Ok(())
    }
}

/// A seeded sampler. The random stream depends only on the seed, so runs are reproducible on
/// every platform.
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, Error> {
        params.validate()?;
        let rng = SplitMix64(params.seed);
        Ok(Self { params, rng, candidates: Vec::new() })
    }

    /// Picks the next token from `logits` given the tokens seen so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut candidates = core::mem::take(&mut self.candidates);
        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let token = self.sample_from(&mut candidates, history);
        self.candidates = candidates;
        token
    }

    /// The tokens whose logits the repetition penalty changes, sorted.
    pub fn penalized(&self, history: &[u32]) -> Vec<u32> {
        let p = &self.params;
        if p.repetition_penalty == 1.0 {
            return Vec::new();
        }
        let mut seen = history[history.len().saturating_sub(p.repeat_last_n)..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    /// How many of the highest raw logits [`sample_from`](Self::sample_from) needs, besides
    /// those of the [`penalized`](Self::penalized) tokens, to pick exactly what
    /// [`sample`](Self::sample) picks from all of them; `None` when it needs all. The penalty
    /// only lowers logits, so a token below the top `k + penalized` cannot reach the top `k`.
    pub fn candidates_needed(&self, history: &[u32]) -> Option<usize> {
        let p = &self.params;
        let k = if p.temperature == 0.0 { 1 } else { p.top_k };
        (k > 0).then(|| k + self.penalized(history).len())
    }

    /// [`sample`](Self::sample) from `(token, raw logit)` pairs: every token, or the top ones
    /// and the penalized ones (see [`candidates_needed`](Self::candidates_needed)).
    pub fn sample_from(&mut self, candidates: &mut Vec<(u32, f32)>, history: &[u32]) -> u32 {
        let p = &self.params;
        let penalized = self.penalized(history);
        for c in candidates.iter_mut().filter(|c| penalized.binary_search(&c.0).is_ok()) {
            c.1 = if c.1 > 0.0 { c.1 / p.repetition_penalty } else { c.1 * p.repetition_penalty };
        }
        // Ties go to the lower token id, so the order never depends on how candidates arrived.
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.temperature == 0.0 {
            return candidates.iter().min_by(|a, b| by_logit_desc(a, b)).map_or(0, |c| c.0);
        }
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            candidates.truncate(p.top_k);
        }
        candidates.sort_unstable_by(by_logit_desc);

        // Softmax at the temperature over the survivors, then the nucleus and min-p cuts on the
        // probabilities. Subtracting the maximum before dividing keeps tiny temperatures finite.
        let max = candidates[0].1;
        let mut total = 0.0;
        for c in candidates.iter_mut() {
            c.1 = ((c.1 - max) / p.temperature).exp();
            total += c.1;
        }
        let mut kept = 0;
        let mut mass = 0.0;
        let floor = p.min_p * candidates[0].1 / total;
        for c in candidates.iter() {
            let prob = c.1 / total;
            if kept > 0 && (mass >= p.top_p || prob < floor) {
                break;
            }
            mass += prob;
            kept += 1;
        }
        candidates.truncate(kept);

        let sum: f32 = candidates.iter().map(|c| c.1).sum();
        let mut draw = self.rng.next_f32() * sum;
        for &(token, weight) in candidates.iter() {
            if draw < weight {
                return token;
            }
            draw -= weight;
        }
        candidates[kept - 1].0
    }
}

/// SplitMix64: tiny, fast, and identical everywhere (no platform RNG).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) from the top 24 bits.
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9], &[]), 1);
    }

    #[test]
    fn repetition_penalty_can_flip_the_argmax() {
        let mut s =
            Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() }).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.0], &[1]), 3);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_seed() {
        for seed in 0..20 {
            let mut s = Sampler::new(SamplingParams { top_k: 1, seed, ..params(1.5) }).unwrap();
            assert_eq!(s.sample(&[0.0, 1.0, 0.5, 0.9], &[]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top-p 0.7 keeps two tokens.
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let mut seen = [false; 4];
        for seed in 0..200 {
            let mut s = Sampler::new(SamplingParams { top_p: 0.7, seed, ..params(1.0) }).unwrap();
            seen[s.sample(&logits, &[]) as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false]);
        let mut seen = [false; 4];
        for seed in 0..200 {
            let mut s = Sampler::new(SamplingParams { min_p: 0.2, seed, ..params(1.0) }).unwrap();
            seen[s.sample(&logits, &[]) as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false]);
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let mut s = Sampler::new(params(1.0)).unwrap();
        let ones = (0..4000).filter(|_| s.sample(&logits, &[]) == 1).count();
        assert!((2850..3150).contains(&ones), "{ones}");
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) }).unwrap();
            (0..32).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn a_tiny_temperature_is_practically_greedy() {
        let mut s = Sampler::new(SamplingParams { temperature: 1e-40, ..SamplingParams::default() }).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9], &[]), 1);
    }

    /// The top `candidates_needed` logits plus the penalized ones pick what all logits pick,
    /// greedy or sampled, with a penalty that pushes tokens out of the top k.
    #[test]
    fn the_needed_candidates_pick_what_all_logits_pick() {
        let logits: Vec<f32> = (0..300u32).map(|i| ((i * 7919) % 300) as f32 / 37.0 - 3.0).collect();
        let history: Vec<u32> = (0..300u32).filter(|i| (i * 7919) % 300 > 280).collect();
        for params in [
            SamplingParams { repetition_penalty: 3.0, ..SamplingParams::greedy() },
            SamplingParams { repetition_penalty: 3.0, top_k: 5, ..params(1.0) },
            SamplingParams::default(),
        ] {
            for seed in 0..20 {
                let mut all = Sampler::new(SamplingParams { seed, ..params.clone() }).unwrap();
                let mut some = Sampler::new(SamplingParams { seed, ..params.clone() }).unwrap();
                let k = some.candidates_needed(&history).unwrap();
                let mut top: Vec<(u32, f32)> =
                    logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                top.truncate(k);
                for t in some.penalized(&history) {
                    if !top.iter().any(|c| c.0 == t) {
                        top.push((t, logits[t as usize]));
                    }
                }
                assert_eq!(some.sample_from(&mut top, &history), all.sample(&logits, &history), "{params:?}");
            }
        }
        assert_eq!(Sampler::new(params(1.0)).unwrap().candidates_needed(&history), None);
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { min_p: 1.0, ..Default::default() }).is_err());
    }
}
