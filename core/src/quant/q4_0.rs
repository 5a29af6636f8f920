//! Q4_0: 32 values as an f16 scale `d` and 4-bit levels `q`, value `d * (q - 8)`. The 16 bytes
//! hold values 0..16 in their low nibbles and 16..32 in their high nibbles.

use super::simd::Simd;
use super::{affine32_dot_row, each_block, each_block_mut, f16_at, put_f16, signed_absmax};
use super::{Format, GgmlType};

pub(crate) struct Q4_0;

impl Format for Q4_0 {
    const TY: GgmlType = GgmlType::Q4_0;
    const XSUMS: bool = true;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 18], o: &mut [f32; 32]| {
            let d = f16_at(b, 0);
            for (o, q) in o.iter_mut().zip(nibbles(b[2..].try_into().unwrap())) {
                *o = (i32::from(q) - 8) as f32 * d;
            }
        });
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 32], o: &mut [u8; 18]| {
            let (d, q) = symmetric_levels(v, 8.0, 15);
            put_f16(o, 0, d);
            pack_nibbles(&q, (&mut o[2..]).try_into().unwrap());
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        affine32_dot_row::<S, 18>(s, row, x, xsum, |b| {
            let d = s.splat_f16(b);
            (d, -8.0 * s.lane0(d), nibble_lanes(s, b.add(2)))
        })
    }
}

/// The 32 levels of a nibble-packed block, in value order.
pub(super) fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    core::array::from_fn(|i| if i < 16 { qs[i] & 0xf } else { qs[i - 16] >> 4 })
}

pub(super) fn pack_nibbles(q: &[u8; 32], qs: &mut [u8; 16]) {
    for (j, b) in qs.iter_mut().enumerate() {
        *b = (q[j] & 0xf) | (q[j + 16] & 0xf) << 4;
    }
}

/// The levels of a nibble-packed block as four lane groups of eight, in value order: each
/// group of bytes is widened once and serves both of its nibbles.
///
/// # Safety
/// `qs` points at 16 readable bytes.
#[inline(always)]
pub(super) unsafe fn nibble_lanes<S: Simd>(s: S, qs: *const u8) -> [S::I; 4] {
    let (lo, hi) = (s.widen_u8(qs), s.widen_u8(qs.add(8)));
    let m = s.splat_i(0xf);
    [s.and(lo, m), s.and(hi, m), s.shr::<4>(lo), s.shr::<4>(hi)]
}

/// ggml's symmetric quantizer: the value of largest magnitude maps to level 0 (`-offset`), so
/// `d = max / -offset`, and each value to `min(top, trunc(v / d + offset + 0.5))`.
pub(super) fn symmetric_levels(v: &[f32; 32], offset: f32, top: i8) -> (f32, [u8; 32]) {
    let d = signed_absmax(v) / -offset;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, v.map(|v| ((v * id + offset + 0.5) as i8).clamp(0, top) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block() {
        // d = 0.5; byte j = (j & 15) | (15 - j) << 4: values 0..16 are levels j, 16..32 are
        // levels 15 - j.
        let mut b = [0u8; 18];
        b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        for j in 0..16 {
            b[2 + j] = j as u8 | ((15 - j as u8) << 4);
        }
        let mut out = [0f32; 32];
        Q4_0::dequantize(&b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[16 + j], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn quantizer_matches_ggml_reference() {
        // ggml: max = -4 (largest magnitude) -> d = 0.5, level = min(15, trunc(v/d + 8.5)).
        let mut v = [0f32; 32];
        v[0] = -4.0;
        v[1] = 3.7;
        v[17] = 1.2;
        let q = crate::quant::quantize(GgmlType::Q4_0, &v).unwrap();
        assert_eq!(f16_at(&q, 0), 0.5);
        assert_eq!(q[2] & 0xf, 0);
        assert_eq!(q[3] & 0xf, 15);
        assert_eq!(q[3] >> 4, 10);
        assert_eq!(q[4] & 0xf, 8);
    }
}
