//! A deterministic stream of pseudo-random bits from a 32-byte seed: SHA-256 of the seed and a
//! block counter (a hash in counter mode). Both ends of a secure-aggregation pair expand the same
//! agreed seed into the same mask with it, and client-side noise draws from it seeded by the OS.

use sha2::{Digest, Sha256};

pub struct Prg {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl Prg {
    pub fn new(seed: [u8; 32]) -> Self {
        Self { seed, counter: 0, block: [0; 32], used: 32 }
    }

    /// Seeded from the operating system's (or the browser's) randomness.
    pub fn from_os() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Self::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        if self.used + 8 > 32 {
            let mut hash = Sha256::new();
            hash.update(self.seed);
            hash.update(self.counter.to_le_bytes());
            self.block = hash.finalize().into();
            self.counter += 1;
            self.used = 0;
        }
        let bytes: [u8; 8] = self.block[self.used..self.used + 8].try_into().expect("8 bytes");
        self.used += 8;
        u64::from_le_bytes(bytes)
    }

    /// A uniform sample in `(0, 1]` with 53 random bits.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_normals_have_unit_variance() {
        let (mut a, mut b) = (Prg::new([7; 32]), Prg::new([7; 32]));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Prg::new([8; 32]).next_u64(), Prg::new([7; 32]).next_u64());
        let mut g = Prg::new([1; 32]);
        let n = 200_000;
        let samples: Vec<f64> = (0..n).map(|_| g.normal()).collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "mean {mean} var {var}");
    }
}
