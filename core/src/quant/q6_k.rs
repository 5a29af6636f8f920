//! Q6_K: 256 values as 6-bit levels `q` with a signed 8-bit scale per 16 values and an f16 `d`;
//! value `d * scale * (q - 32)`. Layout: `ql` (128 bytes), `qh` (64), `scales` (16), `d`. Each
//! half of 128 values uses 64 bytes of `ql` and 32 of `qh`: value `l` (of 0..32) takes the low
//! nibble of `ql[l]`, `l + 32` that of `ql[l + 32]`, `l + 64` and `l + 96` their high nibbles,
//! and the four take bits 0-1, 2-3, 4-5 and 6-7 of `qh[l]` as their top two bits.

use super::k_scales::{ceil_units, f16_up};
use super::simd::Simd;
use super::{each_block, each_block_mut, f16_at, round_away, Format, GgmlType};

pub(crate) struct Q6K;

const QH: usize = 128;
pub(super) const SCALES: usize = 192;
pub(super) const D: usize = 208;

impl Format for Q6K {
    const TY: GgmlType = GgmlType::Q6K;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 210], o: &mut [f32; 256]| {
            let d = f16_at(b, D);
            for ((o, q), &sc) in o.chunks_exact_mut(16).zip(levels(b).chunks_exact(16)).zip(&b[SCALES..D]) {
                let ds = d * f32::from(sc as i8);
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = ds * (i32::from(q) - 32) as f32;
                }
            }
        });
    }

    /// Per 16 values, the smallest scale (of either sign) whose levels -32..=31 cover them;
    /// `d` and the 8-bit scales are rounded up so nothing clips.
    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 256], o: &mut [u8; 210]| {
            let want: [f32; 16] = core::array::from_fn(|j| {
                let s = &v[16 * j..16 * j + 16];
                let lo = -s.iter().fold(0f32, |m, &v| if v < m { v } else { m });
                let hi = s.iter().fold(0f32, |m, &v| if v > m { v } else { m });
                let (pos, neg) = (max(lo / 32.0, hi / 31.0), max(lo / 31.0, hi / 32.0));
                if pos <= neg {
                    pos
                } else {
                    -neg
                }
            });
            let d = f16_up(want.iter().fold(0f32, |m, &w| max(m, super::abs(w))) / 127.0);
            let sc = want.map(|w| {
                let t = ceil_units(super::abs(w), d, 127) as i8;
                if w < 0.0 {
                    -t
                } else {
                    t
                }
            });
            let q: [u8; 256] = core::array::from_fn(|i| {
                let step = d * f32::from(sc[i / 16]);
                let q = if step == 0.0 { 0 } else { round_away(v[i] / step).clamp(-32, 31) };
                (q + 32) as u8
            });
            pack(&q, o);
            o[D..].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            for (o, s) in o[SCALES..D].iter_mut().zip(sc) {
                *o = s as u8;
            }
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], _xsum: &[f32]) -> f32 {
        let m = s.splat_i(0xf);
        let top = s.splat_i(0x30);
        let bias = s.splat_i(32);
        let mut acc = s.zero();
        for b in 0..row.len() / 210 {
            let p = row.as_ptr().add(210 * b);
            let d = s.f16(p.add(D));
            for half in 0..2 {
                let (ql, qh) = (p.add(64 * half), p.add(QH + 32 * half));
                let x = x.as_ptr().add(256 * b + 128 * half);
                // Two 16-value scale groups per half-row of 32; lane group `g` covers values
                // 8g..8g+8 of each of the four 32-value quarters.
                for group in 0..2 {
                    let mut sum = [s.zero(); 4];
                    for g in 2 * group..2 * group + 2 {
                        let a = s.widen_u8(ql.add(8 * g));
                        let c = s.widen_u8(ql.add(32 + 8 * g));
                        let h = s.widen_u8(qh.add(8 * g));
                        let q = [
                            s.or(s.and(a, m), s.and(s.shl::<4>(h), top)),
                            s.or(s.and(c, m), s.and(s.shl::<2>(h), top)),
                            s.or(s.shr::<4>(a), s.and(h, top)),
                            s.or(s.shr::<4>(c), s.and(s.shr::<2>(h), top)),
                        ];
                        for (k, (q, sum)) in q.into_iter().zip(sum.iter_mut()).enumerate() {
                            let xv = s.load(x.add(32 * k + 8 * g));
                            *sum = s.fma(s.to_f32(s.sub_i(q, bias)), xv, *sum);
                        }
                    }
                    for (k, sum) in sum.into_iter().enumerate() {
                        let scale = *p.add(SCALES + 8 * half + 2 * k + group) as i8;
                        acc = s.fma(s.splat(d * f32::from(scale)), sum, acc);
                    }
                }
            }
        }
        s.hsum(acc)
    }
}

fn max(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// The 256 six-bit levels, in value order: each half of 128 is four quarters of 32 that share
/// the bytes of `ql` pairwise (quarters 0 and 2 the first 32 bytes, 1 and 3 the next) and all
/// of `qh` (two bits each).
pub(super) fn levels(b: &[u8; 210]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (half, q) in q.chunks_exact_mut(128).enumerate() {
        let (ql, qh) = (&b[64 * half..64 * half + 64], &b[QH + 32 * half..QH + 32 * half + 32]);
        for (k, q) in q.chunks_exact_mut(32).enumerate() {
            let (ql, shift) = (&ql[32 * (k & 1)..32 * (k & 1) + 32], 4 * (k >> 1));
            for ((q, &l), &h) in q.iter_mut().zip(ql).zip(qh) {
                *q = ((l >> shift) & 0xf) | ((h >> (2 * k)) & 3) << 4;
            }
        }
    }
    q
}

/// The inverse of [`levels`], into the zeroed `ql` and `qh` of `b`.
fn pack(q: &[u8; 256], b: &mut [u8; 210]) {
    b[..SCALES].fill(0);
    for (half, q) in q.chunks_exact(128).enumerate() {
        for (k, q) in q.chunks_exact(32).enumerate() {
            let (ql, shift) = (64 * half + 32 * (k & 1), 4 * (k >> 1));
            for (l, &q) in q.iter().enumerate() {
                b[ql + l] |= (q & 0xf) << shift;
                b[QH + 32 * half + l] |= (q >> 4) << (2 * k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `dequantize_row_q6_K` loop, transcribed as the specification of the layout.
    fn ggml_order(b: &[u8; 210]) -> [f32; 256] {
        let d = f16_at(b, D);
        let mut y = [0f32; 256];
        for n in 0..2 {
            let (ql, qh, sc) = (&b[64 * n..], &b[QH + 32 * n..], &b[SCALES + 8 * n..]);
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xf) | (qh[l] & 3) << 4) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4) as i8 - 32;
                let q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) as i8 - 32;
                let y = &mut y[128 * n..];
                y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
                y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
                y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
                y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
            }
        }
        y
    }

    #[test]
    fn layout_matches_ggml_on_patterned_blocks() {
        for seed in 0..8u32 {
            let mut b = [0u8; 210];
            for (i, b) in b.iter_mut().enumerate() {
                *b = (i as u32 * 2654435761u32).wrapping_add(seed * 40503).rotate_right(13) as u8;
            }
            b[D..].copy_from_slice(&half::f16::from_f32(0.03125).to_le_bytes());
            let mut out = [0f32; 256];
            Q6K::dequantize(&b, &mut out);
            assert_eq!(out, ggml_order(&b));
        }
    }

    #[test]
    fn known_block() {
        // d = 0.5; values 16..32 have scale -3 and 80..96 scale 2. Value 20 takes the low
        // nibble of ql[20] and bits 0-1 of qh[20] (level 63); value 84 = 64 + 20 takes the
        // high nibble of ql[20] and bits 4-5 of qh[20] (level 0x25).
        let mut b = [0u8; 210];
        b[D..].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        b[SCALES + 1] = (-3i8) as u8;
        b[SCALES + 5] = 2;
        b[20] = 0x5f;
        b[QH + 20] = 0b10_0011;
        let mut out = [0f32; 256];
        Q6K::dequantize(&b, &mut out);
        assert_eq!(out[20], 0.5 * -3.0 * 31.0);
        assert_eq!(out[84], 0.5 * 2.0 * ((0x5 | 0x20) as f32 - 32.0));
        assert_eq!(out[0], 0.0);
    }
}
