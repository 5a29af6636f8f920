//! Secure aggregation (Bonawitz et al. 2017, "Practical secure aggregation for privacy-preserving
//! machine learning"; methods.md §8.4): the server learns the sum of the devices' updates and
//! nothing else, and the sum survives devices that drop out after they masked their input.
//!
//! Each device `u` of a round holds two X25519 key pairs (`c` to encrypt, `s` to agree on masks)
//! and a random self-mask seed `b_u`. Updates are fixed-point integers mod 2³² ([`encode`]). A
//! device sends `y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)`: the pairwise masks
//! cancel in the sum. Before masking, each device splits `b_u` and its secret `s_u` into
//! Shamir shares (any `t` of them rebuild it, fewer tell nothing) and sends each other device
//! its share encrypted with their `c` agreement, through the server. To unmask, the survivors
//! reveal their shares of each survivor's `b` and of each dropped device's `s`: the server
//! removes the self-masks and the masks a dropped device would have cancelled. It never gets
//! both `b_u` and `s_u` of a device, so no single `y_u` is ever unmasked.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use super::prg::Prg;

/// Fractional bits of the fixed-point encoding: a step of 2⁻¹⁶ ≈ 1.5e-5 per value and device.
pub const FRACTION_BITS: u32 = 16;
/// Shamir shares are indexed by a byte: at most this many devices in a secure round.
pub const MAX_DEVICES: usize = 255;

/// `values` as fixed-point integers mod 2³², refusing any whose sum over `devices` devices could
/// wrap around (|x|·2¹⁶·devices ≥ 2³¹), naming the first.
pub fn encode(values: &[f32], devices: usize) -> Result<Vec<u32>, String> {
    let scale = f64::from(1u32 << FRACTION_BITS);
    let limit = f64::from(i32::MAX) / scale / devices.max(1) as f64;
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if !(f64::from(x).abs() < limit) {
                return Err(format!(
                    "value {i} = {x} is outside ±{limit:.1}, the fixed-point range for {devices} devices"
                ));
            }
            Ok((f64::from(x) * scale).round() as i64 as u32)
        })
        .collect()
}

/// The mean of `devices` encoded inputs from their sum mod 2³².
pub fn decode_mean(sum: &[u32], devices: usize) -> Vec<f32> {
    let scale = f64::from(1u32 << FRACTION_BITS) * devices.max(1) as f64;
    sum.iter().map(|&v| (f64::from(v as i32) / scale) as f32).collect()
}

/// What every key agreement and share of a round is bound to.
pub fn context(task: &str, round: u64) -> Vec<u8> {
    format!("adaptkit/{task}/{round}").into_bytes()
}

/// A device's secrets for one round.
#[derive(Clone, Serialize, Deserialize)]
pub struct RoundSecrets {
    c: [u8; 32],
    s: [u8; 32],
    b: [u8; 32],
}

/// A device's public keys for one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    pub c: [u8; 32],
    pub s: [u8; 32],
}

/// One device's shares for another: of its `s` secret and of its self-mask seed `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shares {
    pub s: [u8; 32],
    pub b: [u8; 32],
}

impl RoundSecrets {
    pub fn generate(prg: &mut Prg) -> Self {
        let mut bytes = [[0u8; 32]; 3];
        for b in bytes.iter_mut().flat_map(|a| a.chunks_exact_mut(8)) {
            b.copy_from_slice(&prg.next_u64().to_le_bytes());
        }
        Self { c: bytes[0], s: bytes[1], b: bytes[2] }
    }

    pub fn public(&self) -> PublicKeys {
        let public = |k: &[u8; 32]| PublicKey::from(&StaticSecret::from(*k)).to_bytes();
        PublicKeys { c: public(&self.c), s: public(&self.s) }
    }

    /// This device's shares for every participant (in `participants` order, `t` of them
    /// rebuild), each encrypted for its receiver. `me` is this device's index.
    pub fn encrypted_shares(
        &self,
        me: usize,
        participants: &[PublicKeys],
        threshold: usize,
        context: &[u8],
        prg: &mut Prg,
    ) -> Vec<Vec<u8>> {
        let s_shares = shamir_split(&self.s, participants.len(), threshold, prg);
        let b_shares = shamir_split(&self.b, participants.len(), threshold, prg);
        participants
            .iter()
            .enumerate()
            .map(|(v, keys)| {
                let mut plain = s_shares[v].to_vec();
                plain.extend_from_slice(&b_shares[v]);
                let cipher = self.channel(keys, context);
                let aad = [context, &(me as u32).to_le_bytes(), &(v as u32).to_le_bytes()].concat();
                cipher.encrypt(&nonce(me, v), Payload { msg: &plain, aad: &aad }).expect("encryption")
            })
            .collect()
    }

    /// The shares device `from` sent this device (`me`), decrypted and checked.
    pub fn open_shares(
        &self,
        from: usize,
        me: usize,
        sender: &PublicKeys,
        context: &[u8],
        ciphertext: &[u8],
    ) -> Result<Shares, String> {
        let aad = [context, &(from as u32).to_le_bytes(), &(me as u32).to_le_bytes()].concat();
        let plain = self
            .channel(sender, context)
            .decrypt(&nonce(from, me), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| format!("the shares from participant {from} do not decrypt"))?;
        let plain: [u8; 64] = plain
            .try_into()
            .map_err(|_| format!("the shares from participant {from} have the wrong length"))?;
        Ok(Shares { s: plain[..32].try_into().expect("32"), b: plain[32..].try_into().expect("32") })
    }

    fn channel(&self, other: &PublicKeys, context: &[u8]) -> ChaCha20Poly1305 {
        let shared = StaticSecret::from(self.c).diffie_hellman(&PublicKey::from(other.c));
        let key = Sha256::new()
            .chain_update(b"adaptkit-secagg-share")
            .chain_update(context)
            .chain_update(shared.as_bytes())
            .finalize();
        ChaCha20Poly1305::new(&key)
    }

    /// `y_u`: `input` plus this device's self-mask and its pairwise masks with every other
    /// device in `masking` (the participants that sent their shares, in order; `me` indexes it).
    pub fn masked(&self, input: &[u32], me: usize, masking: &[PublicKeys], context: &[u8]) -> Vec<u32> {
        let mut y = input.to_vec();
        add_mask(&mut y, self.b, true);
        for (v, keys) in masking.iter().enumerate().filter(|&(v, _)| v != me) {
            add_mask(&mut y, pair_seed(&self.s, &keys.s, context), v > me);
        }
        y
    }
}

/// The nonce of the shares `from` sends `to` (each pair's key is shared by both directions).
fn nonce(from: usize, to: usize) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(from as u32).to_le_bytes());
    n[4..8].copy_from_slice(&(to as u32).to_le_bytes());
    n.into()
}

fn pair_seed(secret: &[u8; 32], other: &[u8; 32], context: &[u8]) -> [u8; 32] {
    let shared = StaticSecret::from(*secret).diffie_hellman(&PublicKey::from(*other));
    Sha256::new()
        .chain_update(b"adaptkit-secagg-mask")
        .chain_update(context)
        .chain_update(shared.as_bytes())
        .finalize()
        .into()
}

/// Adds (or subtracts) the mask expanded from `seed`.
fn add_mask(y: &mut [u32], seed: [u8; 32], add: bool) {
    let mut prg = Prg::new(seed);
    for pair in y.chunks_mut(2) {
        let bits = prg.next_u64();
        for (v, m) in pair.iter_mut().zip([bits as u32, (bits >> 32) as u32]) {
            *v = if add { v.wrapping_add(m) } else { v.wrapping_sub(m) };
        }
    }
}

/// What the server rebuilt from the survivors' reveals.
pub struct Reveals {
    /// Each survivor's self-mask seed `b` (by participant index).
    pub seeds: Vec<(usize, [u8; 32])>,
    /// Each device that shared but did not mask: its `s` secret.
    pub dropped: Vec<(usize, [u8; 32])>,
}

/// Rebuilds a secret from `t` or more `(participant index, share)` pairs.
pub fn reconstruct(shares: &[(usize, [u8; 32])]) -> [u8; 32] {
    let points: Vec<(u8, &[u8; 32])> = shares.iter().map(|(i, s)| ((*i + 1) as u8, s)).collect();
    let mut secret = [0u8; 32];
    for (byte, out) in secret.iter_mut().enumerate() {
        // Lagrange interpolation at 0 over GF(256).
        let mut acc = 0u8;
        for (j, &(xj, share)) in points.iter().enumerate() {
            let mut basis = 1u8;
            for (m, &(xm, _)) in points.iter().enumerate() {
                if m != j {
                    basis = gf_mul(basis, gf_div(xm, xm ^ xj));
                }
            }
            acc ^= gf_mul(share[byte], basis);
        }
        *out = acc;
    }
    secret
}

/// The server's last step: `sum` (of the survivors' `y`, mod 2³²) with the survivors'
/// self-masks and the dropped devices' pairwise masks removed. `masking` holds every device that
/// sent its shares (indexes as in [`RoundSecrets::masked`]); `survivors` those whose `y` is in
/// the sum.
pub fn unmask(
    sum: &mut [u32],
    masking: &[PublicKeys],
    survivors: &[usize],
    reveals: &Reveals,
    context: &[u8],
) {
    for &(_, b) in &reveals.seeds {
        add_mask(sum, b, false);
    }
    for &(d, s_secret) in &reveals.dropped {
        for &u in survivors {
            // Survivor u added +PRG(s_ud) when d > u, −PRG(s_ud) when d < u: undo it.
            add_mask(sum, pair_seed(&s_secret, &masking[u].s, context), d < u);
        }
    }
}

/// `n` Shamir shares of `secret` (byte by byte over GF(256)), any `t` of which rebuild it;
/// share `i` is the polynomials' value at `x = i + 1`.
fn shamir_split(secret: &[u8; 32], n: usize, t: usize, prg: &mut Prg) -> Vec<[u8; 32]> {
    let mut shares = vec![[0u8; 32]; n];
    for (byte, &value) in secret.iter().enumerate() {
        let coefficients: Vec<u8> =
            std::iter::once(value).chain((1..t.max(1)).map(|_| prg.next_u64() as u8)).collect();
        for (i, share) in shares.iter_mut().enumerate() {
            let x = (i + 1) as u8;
            // Horner's rule.
            share[byte] = coefficients.iter().rev().fold(0u8, |acc, &c| gf_mul(acc, x) ^ c);
        }
    }
    shares
}

/// Multiplication in GF(2⁸) with AES's polynomial x⁸ + x⁴ + x³ + x + 1.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

fn gf_div(a: u8, b: u8) -> u8 {
    // b⁻¹ = b²⁵⁴.
    let mut inverse = 1u8;
    let mut power = b;
    let mut e = 254u32;
    while e > 0 {
        if e & 1 == 1 {
            inverse = gf_mul(inverse, power);
        }
        power = gf_mul(power, power);
        e >>= 1;
    }
    gf_mul(a, inverse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shamir_rebuilds_from_any_t_shares_and_not_from_fewer() {
        let mut prg = Prg::new([9; 32]);
        let secret = [42u8; 32];
        let shares = shamir_split(&secret, 7, 4, &mut prg);
        let pick = |idx: &[usize]| idx.iter().map(|&i| (i, shares[i])).collect::<Vec<_>>();
        assert_eq!(reconstruct(&pick(&[0, 1, 2, 3])), secret);
        assert_eq!(reconstruct(&pick(&[6, 2, 4, 1])), secret);
        assert_eq!(reconstruct(&pick(&[0, 1, 2, 3, 4, 5, 6])), secret);
        assert_ne!(reconstruct(&pick(&[0, 1, 2])), secret);
    }

    /// `n` devices with inputs; those in `drop_before_masking` share but never mask; those in
    /// `drop_after_masking` mask but never reveal. The server's unmasked sum must be the sum of
    /// the survivors' inputs, exactly.
    fn round(n: usize, drop_before_masking: &[usize], drop_after_masking: &[usize]) {
        let context = b"task/round";
        let mut prg = Prg::new([1; 32]);
        let secrets: Vec<RoundSecrets> = (0..n).map(|_| RoundSecrets::generate(&mut prg)).collect();
        let public: Vec<PublicKeys> = secrets.iter().map(RoundSecrets::public).collect();
        let t = n / 2 + 1;
        // Every device shares with every participant; boxes[u][v] is u's box for v.
        let boxes: Vec<Vec<Vec<u8>>> = secrets
            .iter()
            .enumerate()
            .map(|(u, s)| s.encrypted_shares(u, &public, t, context, &mut prg))
            .collect();
        let inputs: Vec<Vec<u32>> = (0..n)
            .map(|u| {
                encode(&(0..9).map(|i| (u * 10 + i) as f32 * 0.01 - 0.3).collect::<Vec<_>>(), n).unwrap()
            })
            .collect();
        let survivors: Vec<usize> = (0..n).filter(|u| !drop_before_masking.contains(u)).collect();
        let mut sum = vec![0u32; 9];
        for &u in &survivors {
            let y = secrets[u].masked(&inputs[u], u, &public, context);
            assert_ne!(y, inputs[u], "a masked input is not the input");
            sum.iter_mut().zip(&y).for_each(|(s, y)| *s = s.wrapping_add(*y));
        }
        // The revealers: survivors that are still there.
        let revealers: Vec<usize> =
            survivors.iter().copied().filter(|u| !drop_after_masking.contains(u)).collect();
        assert!(revealers.len() >= t);
        let opened = |v: usize, owner: usize| {
            secrets[v].open_shares(owner, v, &public[owner], context, &boxes[owner][v]).unwrap()
        };
        let rebuild = |owner: usize, pick: fn(&Shares) -> [u8; 32]| {
            reconstruct(&revealers.iter().take(t).map(|&v| (v, pick(&opened(v, owner)))).collect::<Vec<_>>())
        };
        let reveals = Reveals {
            seeds: survivors.iter().map(|&u| (u, rebuild(u, |s| s.b))).collect(),
            dropped: drop_before_masking.iter().map(|&d| (d, rebuild(d, |s| s.s))).collect(),
        };
        unmask(&mut sum, &public, &survivors, &reveals, context);
        let mut want = vec![0u32; 9];
        for &u in &survivors {
            want.iter_mut().zip(&inputs[u]).for_each(|(w, x)| *w = w.wrapping_add(*x));
        }
        assert_eq!(sum, want);
        let mean = decode_mean(&sum, survivors.len());
        let exact: f32 =
            survivors.iter().map(|&u| (u * 10) as f32 * 0.01 - 0.3).sum::<f32>() / survivors.len() as f32;
        assert!((mean[0] - exact).abs() < 1e-4, "{} vs {exact}", mean[0]);
    }

    #[test]
    fn the_unmasked_sum_is_the_sum_of_the_inputs() {
        round(5, &[], &[]);
    }

    #[test]
    fn devices_that_drop_before_or_after_masking_do_not_break_the_round() {
        round(7, &[2], &[4]);
        round(7, &[0, 6], &[1]);
    }

    #[test]
    fn shares_open_only_for_their_receiver_and_inputs_out_of_range_are_refused() {
        let mut prg = Prg::new([3; 32]);
        let secrets: Vec<RoundSecrets> = (0..3).map(|_| RoundSecrets::generate(&mut prg)).collect();
        let public: Vec<PublicKeys> = secrets.iter().map(RoundSecrets::public).collect();
        let boxes = secrets[0].encrypted_shares(0, &public, 2, b"ctx", &mut prg);
        assert!(secrets[1].open_shares(0, 1, &public[0], b"ctx", &boxes[1]).is_ok());
        assert!(secrets[2].open_shares(0, 2, &public[0], b"ctx", &boxes[1]).is_err(), "not for device 2");
        assert!(secrets[1].open_shares(0, 1, &public[0], b"other round", &boxes[1]).is_err());
        assert!(encode(&[40000.0], 1).unwrap_err().contains("value 0"));
        assert!(encode(&[0.5], 100_000).is_err());
    }
}
