//! The unblocked float types: F32, F16 and BF16 (one value per "block", little-endian).

use super::simd::Simd;
use super::{each_block, each_block_mut, f16_le, Format, GgmlType};

pub(crate) struct F32;
pub(crate) struct F16;
pub(crate) struct Bf16;

impl Format for F32 {
    const TY: GgmlType = GgmlType::F32;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 4], o: &mut [f32; 1]| o[0] = f32::from_le_bytes(*b));
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 1], o: &mut [u8; 4]| *o = v[0].to_le_bytes());
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], _xsum: &[f32]) -> f32 {
        float_dot_row::<S, 4>(s, row, x, |p| s.load_le(p), |b| f32::from_le_bytes(*b))
    }
}

impl Format for F16 {
    const TY: GgmlType = GgmlType::F16;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = f16_le(b[0], b[1]);
        }
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 1], o: &mut [u8; 2]| {
            *o = half::f16::from_f32(v[0]).to_le_bytes()
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], _xsum: &[f32]) -> f32 {
        float_dot_row::<S, 2>(s, row, x, |p| s.load_f16(p), |b| f16_le(b[0], b[1]))
    }
}

impl Format for Bf16 {
    const TY: GgmlType = GgmlType::BF16;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 2], o: &mut [f32; 1]| o[0] = bf16_le(*b));
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 1], o: &mut [u8; 2]| *o = to_bf16(v[0]).to_le_bytes());
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], _xsum: &[f32]) -> f32 {
        float_dot_row::<S, 2>(s, row, x, |p| s.load_bf16(p), |b| bf16_le(*b))
    }
}

fn bf16_le(b: [u8; 2]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
}

/// The row-dot of the unblocked floats, `W` bytes a value: eight values at a time through
/// `load`, four chains to hide the FMA latency, and `scalar` for the tail.
///
/// # Safety
/// As [`Format::dot_row`].
#[inline(always)]
unsafe fn float_dot_row<S: Simd, const W: usize>(
    s: S,
    row: &[u8],
    x: &[f32],
    load: impl Fn(*const u8) -> S::F,
    scalar: impl Fn(&[u8; W]) -> f32,
) -> f32 {
    let n = x.len();
    let (w, xp) = (row.as_ptr(), x.as_ptr());
    let mut acc = [s.zero(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, a) in acc.iter_mut().enumerate() {
            let at = i + 8 * j;
            *a = s.fma(load(w.add(W * at)), s.load(xp.add(at)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = s.fma(load(w.add(W * i)), s.load(xp.add(i)), acc[0]);
        i += 8;
    }
    let mut sum = s.hsum(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])));
    while i < n {
        sum += scalar(&*w.add(W * i).cast::<[u8; W]>()) * *xp.add(i);
        i += 1;
    }
    sum
}

/// Round to nearest even, keeping NaNs NaN (setting the quiet bit), as ggml does.
fn to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3*2^-8 is halfway too, and rounds up to the even one.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(f32::from_bits(u32::from(to_bf16(f32::NAN)) << 16).is_nan());
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
    }

    #[test]
    fn known_bytes() {
        let mut out = [0f32; 2];
        F16::dequantize(&[0x00, 0x3c, 0x00, 0xc0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
        Bf16::dequantize(&[0x80, 0x3f, 0x40, 0xc0], &mut out);
        assert_eq!(out, [1.0, -3.0]);
        F32::dequantize(&[0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
    }
}
