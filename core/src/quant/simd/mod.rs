//! The instruction sets the kernels run on. Each format writes its row-dot once against the
//! [`Simd`] vocabulary (eight f32 lanes, eight i32 lanes); each ISA module implements that
//! vocabulary and provides entry points compiled with its target features, into which the
//! generic kernels inline. A value of an ISA type is the proof that the ISA is present: only
//! detection constructs one, so the trait methods can be safe.

use super::int8::{Activations, Int8Kind};
use super::Format;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod avx2;
#[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
mod neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
pub(crate) use amx::round_bf16;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) use amx::{TileRows, Tiles};

/// No tile unit on this target: the type exists so that callers need no `cfg`, and has no value.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tiles {}

/// Never made (there is no `Tiles` to make one); a struct, so that code after a call that
/// returns it is not unreachable.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) struct TileRows(());

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
impl Tiles {
    pub fn detect() -> Option<Tiles> {
        None
    }

    pub fn rows(self, _: &[f32], _: usize, _: usize, _: usize) -> TileRows {
        match self {}
    }

    pub unsafe fn product(self, _: TileProduct) {
        match self {}
    }

    pub unsafe fn product_acc(self, _: TileProduct) {
        match self {}
    }
}

/// The operands of a [`Tiles`] product: `tokens` rows of `a` (the tokens, packed), the `n`
/// decoded weight rows `w` of `width` f32 values each, and the result at `out`, `ld` values
/// between its rows.
#[derive(Clone, Copy)]
// Where there is no tile unit nothing reads them (no product runs).
#[cfg_attr(not(all(target_arch = "x86_64", target_os = "linux")), allow(dead_code))]
pub(crate) struct TileProduct<'a> {
    pub a: &'a TileRows,
    pub tokens: usize,
    pub w: &'a [f32],
    pub n: usize,
    pub width: usize,
    pub out: *mut f32,
    pub ld: usize,
}

/// Eight-lane SIMD operations, all `#[inline(always)]` in the implementations so that they
/// compile inside the target-feature entry points.
pub(crate) trait Simd: Copy {
    /// Eight f32.
    type F: Copy;
    /// Eight i32.
    type I: Copy;

    fn zero(self) -> Self::F;
    fn splat(self, v: f32) -> Self::F;
    /// # Safety
    /// `p` points at eight readable f32.
    unsafe fn load(self, p: *const f32) -> Self::F;
    /// # Safety
    /// `p` points at 32 readable bytes holding eight little-endian f32, at any alignment.
    unsafe fn load_le(self, p: *const u8) -> Self::F;
    /// # Safety
    /// `p` points at eight writable f32.
    unsafe fn store(self, p: *mut f32, v: Self::F);
    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    fn mul(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c`, fused where the ISA has it.
    fn fma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    fn hsum(self, a: Self::F) -> f32;
    /// # Safety
    /// `p` points at 16 bytes holding eight little-endian bf16, at any alignment.
    unsafe fn load_bf16(self, p: *const u8) -> Self::F;
    /// # Safety
    /// `p` points at 16 bytes holding eight little-endian f16, at any alignment.
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u8) -> Self::F {
        let v: [f32; 8] = core::array::from_fn(|i| super::f16_le(*p.add(2 * i), *p.add(2 * i + 1)));
        self.load(v.as_ptr())
    }

    /// # Safety
    /// `p` points at eight readable bytes; each is zero-extended into a lane.
    unsafe fn widen_u8(self, p: *const u8) -> Self::I;
    /// # Safety
    /// `p` points at eight readable bytes; each is sign-extended into a lane.
    unsafe fn widen_i8(self, p: *const u8) -> Self::I;
    fn splat_i(self, v: i32) -> Self::I;
    fn and(self, a: Self::I, b: Self::I) -> Self::I;
    fn or(self, a: Self::I, b: Self::I) -> Self::I;
    fn sub_i(self, a: Self::I, b: Self::I) -> Self::I;
    /// Logical shift right, `1 <= N <= 31`.
    fn shr<const N: i32>(self, a: Self::I) -> Self::I;
    /// Shift left, `1 <= N <= 31`.
    fn shl<const N: i32>(self, a: Self::I) -> Self::I;
    fn to_f32(self, a: Self::I) -> Self::F;

    /// The first lane.
    fn lane0(self, a: Self::F) -> f32;

    /// Asks for the cache line holding `p` ahead of its use: a hint, at any address (it never
    /// faults); nothing where the ISA module has no instruction for it.
    #[inline(always)]
    fn prefetch(self, p: *const u8) {
        let _ = p;
    }

    /// The f16 at `p` (little-endian, any alignment) as f32; exact. For the block scales, which
    /// are normal numbers in practice, this takes a branch that is integer ops only: the float
    /// ports are what the kernels run out of, and a vector convert would merge into (and wait
    /// on) whatever register LLVM picks, possibly the loop's accumulator.
    ///
    /// # Safety
    /// `p` points at two readable bytes.
    #[inline(always)]
    unsafe fn f16(self, p: *const u8) -> f32 {
        let h = u32::from(u16::from_le_bytes([*p, *p.add(1)]));
        let em = h & 0x7fff;
        if em.wrapping_sub(0x400) < 0x7c00 - 0x400 {
            f32::from_bits((h & 0x8000) << 16 | ((em << 13) + ((127 - 15) << 23)))
        } else {
            super::f16_le(*p, *p.add(1))
        }
    }

    /// The f16 at `p` in every lane.
    ///
    /// # Safety
    /// `p` points at two readable bytes.
    #[inline(always)]
    unsafe fn splat_f16(self, p: *const u8) -> Self::F {
        self.splat(self.f16(p))
    }

    /// `Σ to_f32(q[i]) * x[8i..8i+8]` over four lane groups, as a vector: the body of every
    /// 32-value block. Two chains so the adds overlap.
    ///
    /// # Safety
    /// `x` points at 32 readable f32.
    #[inline(always)]
    unsafe fn dot32(self, q: [Self::I; 4], x: *const f32) -> Self::F {
        let a = self.mul(self.to_f32(q[0]), self.load(x));
        let b = self.mul(self.to_f32(q[1]), self.load(x.add(8)));
        let a = self.fma(self.to_f32(q[2]), self.load(x.add(16)), a);
        let b = self.fma(self.to_f32(q[3]), self.load(x.add(24)), b);
        self.add(a, b)
    }
}

/// The f32 vocabulary of the matrix-product kernels ([`gemm`], [`gemm_acc`]), at any vector
/// width: every [`Simd`] ISA with its eight lanes, and AVX-512's sixteen, which the row kernels
/// do not use (their blocks are laid out for eight) but the products, limited by FMA throughput
/// alone, run twice as wide on.
pub(crate) trait Fma: Copy {
    type F: Copy;
    const LANES: usize;
    fn zero(self) -> Self::F;
    fn splat(self, v: f32) -> Self::F;
    /// # Safety
    /// `p` points at `LANES` readable f32.
    unsafe fn load(self, p: *const f32) -> Self::F;
    /// # Safety
    /// `p` points at `LANES` writable f32.
    unsafe fn store(self, p: *mut f32, v: Self::F);
    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    fn fma(self, a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    fn hsum(self, a: Self::F) -> f32;
}

impl<S: Simd> Fma for S {
    type F = S::F;
    const LANES: usize = 8;
    #[inline(always)]
    fn zero(self) -> S::F {
        Simd::zero(self)
    }
    #[inline(always)]
    fn splat(self, v: f32) -> S::F {
        Simd::splat(self, v)
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> S::F {
        Simd::load(self, p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: S::F) {
        Simd::store(self, p, v)
    }
    #[inline(always)]
    fn add(self, a: S::F, b: S::F) -> S::F {
        Simd::add(self, a, b)
    }
    #[inline(always)]
    fn fma(self, a: S::F, b: S::F, c: S::F) -> S::F {
        Simd::fma(self, a, b, c)
    }
    #[inline(always)]
    fn hsum(self, a: S::F) -> f32 {
        Simd::hsum(self, a)
    }
}

/// The instruction set a matrix's kernels run on, chosen once when the matrix is built.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Isa {
    /// The portable scalar reference.
    Scalar,
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx2(avx2::Avx2),
    #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
    Neon(neon::Neon),
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128(wasm::Simd128),
}

impl Isa {
    /// The best instruction set this machine has.
    pub fn detect() -> Isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            avx2::Avx2::detect().map_or(Isa::Scalar, Isa::Avx2)
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
        {
            Isa::Neon(neon::Neon::new())
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            Isa::Simd128(wasm::Simd128::new())
        }
        #[cfg(not(any(
            target_arch = "x86",
            target_arch = "x86_64",
            all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"),
            all(target_arch = "wasm32", target_feature = "simd128")
        )))]
        {
            Isa::Scalar
        }
    }

    /// Every integer-kernel variant usable here: [`all`](Self::all), AVX2 without AVX-VNNI
    /// and NEON without `sdot` where the CPU has them.
    #[cfg(test)]
    pub fn all_int8() -> alloc::vec::Vec<Isa> {
        #[allow(unused_mut)]
        let mut all = Self::all();
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if let Isa::Avx2(s) = Isa::detect() {
            if s.has_vnni() {
                all.push(Isa::Avx2(s.without_vnni()));
            }
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
        if let Isa::Neon(s) = Isa::detect() {
            if s.has_dotprod() {
                all.push(Isa::Neon(s.without_dotprod()));
            }
        }
        all
    }

    /// Every instruction set usable here, the scalar reference first.
    #[cfg(test)]
    pub fn all() -> alloc::vec::Vec<Isa> {
        let mut all = alloc::vec![Isa::Scalar];
        let best = Isa::detect();
        if !matches!(best, Isa::Scalar) {
            all.push(best);
        }
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if let Isa::Avx2(s) = best {
            if s.has_avx512() {
                all.push(Isa::Avx2(s.without_avx512()));
            }
        }
        all
    }

    /// [`name`](Self::name) with decode on integer activations.
    pub fn int8_name(self) -> &'static str {
        match self {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2(s) if s.has_avx512_vnni() => "avx-512 vnni, i8 activations",
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2(s) if s.has_vnni() => "avx2+fma+avx-vnni, i8 activations",
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2(_) => "avx2+fma, i8 activations",
            #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
            Isa::Neon(s) if s.has_dotprod() => "neon sdot, i8 activations",
            #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
            Isa::Neon(_) => "neon, i8 activations",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128(_) => "simd128, i8 activations",
            Isa::Scalar => "scalar",
        }
    }

    /// Whether this instruction set has integer kernels for decode ([`dot_rows_int8`]): every
    /// one but the scalar reference.
    pub fn has_int8(self) -> bool {
        !matches!(self, Isa::Scalar)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2(s) if s.has_avx512() => "avx2+fma, avx-512 products",
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2(_) => "avx2+fma",
            #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
            Isa::Neon(_) => "neon",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128(_) => "simd128",
        }
    }
}

/// `out[r] = dot(row r of rows, x)` for `out.len()` consecutive rows.
///
/// # Safety
/// `rows` holds `out.len()` rows of whole `F` blocks whose values number `x.len()` each; when
/// `F::XSUMS`, `xsum` holds the sums of `x` over each 32 values.
pub(crate) unsafe fn dot_rows<F: Format>(isa: Isa, rows: &[u8], x: &[f32], xsum: &[f32], out: &mut [f32]) {
    match isa {
        Isa::Scalar => {
            let row_bytes = rows.len() / out.len().max(1);
            for (row, o) in rows.chunks_exact(row_bytes.max(1)).zip(out.iter_mut()) {
                *o = super::dot_row_ref::<F>(row, x);
            }
        }
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        Isa::Avx2(s) => avx2::dot_rows::<F>(s, rows, x, xsum, out),
        #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
        Isa::Neon(s) => neon::dot_rows::<F>(s, rows, x, xsum, out),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128(s) => wasm::dot_rows::<F>(s, rows, x, xsum, out),
    }
}

/// `out[r] = dot(row r of rows, a)` for `out.len()` consecutive rows of `kind` blocks, with
/// integer products (see [`super::int8`]) where [`Isa::has_int8`], else the scalar reference.
///
/// # Safety
/// `rows` holds `out.len()` rows of whole `kind` blocks of `a.q.len()` values each.
pub(crate) unsafe fn dot_rows_int8(isa: Isa, kind: Int8Kind, rows: &[u8], a: &Activations, out: &mut [f32]) {
    match isa {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        Isa::Avx2(s) => avx2::dot_rows_int8(s, kind, rows, a, out),
        #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
        Isa::Neon(s) => neon::dot_rows_int8(s, kind, rows, a, out),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128(s) => wasm::dot_rows_int8(s, kind, rows, a, out),
        Isa::Scalar => {
            let row_bytes = rows.len() / out.len().max(1);
            for (row, o) in rows.chunks_exact(row_bytes.max(1)).zip(out.iter_mut()) {
                *o = super::int8::dot_row_ref(kind, row, a);
            }
        }
    }
}

/// The body of the integer kernels that take one row and one block at a time (NEON, SIMD128):
/// each block's 32 byte products summed by the ISA's `dot(weights, nibbles, activations)`, then
/// scaled and offset in f32 exactly as [`super::int8::dot_row_ref`] does.
#[cfg(any(
    all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"),
    all(target_arch = "wasm32", target_feature = "simd128")
))]
#[inline(always)]
unsafe fn dot_rows_int8_by_block<S: Simd>(
    s: S,
    kind: Int8Kind,
    rows: &[u8],
    a: &Activations,
    out: &mut [f32],
    dot: impl Fn(*const u8, bool, *const i8) -> i32,
) {
    let row_bytes = rows.len() / out.len().max(1);
    for (row, o) in rows.chunks_exact(row_bytes.max(1)).zip(out.iter_mut()) {
        prefetch_ahead(s, row);
        let mut acc = 0f32;
        for (b, block) in row.chunks_exact(kind.block_bytes()).enumerate() {
            let dw = super::f16_at(block, 0);
            let (w, x) = (block.as_ptr(), a.q.as_ptr().add(32 * b));
            let (dot, offset) = match kind {
                Int8Kind::Q8_0 => (dot(w.add(2), false, x), 0.0),
                Int8Kind::Q4_0 => (dot(w.add(2), true, x), -8.0 * dw),
                Int8Kind::Q4_1 => (dot(w.add(4), true, x), super::f16_at(block, 2)),
            };
            acc += dot as f32 * (dw * a.d[b]) + offset * a.sum[b];
        }
        *o = acc;
    }
}

/// The body of the ISA entry points of [`dot_rows`].
#[inline(always)]
unsafe fn dot_rows_with<F: Format, S: Simd>(s: S, rows: &[u8], x: &[f32], xsum: &[f32], out: &mut [f32]) {
    let row_bytes = rows.len() / out.len().max(1);
    for (row, o) in rows.chunks_exact(row_bytes.max(1)).zip(out.iter_mut()) {
        prefetch_ahead(s, row);
        *o = F::dot_row(s, row, x, xsum);
    }
}

/// How far ahead of the rows being read the row kernels ask for weight bytes: one 4 KiB page.
/// The hardware prefetchers stop at page boundaries, and the weights are memory-mapped in 4 KiB
/// pages, so without the hint every page of a decode step's ~90 MB of weights starts with a
/// cache miss (decode of SmolLM2-135M measured 1.3x faster with it, on 2 threads of a Xeon).
const PREFETCH_BYTES: usize = 4096;

/// Prefetches the bytes `PREFETCH_BYTES` after `bytes`, as many as `bytes` holds: called once
/// per row (or group of rows read together) as the kernel starts on it.
#[inline(always)]
fn prefetch_ahead<S: Simd>(s: S, bytes: &[u8]) {
    for line in (0..bytes.len()).step_by(64) {
        s.prefetch(bytes.as_ptr().wrapping_add(PREFETCH_BYTES + line));
    }
}

/// `out[r * tokens + t] = dot(w[r], x[t])` for f32 rows `w` (`out.len() / tokens` of them) and
/// tokens `x`, both `k` long: the prefill product once the weight rows are decoded.
pub(crate) fn gemm(isa: Isa, w: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32]) {
    let rows = out.len() / tokens.max(1);
    assert!(w.len() >= rows * k && x.len() >= tokens * k && out.len() == rows * tokens);
    match isa {
        Isa::Scalar => {
            for (r, o) in out.chunks_exact_mut(tokens.max(1)).enumerate() {
                let w = &w[r * k..(r + 1) * k];
                for (t, o) in o.iter_mut().enumerate() {
                    let x = &x[t * k..(t + 1) * k];
                    *o = w.iter().zip(x).fold(0.0, |acc, (w, x)| acc + w * x);
                }
            }
        }
        // SAFETY: the assert above bounds every read; the token proves the ISA.
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        Isa::Avx2(s) => unsafe { avx2::gemm(s, w, x, k, tokens, out) },
        #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
        Isa::Neon(s) => unsafe { neon::gemm(s, w, x, k, tokens, out) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128(s) => unsafe { wasm::gemm(s, w, x, k, tokens, out) },
    }
}

/// The operands of [`gemm_acc`]: `tokens` rows of `a` (`lda` apart, `n` values used of each)
/// and `n` f32 weight rows `w`.
#[derive(Clone, Copy)]
pub(crate) struct AccOperands<'a> {
    pub a: &'a [f32],
    pub lda: usize,
    pub w: &'a [f32],
    pub n: usize,
    pub tokens: usize,
}

/// `out[t * width + c] += Σ_{r < n} a[t * lda + r] · w[r * width + c]` for `tokens` rows of `a`
/// and f32 weight rows `w` (`n` of `width`): the product with `Wᵀ` once a slab of weight rows
/// is decoded, accumulated over slabs. Unlike [`gemm`] it needs no transposed copy of the
/// weights: each step broadcasts one value of `a` per token against whole weight rows.
pub(crate) fn gemm_acc(isa: Isa, ops: AccOperands, out: &mut [f32]) {
    let AccOperands { a, lda, w, n, tokens } = ops;
    let width = out.len() / tokens.max(1);
    assert!(n <= lda && w.len() >= n * width && out.len() == tokens * width);
    assert!(tokens == 0 || a.len() >= (tokens - 1) * lda + n);
    match isa {
        Isa::Scalar => {
            for (t, out) in out.chunks_exact_mut(width.max(1)).enumerate() {
                for (r, w) in w.chunks_exact(width.max(1)).take(n).enumerate() {
                    let a = a[t * lda + r];
                    out.iter_mut().zip(w).for_each(|(o, w)| *o += a * w);
                }
            }
        }
        // SAFETY: the asserts above bound every access; the token proves the ISA.
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        Isa::Avx2(s) => unsafe { avx2::gemm_acc(s, ops, out) },
        #[cfg(all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"))]
        Isa::Neon(s) => unsafe { neon::gemm_acc(s, ops, out) },
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        Isa::Simd128(s) => unsafe { wasm::gemm_acc(s, ops, out) },
    }
}

/// [`gemm`] on this machine's best kernels, for f32 operands outside a matrix (the host
/// decoder's attention scores, a LoRA's `A·x`).
pub(crate) fn f32_gemm(w: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32]) {
    gemm(Isa::detect(), w, x, k, tokens, out)
}

/// [`gemm_acc`] on this machine's best kernels (the host decoder's attention-weighted values, a
/// LoRA's `B·(A·x)`).
pub(crate) fn f32_gemm_acc(ops: AccOperands, out: &mut [f32]) {
    gemm_acc(Isa::detect(), ops, out)
}

/// The body of the ISA entry points of [`gemm_acc`]: tiles of 6 tokens by 2 vectors of columns
/// keep twelve accumulators in registers, loading two weight vectors and broadcasting six values
/// per step; columns past the last multiple of the vector width are summed as scalars.
#[inline(always)]
pub(super) unsafe fn gemm_acc_with<S: Fma>(s: S, ops: AccOperands, out: &mut [f32]) {
    const T: usize = 6;
    let AccOperands { a, lda, w, n, tokens } = ops;
    let width = out.len() / tokens.max(1);
    let (a, w, o) = (a.as_ptr(), w.as_ptr(), out.as_mut_ptr());
    let body = width / S::LANES * S::LANES;
    let mut t = 0;
    while t < tokens {
        // Three tokens (a kv head's query heads in decode's attention) in one pass too.
        let tn = match tokens - t {
            left if left >= T => T,
            left if left >= 3 => 3,
            _ => 1,
        };
        let mut c = 0;
        while c < body {
            let cn = if body - c >= 2 * S::LANES { 2 } else { 1 };
            match (tn, cn) {
                (T, 2) => acc_tile::<S, T, 2>(s, a, lda, w, n, width, t, c, o),
                (T, _) => acc_tile::<S, T, 1>(s, a, lda, w, n, width, t, c, o),
                (3, 2) => acc_tile::<S, 3, 2>(s, a, lda, w, n, width, t, c, o),
                (3, _) => acc_tile::<S, 3, 1>(s, a, lda, w, n, width, t, c, o),
                (_, 2) => acc_tile::<S, 1, 2>(s, a, lda, w, n, width, t, c, o),
                _ => acc_tile::<S, 1, 1>(s, a, lda, w, n, width, t, c, o),
            }
            c += S::LANES * cn;
        }
        for t in t..t + tn {
            for c in body..width {
                let mut sum = 0.0;
                for r in 0..n {
                    sum += *a.add(t * lda + r) * *w.add(r * width + c);
                }
                *o.add(t * width + c) += sum;
            }
        }
        t += tn;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn acc_tile<S: Fma, const T: usize, const C: usize>(
    s: S,
    a: *const f32,
    lda: usize,
    w: *const f32,
    n: usize,
    width: usize,
    t0: usize,
    c0: usize,
    out: *mut f32,
) {
    let mut acc = [[s.zero(); C]; T];
    for r in 0..n {
        let wv: [S::F; C] = core::array::from_fn(|v| s.load(w.add(r * width + c0 + S::LANES * v)));
        for (t, acc) in acc.iter_mut().enumerate() {
            let av = s.splat(*a.add((t0 + t) * lda + r));
            for (acc, wv) in acc.iter_mut().zip(wv) {
                *acc = s.fma(av, wv, *acc);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            let p = out.add((t0 + t) * width + c0 + S::LANES * v);
            s.store(p, s.add(s.load(p), *acc));
        }
    }
}

/// The body of the ISA entry points of [`gemm`]: tiles of 4 rows by 3 tokens keep twelve
/// accumulators in registers (enough independent chains to cover the FMA latency; 4x3 measured
/// ~10% faster than 4x2 on Zen 3, and 3x4 spills) and load each weight vector once per three
/// tokens. Tokens are the outer loop, so a token triple stays in L1 while all the (L1-sized)
/// decoded rows pass it.
#[inline(always)]
pub(super) unsafe fn gemm_with<S: Fma>(s: S, w: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32]) {
    const R: usize = 4;
    const T: usize = 3;
    let rows = out.len() / tokens;
    let (w, x, o) = (w.as_ptr(), x.as_ptr(), out.as_mut_ptr());
    let mut t = 0;
    while t < tokens {
        let tn = if tokens - t >= T { T } else { 1 };
        let mut r = 0;
        while r < rows {
            let rn = if rows - r >= R { R } else { 1 };
            match (rn, tn) {
                (R, T) => tile::<S, R, T>(s, w, x, k, r, t, tokens, o),
                (R, _) => tile::<S, R, 1>(s, w, x, k, r, t, tokens, o),
                (_, T) => tile::<S, 1, T>(s, w, x, k, r, t, tokens, o),
                _ => tile::<S, 1, 1>(s, w, x, k, r, t, tokens, o),
            }
            r += rn;
        }
        t += tn;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<S: Fma, const R: usize, const T: usize>(
    s: S,
    w: *const f32,
    x: *const f32,
    k: usize,
    r0: usize,
    t0: usize,
    tokens: usize,
    out: *mut f32,
) {
    let mut acc = [[s.zero(); T]; R];
    let body = k / S::LANES * S::LANES;
    let mut c = 0;
    while c < body {
        let xv: [S::F; T] = core::array::from_fn(|t| s.load(x.add((t0 + t) * k + c)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let wv = s.load(w.add((r0 + r) * k + c));
            for (a, xv) in acc.iter_mut().zip(xv) {
                *a = s.fma(wv, xv, *a);
            }
        }
        c += S::LANES;
    }
    for (r, acc) in acc.iter().enumerate() {
        let wr = w.add((r0 + r) * k);
        for (t, a) in acc.iter().enumerate() {
            let xt = x.add((t0 + t) * k);
            let mut sum = s.hsum(*a);
            for c in body..k {
                sum += *wr.add(c) * *xt.add(c);
            }
            *out.add((r0 + r) * tokens + t0 + t) = sum;
        }
    }
}
