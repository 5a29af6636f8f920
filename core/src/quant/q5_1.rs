//! Q5_1: 32 values as f16 `d` and `m`, then `qh` and the nibbles as in Q5_0; value `d * q + m`.

use super::q4_1::affine_levels;
use super::q5_0::{level_lanes, levels, pack_levels};
use super::simd::Simd;
use super::{affine32_dot_row, each_block, each_block_mut, f16_at, put_f16};
use super::{Format, GgmlType};

pub(crate) struct Q5_1;

impl Format for Q5_1 {
    const TY: GgmlType = GgmlType::Q5_1;
    const XSUMS: bool = true;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 24], o: &mut [f32; 32]| {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for (o, q) in o.iter_mut().zip(levels(b[4..8].try_into().unwrap(), &b[8..])) {
                *o = f32::from(q) * d + m;
            }
        });
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 32], o: &mut [u8; 24]| {
            let (d, m, q) = affine_levels(v, 31);
            put_f16(o, 0, d);
            put_f16(o, 2, m);
            pack_levels(&q, (&mut o[4..]).try_into().unwrap());
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        affine32_dot_row::<S, 24>(s, row, x, xsum, |b| {
            (s.splat_f16(b), s.f16(b.add(2)), level_lanes(s, b.add(4)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block() {
        // d = 0.5, m = 1; qh bit 16 set, value 16 = high nibble of byte 0 = 7: level 23.
        let mut b = [0u8; 24];
        b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        b[4..8].copy_from_slice(&(1u32 << 16).to_le_bytes());
        b[8] = 0x72;
        let mut out = [0f32; 32];
        Q5_1::dequantize(&b, &mut out);
        assert_eq!(out[0], 2.0 * 0.5 + 1.0);
        assert_eq!(out[16], 23.0 * 0.5 + 1.0);
        assert_eq!(out[1], 1.0);
    }
}
