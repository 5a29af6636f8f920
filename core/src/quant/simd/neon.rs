//! NEON on little-endian aarch64, where it is part of the baseline: no detection needed, but for
//! the dot-product extension (`sdot`, Armv8.2's optional and Armv8.4's mandatory: the phone cores
//! of the last years), which decode's integer kernels use where it is present.

use core::arch::aarch64::*;

use super::Simd;
use crate::quant::int8::{Activations, Int8Kind};
use crate::quant::Format;

/// Proof that NEON is present (it always is on this target), and whether `sdot` is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon {
    dotprod: bool,
}

impl Neon {
    pub fn new() -> Self {
        #[cfg(feature = "std")]
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        #[cfg(not(feature = "std"))]
        let dotprod = cfg!(target_feature = "dotprod");
        Neon { dotprod }
    }

    /// The same ISA without `sdot` (for testing both integer kernels on a machine that has it).
    #[cfg(test)]
    pub fn without_dotprod(self) -> Self {
        Neon { dotprod: false }
    }

    pub fn has_dotprod(self) -> bool {
        self.dotprod
    }
}

/// Two q-registers make one eight-lane vector, so kernels are shared with the 256-bit ISAs.
#[derive(Clone, Copy)]
pub(crate) struct F8(float32x4_t, float32x4_t);
#[derive(Clone, Copy)]
pub(crate) struct I8(int32x4_t, int32x4_t);

/// # Safety
/// As [`super::dot_rows`].
pub(super) unsafe fn dot_rows<F: Format>(s: Neon, rows: &[u8], x: &[f32], xsum: &[f32], out: &mut [f32]) {
    super::dot_rows_with::<F, Neon>(s, rows, x, xsum, out)
}

/// # Safety
/// As [`super::dot_rows_int8`].
pub(super) unsafe fn dot_rows_int8(s: Neon, kind: Int8Kind, rows: &[u8], a: &Activations, out: &mut [f32]) {
    match s.dotprod {
        true => dot_rows_int8_sdot(s, kind, rows, a, out),
        false => super::dot_rows_int8_by_block(s, kind, rows, a, out, |w, nibbles, x| {
            block_dot::<false>(w, nibbles, x)
        }),
    }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_rows_int8_sdot(s: Neon, kind: Int8Kind, rows: &[u8], a: &Activations, out: &mut [f32]) {
    super::dot_rows_int8_by_block(s, kind, rows, a, out, |w, nibbles, x| block_dot::<true>(w, nibbles, x))
}

/// The 32 byte products of a block summed in integers: with `SDOT` four per lane per
/// instruction, else widening multiplies into i16 (two products of at most 128·127 fit) and a
/// pairwise widening sum.
///
/// # Safety
/// `w` points at 16 bytes of nibbles (value `j` low in byte `j`, value `j + 16` high) when
/// `nibbles`, else at 32 i8; `x` at 32 i8; with `SDOT`, the CPU has the dot-product extension.
#[inline(always)]
unsafe fn block_dot<const SDOT: bool>(w: *const u8, nibbles: bool, x: *const i8) -> i32 {
    let (w0, w1) = if nibbles {
        let packed = vld1q_u8(w);
        (
            vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))),
            vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed)),
        )
    } else {
        (vld1q_s8(w.cast()), vld1q_s8(w.add(16).cast()))
    };
    let (x0, x1) = (vld1q_s8(x), vld1q_s8(x.add(16)));
    if SDOT {
        let mut acc = vdupq_n_s32(0);
        // `vdotq_s32` is not stable yet; the instruction is what it compiles to.
        core::arch::asm!(
            "sdot {acc:v}.4s, {w0:v}.16b, {x0:v}.16b",
            "sdot {acc:v}.4s, {w1:v}.16b, {x1:v}.16b",
            acc = inout(vreg) acc,
            w0 = in(vreg) w0,
            x0 = in(vreg) x0,
            w1 = in(vreg) w1,
            x1 = in(vreg) x1,
            options(pure, nomem, nostack, preserves_flags),
        );
        vaddvq_s32(acc)
    } else {
        let low = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
        let high = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
        vaddvq_s32(vpadalq_s16(vpaddlq_s16(low), high))
    }
}

/// # Safety
/// As [`super::gemm`], whose checks the caller has made.
pub(super) unsafe fn gemm(s: Neon, w: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32]) {
    super::gemm_with(s, w, x, k, tokens, out)
}

/// # Safety
/// As [`super::gemm_acc`], whose checks the caller has made.
pub(super) unsafe fn gemm_acc(s: Neon, ops: super::AccOperands, out: &mut [f32]) {
    super::gemm_acc_with(s, ops, out)
}

// SAFETY (every method): NEON is enabled at compile time for this module.
impl Simd for Neon {
    type F = F8;
    type I = I8;

    #[inline(always)]
    fn zero(self) -> F8 {
        self.splat(0.0)
    }
    #[inline(always)]
    fn splat(self, v: f32) -> F8 {
        unsafe { F8(vdupq_n_f32(v), vdupq_n_f32(v)) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> F8 {
        F8(vld1q_f32(p), vld1q_f32(p.add(4)))
    }
    #[inline(always)]
    unsafe fn load_le(self, p: *const u8) -> F8 {
        F8(vreinterpretq_f32_u8(vld1q_u8(p)), vreinterpretq_f32_u8(vld1q_u8(p.add(16))))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: F8) {
        vst1q_f32(p, v.0);
        vst1q_f32(p.add(4), v.1);
    }
    #[inline(always)]
    fn add(self, a: F8, b: F8) -> F8 {
        unsafe { F8(vaddq_f32(a.0, b.0), vaddq_f32(a.1, b.1)) }
    }
    #[inline(always)]
    fn mul(self, a: F8, b: F8) -> F8 {
        unsafe { F8(vmulq_f32(a.0, b.0), vmulq_f32(a.1, b.1)) }
    }
    #[inline(always)]
    fn fma(self, a: F8, b: F8, c: F8) -> F8 {
        unsafe { F8(vfmaq_f32(c.0, a.0, b.0), vfmaq_f32(c.1, a.1, b.1)) }
    }
    #[inline(always)]
    fn prefetch(self, p: *const u8) {
        // SAFETY: `prfm` reads nothing and never faults, whatever the address.
        unsafe {
            core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
        }
    }
    #[inline(always)]
    fn hsum(self, a: F8) -> f32 {
        unsafe { vaddvq_f32(vaddq_f32(a.0, a.1)) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u8) -> F8 {
        let h = vld1q_u16(p.cast());
        F8(
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
            vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
        )
    }
    #[inline(always)]
    fn lane0(self, a: F8) -> f32 {
        unsafe { vgetq_lane_f32::<0>(a.0) }
    }
    #[inline(always)]
    unsafe fn widen_u8(self, p: *const u8) -> I8 {
        let h = vmovl_u8(vld1_u8(p));
        I8(vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(h))), vreinterpretq_s32_u32(vmovl_high_u16(h)))
    }
    #[inline(always)]
    unsafe fn widen_i8(self, p: *const u8) -> I8 {
        let h = vmovl_s8(vld1_s8(p.cast()));
        I8(vmovl_s16(vget_low_s16(h)), vmovl_high_s16(h))
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> I8 {
        unsafe { I8(vdupq_n_s32(v), vdupq_n_s32(v)) }
    }
    #[inline(always)]
    fn and(self, a: I8, b: I8) -> I8 {
        unsafe { I8(vandq_s32(a.0, b.0), vandq_s32(a.1, b.1)) }
    }
    #[inline(always)]
    fn or(self, a: I8, b: I8) -> I8 {
        unsafe { I8(vorrq_s32(a.0, b.0), vorrq_s32(a.1, b.1)) }
    }
    #[inline(always)]
    fn sub_i(self, a: I8, b: I8) -> I8 {
        unsafe { I8(vsubq_s32(a.0, b.0), vsubq_s32(a.1, b.1)) }
    }
    #[inline(always)]
    fn shr<const N: i32>(self, a: I8) -> I8 {
        unsafe {
            let sh = |v| vreinterpretq_s32_u32(vshrq_n_u32::<N>(vreinterpretq_u32_s32(v)));
            I8(sh(a.0), sh(a.1))
        }
    }
    #[inline(always)]
    fn shl<const N: i32>(self, a: I8) -> I8 {
        unsafe { I8(vshlq_n_s32::<N>(a.0), vshlq_n_s32::<N>(a.1)) }
    }
    #[inline(always)]
    fn to_f32(self, a: I8) -> F8 {
        unsafe { F8(vcvtq_f32_s32(a.0), vcvtq_f32_s32(a.1)) }
    }
}
