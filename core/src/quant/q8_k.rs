//! Q8_K: 256 values as an f32 scale `d`, signed bytes `q` and the sums of each 16 levels as
//! i16 (`bsums`, used by ggml's integer dot products; not needed to dequantize); value `d * q`.

use super::simd::Simd;
use super::{abs, each_block, each_block_mut, round_away, signed_absmax, Format, GgmlType};

pub(crate) struct Q8K;

const BSUMS: usize = 260;

impl Format for Q8K {
    const TY: GgmlType = GgmlType::Q8K;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 292], o: &mut [f32; 256]| {
            let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for (o, &q) in o.iter_mut().zip(&b[4..BSUMS]) {
                *o = d * f32::from(q as i8);
            }
        });
    }

    /// As ggml: the value of largest magnitude maps to -127, `d = max / -127`.
    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 256], o: &mut [u8; 292]| {
            let max = signed_absmax(v);
            let (d, iscale) = if abs(max) == 0.0 { (0.0, 0.0) } else { (max / -127.0, -127.0 / max) };
            o[..4].copy_from_slice(&d.to_le_bytes());
            let (qs, bsums) = o[4..].split_at_mut(256);
            for (q, &v) in qs.iter_mut().zip(v) {
                *q = round_away(iscale * v).clamp(-127, 127) as i8 as u8;
            }
            for (s, q) in bsums.chunks_exact_mut(2).zip(qs.chunks_exact(16)) {
                let sum: i16 = q.iter().map(|&q| i16::from(q as i8)).sum();
                s.copy_from_slice(&sum.to_le_bytes());
            }
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], _xsum: &[f32]) -> f32 {
        let mut total = 0f32;
        for b in 0..row.len() / 292 {
            let p = row.as_ptr().add(292 * b);
            let d = f32::from_le_bytes(*p.cast::<[u8; 4]>());
            let mut acc = s.zero();
            for k in 0..8 {
                let q = core::array::from_fn(|g| s.widen_i8(p.add(4 + 32 * k + 8 * g)));
                acc = s.add(acc, s.dot32(q, x.as_ptr().add(256 * b + 32 * k)));
            }
            total += d * s.hsum(acc);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block_and_bsums() {
        let mut v = [0f32; 256];
        v[0] = -2.0;
        v[17] = 1.0;
        v[18] = 0.5;
        let b = crate::quant::quantize(GgmlType::Q8K, &v).unwrap();
        assert_eq!(f32::from_le_bytes([b[0], b[1], b[2], b[3]]), 2.0 / 127.0);
        assert_eq!(b[4] as i8, -127);
        assert_eq!(b[4 + 17] as i8, 64);
        assert_eq!(b[4 + 18] as i8, 32);
        assert_eq!(i16::from_le_bytes([b[BSUMS], b[BSUMS + 1]]), -127);
        assert_eq!(i16::from_le_bytes([b[BSUMS + 2], b[BSUMS + 3]]), 96);
        let mut out = [0f32; 256];
        Q8K::dequantize(&b, &mut out);
        assert_eq!(out[0], 2.0 / 127.0 * -127.0);
    }
}
