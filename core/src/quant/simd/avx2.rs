//! AVX2 + FMA (+ F16C for block scales) on x86 and x86_64, detected at run time with `std` and
//! at compile time without it.

#[cfg(target_arch = "x86")]
use core::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use super::Simd;
use crate::quant::int8::{Activations, Int8Kind};
use crate::quant::Format;

/// Proof that AVX2, FMA and F16C are present, whether AVX-VNNI is (its `vpdpbusd` sums a
/// block's byte products into i32 in one instruction), and whether AVX-512F is (the matrix
/// products then run on sixteen lanes, see [`Avx512`]) with its byte-dot extension (the
/// integer kernels then take two blocks per instruction).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    vnni: bool,
    avx512: bool,
    avx512_vnni: bool,
}

impl Avx2 {
    pub fn detect() -> Option<Self> {
        #[cfg(feature = "std")]
        let present = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
        #[cfg(not(feature = "std"))]
        let present = cfg!(all(target_feature = "avx2", target_feature = "fma", target_feature = "f16c"));
        #[cfg(feature = "std")]
        let vnni = std::is_x86_feature_detected!("avxvnni");
        #[cfg(not(feature = "std"))]
        let vnni = cfg!(target_feature = "avxvnni");
        #[cfg(feature = "std")]
        let avx512 = std::is_x86_feature_detected!("avx512f");
        #[cfg(not(feature = "std"))]
        let avx512 = cfg!(target_feature = "avx512f");
        #[cfg(feature = "std")]
        let avx512_vnni = avx512
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni");
        #[cfg(not(feature = "std"))]
        let avx512_vnni = avx512 && cfg!(all(target_feature = "avx512bw", target_feature = "avx512vnni"));
        present.then_some(Avx2 { vnni, avx512, avx512_vnni })
    }

    /// The same ISA without AVX-VNNI (for testing both paths on a machine that has it).
    #[cfg(test)]
    pub fn without_vnni(self) -> Self {
        Avx2 { vnni: false, avx512_vnni: false, ..self }
    }

    /// The same ISA without AVX-512 (for testing both product widths on a machine that has it).
    #[cfg(test)]
    pub fn without_avx512(self) -> Self {
        Avx2 { avx512: false, avx512_vnni: false, ..self }
    }

    pub fn has_vnni(self) -> bool {
        self.vnni
    }

    pub fn has_avx512(self) -> bool {
        self.avx512
    }

    pub fn has_avx512_vnni(self) -> bool {
        self.avx512_vnni
    }
}

/// AVX-512F's sixteen f32 lanes, for the matrix products; made only where [`Avx2`] found it.
#[derive(Clone, Copy)]
struct Avx512;

// SAFETY (every method): an `Avx512` is made only inside the entry points compiled for it.
impl super::Fma for Avx512 {
    type F = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    fn zero(self) -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, v: f32) -> __m512 {
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn hsum(self, a: __m512) -> f32 {
        unsafe { _mm512_reduce_add_ps(a) }
    }
}

/// # Safety
/// As [`super::dot_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows<F: Format>(s: Avx2, rows: &[u8], x: &[f32], xsum: &[f32], out: &mut [f32]) {
    super::dot_rows_with::<F, Avx2>(s, rows, x, xsum, out)
}

/// # Safety
/// As [`super::gemm`], whose checks the caller has made.
pub(super) unsafe fn gemm(s: Avx2, w: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32]) {
    match s.avx512 {
        true => gemm_avx512(w, x, k, tokens, out),
        false => gemm_avx2(s, w, x, k, tokens, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_avx2(s: Avx2, w: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32]) {
    super::gemm_with(s, w, x, k, tokens, out)
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm_avx512(w: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32]) {
    super::gemm_with(Avx512, w, x, k, tokens, out)
}

/// # Safety
/// As [`super::gemm_acc`], whose checks the caller has made.
pub(super) unsafe fn gemm_acc(s: Avx2, ops: super::AccOperands, out: &mut [f32]) {
    match s.avx512 {
        true => gemm_acc_avx512(ops, out),
        false => gemm_acc_avx2(s, ops, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_acc_avx2(s: Avx2, ops: super::AccOperands, out: &mut [f32]) {
    super::gemm_acc_with(s, ops, out)
}

#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gemm_acc_avx512(ops: super::AccOperands, out: &mut [f32]) {
    super::gemm_acc_with(Avx512, ops, out)
}

/// # Safety
/// As [`super::dot_rows_int8`].
pub(super) unsafe fn dot_rows_int8(s: Avx2, kind: Int8Kind, rows: &[u8], a: &Activations, out: &mut [f32]) {
    match (s.avx512_vnni, s.vnni) {
        (true, _) => dot_rows_int8_avx512(s, kind, rows, a, out),
        (false, true) => dot_rows_int8_vnni(s, kind, rows, a, out),
        (false, false) => dot_rows_int8_avx2(s, kind, rows, a, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_int8_avx2(s: Avx2, kind: Int8Kind, rows: &[u8], a: &Activations, out: &mut [f32]) {
    dot_rows_int8_with::<false>(s, kind, rows, a, out)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn dot_rows_int8_vnni(s: Avx2, kind: Int8Kind, rows: &[u8], a: &Activations, out: &mut [f32]) {
    dot_rows_int8_with::<true>(s, kind, rows, a, out)
}

/// The body of the two entry points above, inlined into each with its target features.
#[inline(always)]
unsafe fn dot_rows_int8_with<const VNNI: bool>(
    s: Avx2,
    kind: Int8Kind,
    rows: &[u8],
    a: &Activations,
    out: &mut [f32],
) {
    match kind {
        Int8Kind::Q4_0 => by_four(
            s,
            rows,
            out,
            |rows| nibble_dots::<18, false, VNNI, 4>(s, rows, a),
            |row| nibble_dots::<18, false, VNNI, 1>(s, row, a),
        ),
        Int8Kind::Q4_1 => by_four(
            s,
            rows,
            out,
            |rows| nibble_dots::<20, true, VNNI, 4>(s, rows, a),
            |row| nibble_dots::<20, true, VNNI, 1>(s, row, a),
        ),
        Int8Kind::Q8_0 => by_one(s, rows, out, |row| q8_row::<VNNI>(s, row, a)),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_rows_int8_avx512(s: Avx2, kind: Int8Kind, rows: &[u8], a: &Activations, out: &mut [f32]) {
    match kind {
        Int8Kind::Q4_0 => by_four(
            s,
            rows,
            out,
            |rows| nibble_dots_avx512::<18, false, 4>(s, rows, a),
            |row| nibble_dots_avx512::<18, false, 1>(s, row, a),
        ),
        Int8Kind::Q4_1 => by_four(
            s,
            rows,
            out,
            |rows| nibble_dots_avx512::<20, true, 4>(s, rows, a),
            |row| nibble_dots_avx512::<20, true, 1>(s, row, a),
        ),
        Int8Kind::Q8_0 => by_one(s, rows, out, |row| q8_row_avx512(s, row, a)),
    }
}

/// `out[r]` for the rows in `rows` four at a time by `four` (each block's activations loaded
/// once for four rows, and four independent accumulation chains), the last few by `one`; each
/// group's bytes a page ahead prefetched as it starts.
#[inline(always)]
unsafe fn by_four(
    s: Avx2,
    rows: &[u8],
    out: &mut [f32],
    four: impl Fn(&[u8]) -> [f32; 4],
    one: impl Fn(&[u8]) -> [f32; 1],
) {
    let row_bytes = rows.len() / out.len().max(1);
    let mut groups = rows.chunks_exact(4 * row_bytes.max(1));
    let mut outs = out.chunks_exact_mut(4);
    for (group, o) in (&mut groups).zip(&mut outs) {
        super::prefetch_ahead(s, group);
        o.copy_from_slice(&four(group));
    }
    for (row, o) in groups.remainder().chunks_exact(row_bytes.max(1)).zip(outs.into_remainder()) {
        *o = one(row)[0];
    }
}

/// `out[r] = dot(row r)`, one row at a time, each prefetched a page ahead as it starts.
#[inline(always)]
unsafe fn by_one(s: Avx2, rows: &[u8], out: &mut [f32], dot: impl Fn(&[u8]) -> f32) {
    let row_bytes = rows.len() / out.len().max(1);
    for (row, o) in rows.chunks_exact(row_bytes.max(1)).zip(out.iter_mut()) {
        super::prefetch_ahead(s, row);
        *o = dot(row);
    }
}

/// `R` consecutive rows of 4-bit blocks (`BYTES` each: the f16 scale, with `MIN` an f16
/// minimum, then 16 bytes of nibbles) dotted with `a`. The 32 levels of a block go into one
/// register as unsigned bytes and meet the 32 signed activation levels in one integer dot (with
/// `maddubs`, at most 2·15·127 per pair of lanes: no i16 saturation).
#[inline(always)]
unsafe fn nibble_dots<const BYTES: usize, const MIN: bool, const VNNI: bool, const R: usize>(
    s: Avx2,
    rows: &[u8],
    a: &Activations,
) -> [f32; R] {
    nibble_dots_from::<BYTES, MIN, VNNI, R>(s, rows, a, 0)
}

/// [`nibble_dots`] over the blocks from `first` on.
#[inline(always)]
unsafe fn nibble_dots_from<const BYTES: usize, const MIN: bool, const VNNI: bool, const R: usize>(
    s: Avx2,
    rows: &[u8],
    a: &Activations,
    first: usize,
) -> [f32; R] {
    let low = _mm256_set1_epi8(0x0f);
    let quants = if MIN { 4 } else { 2 };
    let row_bytes = rows.len() / R;
    let mut acc = [_mm256_setzero_ps(); R];
    for b in first..row_bytes / BYTES {
        let x = _mm256_loadu_si256(a.q.as_ptr().add(32 * b).cast());
        let ad = _mm256_broadcast_ss(a.d.get_unchecked(b));
        // The offset term, `m · Σx` (Q4_1) or `-8·d · Σx` (Q4_0), an eighth in each lane (exact:
        // a power of two), so that the final horizontal sum counts it once.
        let eighth_sum = _mm256_set1_ps(0.125 * *a.sum.get_unchecked(b));
        for (r, acc) in acc.iter_mut().enumerate() {
            let p = rows.as_ptr().add(r * row_bytes + b * BYTES);
            let packed = _mm_loadu_si128(p.add(quants).cast());
            let w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed), low);
            let dot = _mm256_cvtepi32_ps(dot_u8_i8::<VNNI>(w, x));
            let dw = s.splat_f16(p);
            let offset = if MIN { s.splat_f16(p.add(2)) } else { _mm256_mul_ps(dw, _mm256_set1_ps(-8.0)) };
            let block = _mm256_fmadd_ps(dot, _mm256_mul_ps(dw, ad), _mm256_mul_ps(offset, eighth_sum));
            *acc = _mm256_add_ps(*acc, block);
        }
    }
    acc.map(|acc| s.hsum(acc))
}

/// `Σ w[i]·x[i]` over 32 unsigned bytes `w` and signed bytes `x`, as eight i32 partial sums:
/// `vpdpbusd` with AVX-VNNI, else `maddubs` (pairs to i16; the callers' operands cannot
/// saturate it) and `madd` with ones (to i32).
#[inline(always)]
unsafe fn dot_u8_i8<const VNNI: bool>(w: __m256i, x: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }
}

/// A row of Q8_0 blocks (f16 scale, 32 i8 levels) dotted with `a`: the dot takes one unsigned
/// operand, so the weights' magnitudes meet the activations carrying the weights' signs.
#[inline(always)]
unsafe fn q8_row<const VNNI: bool>(s: Avx2, row: &[u8], a: &Activations) -> f32 {
    s.hsum(sum_blocks(row.len() / 34, |b| q8_block::<VNNI>(s, row, a, b)))
}

/// Block `b` of a Q8_0 row dotted with `a`, in eight lanes.
#[inline(always)]
unsafe fn q8_block<const VNNI: bool>(s: Avx2, row: &[u8], a: &Activations, b: usize) -> __m256 {
    let p = row.as_ptr().add(b * 34);
    let w = _mm256_loadu_si256(p.add(2).cast());
    let x = _mm256_loadu_si256(a.q.as_ptr().add(32 * b).cast());
    let dot = dot_u8_i8::<VNNI>(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_mul_ps(
        _mm256_cvtepi32_ps(dot),
        _mm256_mul_ps(s.splat_f16(p), _mm256_broadcast_ss(a.d.get_unchecked(b))),
    )
}

/// [`nibble_dots`] on AVX-512 VNNI: two blocks per instruction. The 64 activation bytes of
/// blocks `b`, `b+1` are reordered once per pair (shared by the rows) as [b's first 16, b+1's
/// first 16, b's last 16, b+1's last 16], which is the order the two blocks' nibbles come out
/// of one 32-byte load, a shift and a mask; so lanes 0-3 and 8-11 of the byte dot hold block
/// `b` and the others `b+1`, and the scales are spread to match. An odd last block goes
/// through the eight-lane body.
#[inline(always)]
unsafe fn nibble_dots_avx512<const BYTES: usize, const MIN: bool, const R: usize>(
    s: Avx2,
    rows: &[u8],
    a: &Activations,
) -> [f32; R] {
    let low = _mm512_set1_epi8(0x0f);
    let quants = if MIN { 4 } else { 2 };
    let row_bytes = rows.len() / R;
    let blocks = row_bytes / BYTES;
    // Which of four f32 each lane takes: `pair` from `[b, b+1, ..]`, `scales` from Q4_1's
    // `[d_b, m_b, d_b+1, m_b+1]` (`d` at even places) or Q4_0's `[d_b, d_b+1, ..]`.
    let pair = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    let (d_lanes, m_lanes) = match MIN {
        true => (
            _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2),
            _mm512_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3, 1, 1, 1, 1, 3, 3, 3, 3),
        ),
        false => (pair, pair),
    };
    let mut acc = [_mm512_setzero_ps(); R];
    let mut offsets = [_mm512_setzero_ps(); R];
    let mut b = 0;
    while b + 1 < blocks {
        let x = _mm512_loadu_si512(a.q.as_ptr().add(32 * b).cast());
        let x = _mm512_shuffle_i64x2::<0b11_01_10_00>(x, x);
        let spread = |v: *const f32| {
            _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(v.cast()))))
        };
        let ad = spread(a.d.as_ptr().add(b));
        // The offset term as in `nibble_dots`: an eighth of Σx in each of a block's 8 lanes.
        let eighth_sum = _mm512_mul_ps(spread(a.sum.as_ptr().add(b)), _mm512_set1_ps(0.125));
        for r in 0..R {
            let p = rows.as_ptr().add(r * row_bytes + b * BYTES);
            let packed = _mm256_loadu2_m128i(p.add(BYTES + quants).cast(), p.add(quants).cast());
            let nibbles =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(packed), _mm256_srli_epi16::<4>(packed));
            let w = _mm512_and_si512(nibbles, low);
            let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x));
            let scales = if MIN {
                let both = |p: *const u8| p.cast::<i32>().read_unaligned();
                _mm512_castps128_ps512(_mm_cvtph_ps(_mm_set_epi32(0, 0, both(p.add(BYTES)), both(p))))
            } else {
                let d = |p: *const u8| p.cast::<i16>().read_unaligned();
                _mm512_castps128_ps512(_mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, 0, 0, d(p.add(BYTES)), d(p))))
            };
            let dw = _mm512_permutexvar_ps(d_lanes, scales);
            let offset = if MIN {
                _mm512_permutexvar_ps(m_lanes, scales)
            } else {
                _mm512_mul_ps(dw, _mm512_set1_ps(-8.0))
            };
            acc[r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, ad), acc[r]);
            offsets[r] = _mm512_fmadd_ps(offset, eighth_sum, offsets[r]);
        }
        b += 2;
    }
    let mut dots: [f32; R] =
        core::array::from_fn(|r| _mm512_reduce_add_ps(_mm512_add_ps(acc[r], offsets[r])));
    if b < blocks {
        let last = nibble_dots_from::<BYTES, MIN, false, R>(s, rows, a, b);
        dots.iter_mut().zip(last).for_each(|(d, l)| *d += l);
    }
    dots
}

/// [`q8_row`] on AVX-512 VNNI, two blocks per instruction (lanes 0-7 block `b`, 8-15 `b+1`); the
/// unsigned operand is the weights' magnitude, the activations carry the weights' signs.
#[inline(always)]
unsafe fn q8_row_avx512(s: Avx2, row: &[u8], a: &Activations) -> f32 {
    let blocks = row.len() / 34;
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut b = 0;
    while b + 1 < blocks {
        let p = row.as_ptr().add(b * 34);
        let w = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(p.add(2).cast())),
            _mm256_loadu_si256(p.add(36).cast()),
        );
        let x = _mm512_loadu_si512(a.q.as_ptr().add(32 * b).cast());
        let signed = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
        let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), signed));
        let d = |p: *const u8| p.cast::<i16>().read_unaligned();
        let dw = _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, 0, 0, d(p.add(34)), d(p)));
        let ad = _mm_castpd_ps(_mm_load_sd(a.d.as_ptr().add(b).cast()));
        let scale = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_mul_ps(dw, ad)));
        // Pairs of pairs into two accumulators, as `sum_blocks` does.
        if b % 4 == 0 {
            even = _mm512_fmadd_ps(dot, scale, even);
        } else {
            odd = _mm512_fmadd_ps(dot, scale, odd);
        }
        b += 2;
    }
    let mut dot = _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
    if b < blocks {
        dot += s.hsum(q8_block::<false>(s, row, a, b));
    }
    dot
}

/// `Σ block(b)` over `blocks` blocks, even and odd blocks into two accumulators so that
/// consecutive blocks' adds do not wait on each other (one chain measured 1.4x slower).
#[inline(always)]
unsafe fn sum_blocks(blocks: usize, block: impl Fn(usize) -> __m256) -> __m256 {
    let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    while b + 1 < blocks {
        even = _mm256_add_ps(even, block(b));
        odd = _mm256_add_ps(odd, block(b + 1));
        b += 2;
    }
    if b < blocks {
        even = _mm256_add_ps(even, block(b));
    }
    _mm256_add_ps(even, odd)
}

// SAFETY (every method): an `Avx2` exists only where the features are present.
impl Simd for Avx2 {
    type F = __m256;
    type I = __m256i;

    #[inline(always)]
    fn zero(self) -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, v: f32) -> __m256 {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_le(self, p: *const u8) -> __m256 {
        _mm256_loadu_ps(p.cast())
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn prefetch(self, p: *const u8) {
        // SAFETY: a prefetch reads nothing and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[inline(always)]
    fn hsum(self, a: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u8) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()))))
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn widen_u8(self, p: *const u8) -> __m256i {
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()))
    }
    #[inline(always)]
    unsafe fn widen_i8(self, p: *const u8) -> __m256i {
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))
    }
    #[inline(always)]
    fn splat_i(self, v: i32) -> __m256i {
        unsafe { _mm256_set1_epi32(v) }
    }
    #[inline(always)]
    fn and(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_and_si256(a, b) }
    }
    #[inline(always)]
    fn or(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(a, b) }
    }
    #[inline(always)]
    fn sub_i(self, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_sub_epi32(a, b) }
    }
    #[inline(always)]
    fn shr<const N: i32>(self, a: __m256i) -> __m256i {
        unsafe { _mm256_srli_epi32::<N>(a) }
    }
    #[inline(always)]
    fn shl<const N: i32>(self, a: __m256i) -> __m256i {
        unsafe { _mm256_slli_epi32::<N>(a) }
    }
    #[inline(always)]
    fn to_f32(self, a: __m256i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn lane0(self, a: __m256) -> f32 {
        unsafe { _mm256_cvtss_f32(a) }
    }
    /// Broadcast, then convert: a scalar convert first would insert the half into some vector
    /// register, which LLVM may pick to be the loop's accumulator, chaining every block behind
    /// the previous one's final FMA.
    #[inline(always)]
    unsafe fn splat_f16(self, p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned()))
    }
}
