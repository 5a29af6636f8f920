//! Q4_1: 32 values as f16 `d` and `m` and 4-bit levels `q` (nibble order as Q4_0), value
//! `d * q + m`.

use super::q4_0::{nibble_lanes, nibbles, pack_nibbles};
use super::simd::Simd;
use super::{affine32_dot_row, each_block, each_block_mut, f16_at, put_f16};
use super::{Format, GgmlType};

pub(crate) struct Q4_1;

impl Format for Q4_1 {
    const TY: GgmlType = GgmlType::Q4_1;
    const XSUMS: bool = true;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 20], o: &mut [f32; 32]| {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for (o, q) in o.iter_mut().zip(nibbles(b[4..].try_into().unwrap())) {
                *o = f32::from(q) * d + m;
            }
        });
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 32], o: &mut [u8; 20]| {
            let (d, m, q) = affine_levels(v, 15);
            put_f16(o, 0, d);
            put_f16(o, 2, m);
            pack_nibbles(&q, (&mut o[4..]).try_into().unwrap());
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        affine32_dot_row::<S, 20>(s, row, x, xsum, |b| {
            (s.splat_f16(b), s.f16(b.add(2)), nibble_lanes(s, b.add(4)))
        })
    }
}

/// ggml's min/max quantizer: `m = min`, `d = (max - min) / top`, each value to level
/// `min(top, trunc((v - m) / d + 0.5))`.
pub(super) fn affine_levels(v: &[f32; 32], top: u8) -> (f32, f32, [u8; 32]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in v {
        min = if v < min { v } else { min };
        max = if v > max { v } else { max };
    }
    let d = (max - min) / f32::from(top);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, min, v.map(|v| (((v - min) * id + 0.5) as u8).min(top)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block() {
        // d = 0.25, m = -1: byte j = (j & 15) | (15 - j) << 4.
        let mut b = [0u8; 20];
        b[..2].copy_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16 {
            b[4 + j] = j as u8 | ((15 - j as u8) << 4);
        }
        let mut out = [0f32; 32];
        Q4_1::dequantize(&b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.25 - 1.0);
            assert_eq!(out[16 + j], (15 - j) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn quantizer_spans_min_to_max() {
        let v: [f32; 32] = core::array::from_fn(|i| i as f32 * 0.5 - 3.0);
        let (d, m, q) = affine_levels(&v, 15);
        assert_eq!((m, d), (-3.0, 15.5 / 15.0));
        assert_eq!((q[0], q[31]), (0, 15));
    }
}
