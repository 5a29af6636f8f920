//! SIMD128 on wasm32, chosen at compile time (`-C target-feature=+simd128`): wasm cannot detect
//! features at run time, a module either validates with them or not at all. Baseline SIMD128
//! has no fused multiply-add, so `fma` is a multiply and an add.

use core::arch::wasm32::*;

use super::Simd;
use crate::quant::int8::{Activations, Int8Kind};
use crate::quant::Format;

/// Proof that SIMD128 is enabled (it is, for this module to exist).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Simd128(());

impl Simd128 {
    pub fn new() -> Self {
        Simd128(())
    }
}

/// Two v128 make one eight-lane vector, so kernels are shared with the 256-bit ISAs.
#[derive(Clone, Copy)]
pub(crate) struct V8(v128, v128);

/// # Safety
/// As [`super::dot_rows`].
pub(super) unsafe fn dot_rows<F: Format>(s: Simd128, rows: &[u8], x: &[f32], xsum: &[f32], out: &mut [f32]) {
    super::dot_rows_with::<F, Simd128>(s, rows, x, xsum, out)
}

/// # Safety
/// As [`super::dot_rows_int8`].
pub(super) unsafe fn dot_rows_int8(
    s: Simd128,
    kind: Int8Kind,
    rows: &[u8],
    a: &Activations,
    out: &mut [f32],
) {
    super::dot_rows_int8_by_block(s, kind, rows, a, out, |w, nibbles, x| block_dot(w, nibbles, x))
}

/// The 32 byte products of a block summed in integers: bytes widened to i16, then
/// `i32x4.dot_i16x8_s` (baseline SIMD128 has no byte dot product; relaxed SIMD's needs one operand
/// in 7 bits, which the activations are not).
///
/// # Safety
/// `w` points at 16 bytes of nibbles (value `j` low in byte `j`, value `j + 16` high) when
/// `nibbles`, else at 32 i8; `x` at 32 i8.
#[inline(always)]
unsafe fn block_dot(w: *const u8, nibbles: bool, x: *const i8) -> i32 {
    let (w0, w1) = if nibbles {
        let packed = v128_load(w.cast());
        (v128_and(packed, u8x16_splat(0x0f)), u8x16_shr(packed, 4))
    } else {
        (v128_load(w.cast()), v128_load(w.add(16).cast()))
    };
    let (x0, x1) = (v128_load(x.cast()), v128_load(x.add(16).cast()));
    // Nibbles (0..=15) sign-extend to themselves.
    let dot = |w: v128, x: v128| {
        let low = i32x4_dot_i16x8(i16x8_extend_low_i8x16(w), i16x8_extend_low_i8x16(x));
        i32x4_add(low, i32x4_dot_i16x8(i16x8_extend_high_i8x16(w), i16x8_extend_high_i8x16(x)))
    };
    let sum = i32x4_add(dot(w0, x0), dot(w1, x1));
    i32x4_extract_lane::<0>(sum)
        + i32x4_extract_lane::<1>(sum)
        + i32x4_extract_lane::<2>(sum)
        + i32x4_extract_lane::<3>(sum)
}

/// # Safety
/// As [`super::gemm`], whose checks the caller has made.
pub(super) unsafe fn gemm(s: Simd128, w: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32]) {
    super::gemm_with(s, w, x, k, tokens, out)
}

/// # Safety
/// As [`super::gemm_acc`], whose checks the caller has made.
pub(super) unsafe fn gemm_acc(s: Simd128, ops: super::AccOperands, out: &mut [f32]) {
    super::gemm_acc_with(s, ops, out)
}

impl Simd for Simd128 {
    type F = V8;
    type I = V8;

    #[inline(always)]
    fn zero(self) -> V8 {
        self.splat(0.0)
    }
    #[inline(always)]
    fn splat(self, v: f32) -> V8 {
        V8(f32x4_splat(v), f32x4_splat(v))
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> V8 {
        V8(v128_load(p.cast()), v128_load(p.add(4).cast()))
    }
    #[inline(always)]
    unsafe fn load_le(self, p: *const u8) -> V8 {
        V8(v128_load(p.cast()), v128_load(p.add(16).cast()))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: V8) {
        v128_store(p.cast(), v.0);
        v128_store(p.add(4).cast(), v.1);
    }
    #[inline(always)]
    fn add(self, a: V8, b: V8) -> V8 {
        V8(f32x4_add(a.0, b.0), f32x4_add(a.1, b.1))
    }
    #[inline(always)]
    fn mul(self, a: V8, b: V8) -> V8 {
        V8(f32x4_mul(a.0, b.0), f32x4_mul(a.1, b.1))
    }
    #[inline(always)]
    fn fma(self, a: V8, b: V8, c: V8) -> V8 {
        self.add(self.mul(a, b), c)
    }
    #[inline(always)]
    fn hsum(self, a: V8) -> f32 {
        let s = f32x4_add(a.0, a.1);
        (f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s))
            + (f32x4_extract_lane::<2>(s) + f32x4_extract_lane::<3>(s))
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u8) -> V8 {
        let h = v128_load(p.cast());
        V8(i32x4_shl(u32x4_extend_low_u16x8(h), 16), i32x4_shl(u32x4_extend_high_u16x8(h), 16))
    }
    #[inline(always)]
    fn lane0(self, a: V8) -> f32 {
        f32x4_extract_lane::<0>(a.0)
    }
    #[inline(always)]
    unsafe fn widen_u8(self, p: *const u8) -> V8 {
        let h = u16x8_load_extend_u8x8(p);
        V8(u32x4_extend_low_u16x8(h), u32x4_extend_high_u16x8(h))
    }
    #[inline(always)]
    unsafe fn widen_i8(self, p: *const u8) -> V8 {
        let h = i16x8_load_extend_i8x8(p.cast());
        V8(i32x4_extend_low_i16x8(h), i32x4_extend_high_i16x8(h))
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> V8 {
        V8(i32x4_splat(v), i32x4_splat(v))
    }
    #[inline(always)]
    fn and(self, a: V8, b: V8) -> V8 {
        V8(v128_and(a.0, b.0), v128_and(a.1, b.1))
    }
    #[inline(always)]
    fn or(self, a: V8, b: V8) -> V8 {
        V8(v128_or(a.0, b.0), v128_or(a.1, b.1))
    }
    #[inline(always)]
    fn sub_i(self, a: V8, b: V8) -> V8 {
        V8(i32x4_sub(a.0, b.0), i32x4_sub(a.1, b.1))
    }
    #[inline(always)]
    fn shr<const N: i32>(self, a: V8) -> V8 {
        V8(u32x4_shr(a.0, N as u32), u32x4_shr(a.1, N as u32))
    }
    #[inline(always)]
    fn shl<const N: i32>(self, a: V8) -> V8 {
        V8(i32x4_shl(a.0, N as u32), i32x4_shl(a.1, N as u32))
    }
    #[inline(always)]
    fn to_f32(self, a: V8) -> V8 {
        V8(f32x4_convert_i32x4(a.0), f32x4_convert_i32x4(a.1))
    }
}
