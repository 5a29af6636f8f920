//! Q8_0: 32 values as an f16 scale `d` and signed bytes `q`, value `d * q`.

use super::simd::Simd;
use super::{abs, each_block, each_block_mut, f16_at, put_f16, round_away};
use super::{Format, GgmlType};

pub(crate) struct Q8_0;

impl Format for Q8_0 {
    const TY: GgmlType = GgmlType::Q8_0;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 34], o: &mut [f32; 32]| {
            let d = f16_at(b, 0);
            for (o, &q) in o.iter_mut().zip(&b[2..]) {
                *o = f32::from(q as i8) * d;
            }
        });
    }

    /// ggml's: `d = amax / 127`, levels `round(v / d)`.
    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 32], o: &mut [u8; 34]| {
            let amax = v.iter().fold(0f32, |m, &v| if abs(v) > m { abs(v) } else { m });
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_f16(o, 0, d);
            for (o, &v) in o[2..].iter_mut().zip(v) {
                *o = round_away(v * id).clamp(-127, 127) as i8 as u8;
            }
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], _xsum: &[f32]) -> f32 {
        let mut acc = s.zero();
        for b in 0..row.len() / 34 {
            let (p, x) = (row.as_ptr().add(34 * b), x.as_ptr().add(32 * b));
            let q = core::array::from_fn(|g| s.widen_i8(p.add(2 + 8 * g)));
            acc = s.fma(s.splat_f16(p), s.dot32(q, x), acc);
        }
        s.hsum(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block() {
        let mut b = [0u8; 34];
        b[..2].copy_from_slice(&half::f16::from_f32(0.125).to_le_bytes());
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        b[2] = 0x80;
        let mut out = [0f32; 32];
        Q8_0::dequantize(&b, &mut out);
        assert_eq!(out[0], -128.0 * 0.125);
        for (j, &v) in out.iter().enumerate().skip(1) {
            assert_eq!(v, (j as f32 - 16.0) * 0.125);
        }
    }

    #[test]
    fn quantizer_rounds_half_away_from_zero() {
        let mut v = [0f32; 32];
        v[0] = 127.0;
        v[1] = -2.5;
        v[2] = 2.5;
        v[3] = 0.49999997;
        let q = crate::quant::quantize(GgmlType::Q8_0, &v).unwrap();
        assert_eq!(f16_at(&q, 0), 1.0);
        assert_eq!(&q[2..6], &[127, (-3i8) as u8, 3, 0]);
    }
}
