//! Q4_K: a 256-value super-block (see [`super::k_scales`]) with 4-bit levels: each 32 bytes of
//! `qs` hold 64 values, the first 32 in their low nibbles and the next 32 in their high ones.

use super::k_scales::{self, HEAD};
use super::simd::Simd;
use super::{each_block, each_block_mut, Format, GgmlType};

pub(crate) struct Q4K;

impl Format for Q4K {
    const TY: GgmlType = GgmlType::Q4K;
    const XSUMS: bool = true;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 144], o: &mut [f32; 256]| {
            k_scales::dequantize(b, &levels(&b[HEAD..]), o);
        });
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 256], o: &mut [u8; 144]| {
            let q = k_scales::quantize(v, 15, (&mut o[..HEAD]).try_into().unwrap());
            for (c, qs) in o[HEAD..].chunks_exact_mut(32).enumerate() {
                for (l, b) in qs.iter_mut().enumerate() {
                    *b = q[64 * c + l] | q[64 * c + 32 + l] << 4;
                }
            }
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        k_scales::dot_row::<S, 144>(s, row, x, xsum, |p, c| {
            let qs = p.add(HEAD + 32 * c);
            let m = s.splat_i(0xf);
            let b: [S::I; 4] = core::array::from_fn(|i| s.widen_u8(qs.add(8 * i)));
            [b.map(|b| s.and(b, m)), b.map(|b| s.shr::<4>(b))]
        })
    }
}

pub(super) fn levels(qs: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (q, qs) in q.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
        let (lo, hi) = q.split_at_mut(32);
        for ((lo, hi), &b) in lo.iter_mut().zip(hi).zip(qs) {
            *lo = b & 0xf;
            *hi = b >> 4;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block() {
        // d = 1, dmin = 0.5; pair 1 (values 32..64) has scale 3, min 2; pair 6 (values
        // 192..224) has scale 40 (top bits in byte 2) and min 33 (top bits in byte 6).
        let mut b = [0u8; 144];
        b[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        b[4 + 1] = 3;
        b[4 + 5] = 2;
        b[4 + 10] = (40 & 0xf) | (33 & 0xf) << 4;
        b[4 + 2] = (40 >> 4) << 6;
        b[4 + 6] = (33 >> 4) << 6;
        b[HEAD + 5] = 0x70; // value 37: high nibble of byte 5 of the first 32.
        b[HEAD + 96 + 1] = 0x09; // value 193: low nibble of byte 1 of the fourth 32.
        let mut out = [0f32; 256];
        Q4K::dequantize(&b, &mut out);
        assert_eq!(out[37], 3.0 * 7.0 - 0.5 * 2.0);
        assert_eq!(out[36], -1.0);
        assert_eq!(out[193], 40.0 * 9.0 - 0.5 * 33.0);
        assert_eq!(out[0], 0.0);
    }
}
