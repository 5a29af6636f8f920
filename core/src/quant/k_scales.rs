//! What Q4_K and Q5_K share: a 256-value super-block that starts with f16 `d`, f16 `dmin` and 12
//! bytes packing eight 6-bit scales and eight 6-bit mins, one pair per 32 values; value
//! `d * scale * q - dmin * min`. The formats differ only in how the levels `q` are stored.

use super::simd::Simd;
use super::{f16_at, round_away};

/// Bytes before the levels: `d`, `dmin` and the packed scales.
pub(super) const HEAD: usize = 16;

/// The scales and mins of ggml's `get_scale_min_k4`: pairs 0..4 are the low 6 bits of bytes
/// 0..4 (scales) and 4..8 (mins); pairs 4..8 keep their low 4 bits in bytes 8..12 (scale low
/// nibble, min high nibble) and their top 2 bits in the top bits of bytes 0..8.
#[inline(always)]
pub(super) fn unpack(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 0xf) | (q[j] >> 6) << 4;
        mn[j + 4] = (q[j + 8] >> 4) | (q[j + 4] >> 6) << 4;
    }
    (sc, mn)
}

/// The inverse of [`unpack`], for 6-bit `sc` and `mn`.
pub(super) fn pack(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | (sc[j + 4] >> 4) << 6;
        q[j + 4] = mn[j] | (mn[j + 4] >> 4) << 6;
        q[j + 8] = (sc[j + 4] & 0xf) | (mn[j + 4] & 0xf) << 4;
    }
    q
}

/// Dequantizes a super-block whose head is `head` and whose levels are `q`, in ggml's order of
/// operations (`(d * scale) * q - dmin * min`), so the result is bit-exact.
pub(super) fn dequantize(head: &[u8], q: &[u8; 256], out: &mut [f32; 256]) {
    let (d, dmin) = (f16_at(head, 0), f16_at(head, 2));
    let (sc, mn) = unpack(head[4..HEAD].try_into().unwrap());
    for (j, (out, q)) in out.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
        let (ds, dm) = (d * f32::from(sc[j]), dmin * f32::from(mn[j]));
        for (o, &q) in out.iter_mut().zip(q) {
            *o = ds * f32::from(q) - dm;
        }
    }
}

/// Chooses `d`, `dmin`, the scales and mins for levels `0..=top`, writes them to `head` and
/// returns the levels. Each 32 values get the smallest step that covers them without clipping:
/// mins and scales are rounded up (after `d` and `dmin` are rounded up to f16), so every value
/// lies within half a step of its level.
pub(super) fn quantize(v: &[f32; 256], top: u8, head: &mut [u8; HEAD]) -> [u8; 256] {
    let mut lo = [0f32; 8];
    let mut hi = [0f32; 8];
    for (j, s) in v.chunks_exact(32).enumerate() {
        // The format subtracts a non-negative min, so the range always includes 0.
        lo[j] = s.iter().fold(0f32, |m, &v| if v < m { v } else { m });
        hi[j] = s.iter().fold(lo[j], |m, &v| if v > m { v } else { m });
    }
    let dmin = f16_up(lo.iter().fold(0f32, |m, &l| if -l > m { -l } else { m }) / 63.0);
    let mn = lo.map(|l| ceil_units(-l, dmin, 63));
    let offset: [f32; 8] = core::array::from_fn(|j| dmin * f32::from(mn[j]));
    let want: [f32; 8] = core::array::from_fn(|j| (hi[j] + offset[j]) / f32::from(top));
    let d = f16_up(want.iter().fold(0f32, |m, &w| if w > m { w } else { m }) / 63.0);
    let sc = want.map(|w| ceil_units(w, d, 63));

    head[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    head[2..4].copy_from_slice(&half::f16::from_f32(dmin).to_le_bytes());
    head[4..].copy_from_slice(&pack(&sc, &mn));
    core::array::from_fn(|i| {
        let j = i / 32;
        let step = d * f32::from(sc[j]);
        if step == 0.0 {
            return 0;
        }
        round_away((v[i] + offset[j]) / step).clamp(0, i32::from(top)) as u8
    })
}

/// The smallest f16 at least `v` (for `0 <= v`), as f32.
pub(super) fn f16_up(v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    if h.to_f32() < v {
        half::f16::from_bits(h.to_bits() + 1).to_f32()
    } else {
        h.to_f32()
    }
}

/// `ceil(v / unit)`, at most `max`; 0 when `unit` is 0.
pub(super) fn ceil_units(v: f32, unit: f32, max: u8) -> u8 {
    if unit == 0.0 {
        return 0;
    }
    let r = v / unit;
    let t = r as u32;
    (if (t as f32) < r { t + 1 } else { t }).min(u32::from(max)) as u8
}

/// The row-dot of Q4_K and Q5_K. `levels(block, c)` gives the lane groups of the two 32-value
/// sub-blocks of the `c`-th 64 values of the block at `block`; the mins are applied once per
/// sub-block as `dmin * min * sum(x)`.
///
/// # Safety
/// As [`super::Format::dot_row`] with `XSUMS`, for blocks of `BYTES` bytes.
#[inline(always)]
pub(super) unsafe fn dot_row<S: Simd, const BYTES: usize>(
    s: S,
    row: &[u8],
    x: &[f32],
    xsum: &[f32],
    levels: impl Fn(*const u8, usize) -> [[S::I; 4]; 2],
) -> f32 {
    let mut acc = s.zero();
    let mut mins = 0f32;
    for b in 0..row.len() / BYTES {
        let p = row.as_ptr().add(b * BYTES);
        let (x, xsum) = (x.as_ptr().add(256 * b), xsum.as_ptr().add(8 * b));
        let (d, dmin) = (s.f16(p), s.f16(p.add(2)));
        let (sc, mn) = unpack(&*p.add(4).cast::<[u8; 12]>());
        let mut block_mins = 0f32;
        for c in 0..4 {
            let [lo, hi] = levels(p, c);
            let (j, k) = (2 * c, 2 * c + 1);
            acc = s.fma(s.splat(d * f32::from(sc[j])), s.dot32(lo, x.add(32 * j)), acc);
            acc = s.fma(s.splat(d * f32::from(sc[k])), s.dot32(hi, x.add(32 * k)), acc);
            block_mins += f32::from(mn[j]) * *xsum.add(j) + f32::from(mn[k]) * *xsum.add(k);
        }
        mins += dmin * block_mins;
    }
    s.hsum(acc) - mins
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `get_scale_min_k4`, transcribed as the specification.
    fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
        }
    }

    #[test]
    fn unpack_matches_ggml_for_every_bit() {
        for bit in 0..96 {
            let mut q = [0u8; 12];
            q[bit / 8] = 1 << (bit % 8);
            let (sc, mn) = unpack(&q);
            for j in 0..8 {
                assert_eq!((sc[j], mn[j]), get_scale_min_k4(j, &q), "bit {bit} pair {j}");
            }
        }
    }

    #[test]
    fn pack_inverts_unpack() {
        let sc: [u8; 8] = core::array::from_fn(|j| (j as u8 * 9 + 5) & 63);
        let mn: [u8; 8] = core::array::from_fn(|j| (63 - j as u8 * 7) & 63);
        assert_eq!(unpack(&pack(&sc, &mn)), (sc, mn));
    }

    #[test]
    fn f16_up_never_rounds_down() {
        for v in [0.0f32, 1e-3, 0.1, 1.0 / 3.0, 7.77, 1000.1] {
            assert!(f16_up(v) >= v && f16_up(v) <= v * 1.001 + 1e-7, "{v}");
        }
    }
}
