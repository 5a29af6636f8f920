//! Q5_K: a 256-value super-block (see [`super::k_scales`]) with 5-bit levels: the low 4 bits as
//! in Q4_K, and `qh` (32 bytes) where bit `2c` of byte `l` is bit 4 of value `64c + l` and bit
//! `2c + 1` that of value `64c + 32 + l`.

use super::k_scales::{self, HEAD};
use super::simd::Simd;
use super::{each_block, each_block_mut, Format, GgmlType};

pub(crate) struct Q5K;

/// Offset of the low nibbles, after the head and `qh`.
pub(super) const QS: usize = HEAD + 32;

impl Format for Q5K {
    const TY: GgmlType = GgmlType::Q5K;
    const XSUMS: bool = true;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 176], o: &mut [f32; 256]| {
            k_scales::dequantize(b, &levels(&b[HEAD..QS], &b[QS..]), o);
        });
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 256], o: &mut [u8; 176]| {
            let q = k_scales::quantize(v, 31, (&mut o[..HEAD]).try_into().unwrap());
            let (qh, qs) = o[HEAD..].split_at_mut(32);
            for (c, qs) in qs.chunks_exact_mut(32).enumerate() {
                for (l, b) in qs.iter_mut().enumerate() {
                    let (lo, hi) = (q[64 * c + l], q[64 * c + 32 + l]);
                    *b = (lo & 0xf) | (hi & 0xf) << 4;
                    qh[l] |= (lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1);
                }
            }
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        k_scales::dot_row::<S, 176>(s, row, x, xsum, |p, c| {
            let qs = p.add(QS + 32 * c);
            let m = s.splat_i(0xf);
            let bit = s.splat_i(0x10);
            let mut lo: [S::I; 4] = core::array::from_fn(|i| s.widen_u8(qs.add(8 * i)));
            let mut hi = lo.map(|b| s.shr::<4>(b));
            for i in 0..4 {
                let h = s.widen_u8(p.add(HEAD + 8 * i));
                // Bring bits 2c and 2c + 1 of each qh byte to bit 4.
                let (hl, hh) = match c {
                    0 => (s.shl::<4>(h), s.shl::<3>(h)),
                    1 => (s.shl::<2>(h), s.shl::<1>(h)),
                    2 => (h, s.shr::<1>(h)),
                    _ => (s.shr::<2>(h), s.shr::<3>(h)),
                };
                lo[i] = s.or(s.and(lo[i], m), s.and(hl, bit));
                hi[i] = s.or(hi[i], s.and(hh, bit));
            }
            [lo, hi]
        })
    }
}

pub(super) fn levels(qh: &[u8], qs: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (c, (q, qs)) in q.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (lo, hi) = q.split_at_mut(32);
        for (((lo, hi), &b), &h) in lo.iter_mut().zip(hi).zip(qs).zip(qh) {
            let h = h >> (2 * c);
            *lo = (b & 0xf) | (h & 1) << 4;
            *hi = (b >> 4) | (h & 2) << 3;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block() {
        // d = 0.5, dmin = 1; pair 2 (values 64..96): scale 4, min 1; pair 3: scale 2, min 0.
        let mut b = [0u8; 176];
        b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        b[4 + 2] = 4;
        b[4 + 6] = 1;
        b[4 + 3] = 2;
        // qh byte 3: bit 2 -> value 64 + 3 gets bit 4; bit 3 -> value 96 + 3 gets bit 4.
        b[HEAD + 3] = 0b1100;
        b[QS + 32 + 3] = 0x21; // value 67 low nibble 1, value 99 low nibble 2.
        let mut out = [0f32; 256];
        Q5K::dequantize(&b, &mut out);
        assert_eq!(out[67], 0.5 * 4.0 * 17.0 - 1.0);
        assert_eq!(out[99], 0.5 * 2.0 * 18.0);
        assert_eq!(out[64], -1.0);
        assert_eq!(out[3], 0.0);
    }
}
