//! Intel AMX's bf16 tile unit for the multi-token products (prefill, training's forward and its
//! backward through the frozen weights). One `tdpbf16ps` multiplies a 16x32 bf16 tile by a
//! 32x16 one and adds the 16x16 result into f32 accumulators: 8192 multiply-adds, where an
//! AVX-512 FMA does 16. Operands are rounded to bf16 (to nearest, ties to even); the products of
//! two bf16 are exact in f32 and the sums stay f32, which is PyTorch's bf16 autocast precision.
//!
//! Linux hands out the 8 KiB of tile state per process, on request (`arch_prctl`), so the tiles
//! are used only where that request succeeds. The tile instructions are written as inline
//! assembly (their intrinsics are not stable); the compiler never allocates tile registers, so a
//! kernel owns all eight between `Session::start` and its drop.
//!
//! Layouts. A tile row is 64 bytes: 16 `u32`, each a *pair* of bf16 that `tdpbf16ps` multiplies
//! with the pair at the same place of the other operand. Which two values of the summed
//! dimension form a pair is free as long as both operands agree; here pair `q` of a 32-value
//! block is values `q` and `q + 16`, so packing is lane-wise arithmetic with no shuffles.
//! - A (`TileRows`): one row per token, the summed dimension along the row.
//! - B: one line per pair, 16 output columns across it: for the prefill product (output columns
//!   are weight rows) a 16x16 transposition of packed weight rows; for the backward product
//!   (output columns are weight columns) two weight rows 16 apart, lane by lane.
//! - C: 16 tokens by 16 output columns, stored straight into the row-major `[tokens, columns]`
//!   result.

use alloc::vec;
use alloc::vec::Vec;
use core::arch::asm;
use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

use super::TileProduct;
use crate::parallel::{for_each_chunk_mut, zeroed};

/// Values of the summed dimension in one tile: 16 pairs.
const BLOCK: usize = 32;
/// Rows and columns of a result tile.
const EDGE: usize = 16;
/// `u32` pairs in one tile (16 lines of 16).
const TILE_PAIRS: usize = EDGE * EDGE;
/// Rows of an A operand one packing task covers.
const PACK_ROWS: usize = 32;

/// Proof that the CPU has AMX-TILE, AMX-BF16 and AVX-512BW (for packing) and that the kernel
/// let this process use the tile registers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tiles(());

impl Tiles {
    /// The tile unit, when this machine and its kernel offer it; the answer is cached.
    pub fn detect() -> Option<Tiles> {
        const UNKNOWN: u8 = 0;
        const PRESENT: u8 = 1;
        const ABSENT: u8 = 2;
        static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
        match STATE.load(Ordering::Relaxed) {
            PRESENT => return Some(Tiles(())),
            ABSENT => return None,
            _ => {}
        }
        let present = cpu_has_amx_bf16() && request_tile_state();
        STATE.store(if present { PRESENT } else { ABSENT }, Ordering::Relaxed);
        present.then_some(Tiles(()))
    }

    /// `n` rows of `k` values, `ld` apart in `x`, as the A operand of a product.
    pub fn rows(self, x: &[f32], n: usize, k: usize, ld: usize) -> TileRows {
        assert!(k <= ld && (n == 0 || x.len() >= (n - 1) * ld + k));
        let blocks = k.div_ceil(BLOCK);
        let mut rows = TileRows { pairs: zeroed(n.next_multiple_of(2 * EDGE) * blocks * EDGE), blocks };
        let row_pairs = (blocks * EDGE).max(1);
        // In parallel: a training step packs a `[tokens, 49152]` gradient for the output head.
        for_each_chunk_mut(&mut rows.pairs[..n * blocks * EDGE], PACK_ROWS * row_pairs, |i, chunk| {
            for (j, out) in chunk.chunks_exact_mut(row_pairs).enumerate() {
                let r = i * PACK_ROWS + j;
                // SAFETY: the token proves AVX-512BW; `pack_row` reads the row's `k` values and
                // writes `blocks` blocks of `out`.
                unsafe { pack_row(&x[r * ld..r * ld + k], out) };
            }
        });
        rows
    }

    /// `out[t * ld + r] = Σ_c a[t, c] · w[r, c]` for the `tokens` rows of `a` and the `n` rows of
    /// `w` (`width` values each, f32, rounded to bf16 here): the prefill product of one group of
    /// decoded weight rows, written into its `n` columns of the result.
    ///
    /// # Safety
    /// `a` holds `tokens` rows of `width` values ([`rows`](Self::rows)); `out` is valid for writes
    /// at `t * ld + r` for every `t < tokens`, `r < n`, and no other thread touches those places.
    pub unsafe fn product(self, p: TileProduct) {
        let TileProduct { a, tokens, w, n, width: k, out, ld } = p;
        assert!(
            w.len() >= n * k && a.blocks == k.div_ceil(BLOCK) && a.pairs.len() >= tokens * a.blocks * EDGE
        );
        let blocks = a.blocks;
        let col_tiles = n.div_ceil(EDGE).next_multiple_of(2);
        let mut b = vec![0u32; col_tiles * blocks * TILE_PAIRS];
        for (tile, lines) in b.chunks_exact_mut(blocks * TILE_PAIRS).enumerate() {
            let first = tile * EDGE;
            let rows = n.saturating_sub(first).min(EDGE);
            // Padding tiles (no rows) stay zero.
            pack_transposed(w.get(first * k..(first + rows) * k).unwrap_or(&[]), rows, k, lines);
        }
        let out = Output { at: out, ld, rows: tokens, cols: n };
        let session = Session::start();
        for t in (0..tokens).step_by(2 * EDGE) {
            for c in (0..col_tiles).step_by(2) {
                zero::<0>();
                zero::<1>();
                zero::<2>();
                zero::<3>();
                session.accumulate(a, t, &b, c, blocks);
                out.store_quad(t, c * EDGE);
            }
        }
    }

    /// `out[t * ld + c] += Σ_{r < n} a[t, r] · w[r, c]` for the `tokens` rows of `a` (`n` values
    /// each) and `n` weight rows of `width` f32 values (rounded to bf16 here): one slab of the
    /// product with `Wᵀ` that carries gradients back through a frozen weight.
    ///
    /// # Safety
    /// `a` holds `tokens` rows of `n` values ([`rows`](Self::rows)); `out` is valid for reads and
    /// writes at `t * ld + c` for every `t < tokens`, `c < width`, and no other thread touches
    /// those places.
    pub unsafe fn product_acc(self, p: TileProduct) {
        let TileProduct { a: dy, tokens, w, n, width, out, ld } = p;
        assert!(
            w.len() >= n * width
                && dy.blocks == n.div_ceil(BLOCK)
                && dy.pairs.len() >= tokens * dy.blocks * EDGE
        );
        let blocks = dy.blocks;
        let col_tiles = width.div_ceil(EDGE).next_multiple_of(2);
        let mut b = vec![0u32; col_tiles * blocks * TILE_PAIRS];
        for (tile, lines) in b.chunks_exact_mut(blocks * TILE_PAIRS).enumerate() {
            pack_row_pairs(w, n, width, tile * EDGE, lines);
        }
        let out = Output { at: out, ld, rows: tokens, cols: width };
        let session = Session::start();
        for t in (0..tokens).step_by(2 * EDGE) {
            for c in (0..col_tiles).step_by(2) {
                out.load_quad(t, c * EDGE);
                session.accumulate(dy, t, &b, c, blocks);
                out.store_quad(t, c * EDGE);
            }
        }
    }
}

/// Rows of a product's A operand: bf16 pairs, `blocks` tiles' worth per row, the row count
/// padded with zero rows to a multiple of 32 (the kernels take two tiles of 16 rows at a time).
pub(crate) struct TileRows {
    pairs: Vec<u32>,
    blocks: usize,
}

/// A result `[rows, cols]` at `at`, `ld` values apart, which the kernels write one 32x32 square
/// (tiles 0-3) at a time.
struct Output {
    at: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
}

impl Output {
    /// The tiles' places in the square at row `t`, column `c`: tile `2i + j` covers rows
    /// `t + 16i`, columns `c + 16j`.
    const QUAD: [(usize, usize); 4] = [(0, 0), (0, EDGE), (EDGE, 0), (EDGE, EDGE)];

    /// Stores tiles 0-3; squares that pass the result's edge go through a scratch tile.
    unsafe fn store_quad(&self, t: usize, c: usize) {
        for (i, (dt, dc)) in Self::QUAD.into_iter().enumerate() {
            let (t, c) = (t + dt, c + dc);
            if t >= self.rows || c >= self.cols {
                continue;
            }
            if t + EDGE <= self.rows && c + EDGE <= self.cols {
                store_tile(i, self.at.add(t * self.ld + c), 4 * self.ld);
            } else {
                let mut scratch = [0f32; TILE_PAIRS];
                store_tile(i, scratch.as_mut_ptr(), 4 * EDGE);
                for r in 0..EDGE.min(self.rows - t) {
                    for j in 0..EDGE.min(self.cols - c) {
                        *self.at.add((t + r) * self.ld + c + j) = scratch[r * EDGE + j];
                    }
                }
            }
        }
    }

    /// Loads tiles 0-3 from the square (zeros past the result's edge).
    unsafe fn load_quad(&self, t: usize, c: usize) {
        for (i, (dt, dc)) in Self::QUAD.into_iter().enumerate() {
            let (t, c) = (t + dt, c + dc);
            if t + EDGE <= self.rows && c + EDGE <= self.cols {
                load_tile(i, self.at.add(t * self.ld + c), 4 * self.ld);
            } else {
                let mut scratch = [0f32; TILE_PAIRS];
                for r in 0..EDGE.min(self.rows.saturating_sub(t)) {
                    for j in 0..EDGE.min(self.cols.saturating_sub(c)) {
                        scratch[r * EDGE + j] = *self.at.add((t + r) * self.ld + c + j);
                    }
                }
                load_tile(i, scratch.as_ptr(), 4 * EDGE);
            }
        }
    }
}

/// The tile configuration every kernel uses: palette 1, the eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

const CONFIG: Config = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        bytes[16 + 2 * tile] = 64;
        bytes[48 + tile] = EDGE as u8;
        tile += 1;
    }
    Config(bytes)
};

/// The tile registers configured on this thread for one kernel call; released on drop, so a
/// thread that is switched out between kernels has no tile state to save.
struct Session(());

impl Session {
    fn start() -> Session {
        // SAFETY: `Tiles` exists only where the tile unit is usable; the configuration is valid.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(readonly, nostack, preserves_flags))
        };
        Session(())
    }

    /// Tiles 0-3 `+=` rows `t..t + 32` of `a` times B's column tiles `c` and `c + 1`, over all
    /// `blocks` of the summed dimension.
    ///
    /// # Safety
    /// `a` has rows `t..t + 32` (its rows are padded to a multiple of 32); `b` has column tiles
    /// `c` and `c + 1`, each `blocks` tiles.
    #[inline(always)]
    unsafe fn accumulate(&self, a: &TileRows, t: usize, b: &[u32], c: usize, blocks: usize) {
        let stride = 4 * blocks * EDGE;
        let a0 = a.pairs.as_ptr().add(t * blocks * EDGE) as *const u8;
        let a1 = a0.add(EDGE * stride);
        let b0 = b.as_ptr().add(c * blocks * TILE_PAIRS) as *const u8;
        let b1 = b0.add(4 * blocks * TILE_PAIRS);
        for kb in 0..blocks {
            let (a_at, b_at) = (64 * kb, 4 * TILE_PAIRS * kb);
            load::<4>(a0.add(a_at), stride);
            load::<5>(a1.add(a_at), stride);
            load::<6>(b0.add(b_at), 64);
            load::<7>(b1.add(b_at), 64);
            dot::<0, 4, 6>();
            dot::<1, 4, 7>();
            dot::<2, 5, 6>();
            dot::<3, 5, 7>();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: releases the configuration `start` loaded.
        unsafe { asm!("tilerelease", options(nomem, nostack, preserves_flags)) };
    }
}

#[inline(always)]
unsafe fn zero<const T: u8>() {
    asm!("tilezero tmm{t}", t = const T, options(nomem, nostack, preserves_flags));
}

#[inline(always)]
unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
    asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride,
        options(readonly, nostack, preserves_flags));
}

#[inline(always)]
unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
    asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) p, s = in(reg) stride,
        options(nostack, preserves_flags));
}

/// `C += A · B` for bf16 pairs.
#[inline(always)]
unsafe fn dot<const C: u8, const A: u8, const B: u8>() {
    asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
        options(nomem, nostack, preserves_flags));
}

/// Stores result tile `i` (0-3) to 16 rows `stride` bytes apart.
unsafe fn store_tile(i: usize, p: *mut f32, stride: usize) {
    let p = p as *mut u8;
    match i {
        0 => store::<0>(p, stride),
        1 => store::<1>(p, stride),
        2 => store::<2>(p, stride),
        _ => store::<3>(p, stride),
    }
}

/// Loads result tile `i` (0-3) from 16 rows `stride` bytes apart.
unsafe fn load_tile(i: usize, p: *const f32, stride: usize) {
    let p = p as *const u8;
    match i {
        0 => load::<0>(p, stride),
        1 => load::<1>(p, stride),
        2 => load::<2>(p, stride),
        _ => load::<3>(p, stride),
    }
}

/// Whether CPUID reports AMX-TILE and AMX-BF16, and the OS saves AVX-512 state.
fn cpu_has_amx_bf16() -> bool {
    #[cfg(feature = "std")]
    let avx512 = std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw");
    #[cfg(not(feature = "std"))]
    let avx512 = cfg!(all(target_feature = "avx512f", target_feature = "avx512bw"));
    // CPUID leaf 7 exists on every CPU with AVX-512.
    let leaf7 = avx512 && __cpuid_count(7, 0).edx & (1 << 22 | 1 << 24) == 1 << 22 | 1 << 24;
    avx512 && leaf7
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
/// false where the kernel refuses or predates it.
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: this request only widens the register state the kernel lets the process use.
    unsafe {
        asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

/// The bf16 nearest `x` (ties to even), as f32: what the tiles multiply. The reference for the
/// tests.
#[cfg(test)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// Pairs `(lo[q], hi[q])` of bf16, `lo` in the low half: the rounding of [`round_bf16`] on
/// sixteen lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn pairs(lo: __m512, hi: __m512) -> __m512i {
    let round = |v: __m512| {
        let b = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)))
    };
    let high = _mm512_and_si512(round(hi), _mm512_set1_epi32(0xffff_0000u32 as i32));
    _mm512_or_si512(_mm512_srli_epi32::<16>(round(lo)), high)
}

/// Sixteen f32 from `p`, of which the first `n` are read (the rest zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load_part(p: *const f32, n: usize) -> __m512 {
    if n >= EDGE {
        _mm512_loadu_ps(p)
    } else {
        _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p)
    }
}

/// Block `kb` of a row of `k` values as sixteen pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn block_pairs(row: &[f32], kb: usize) -> __m512i {
    let start = kb * BLOCK;
    let left = row.len() - start;
    let lo = load_part(row.as_ptr().add(start), left);
    let hi = match left > EDGE {
        true => load_part(row.as_ptr().add(start + EDGE), left - EDGE),
        false => _mm512_setzero_ps(),
    };
    pairs(lo, hi)
}

/// One A row: every block of `row` as pairs into `out`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_row(row: &[f32], out: &mut [u32]) {
    for (kb, out) in out.chunks_exact_mut(EDGE).enumerate() {
        _mm512_storeu_si512(out.as_mut_ptr().cast(), block_pairs(row, kb));
    }
}

/// The prefill product's B operand for one tile of output columns: `rows` (≤ 16) weight rows of
/// `k` values, for each block 16 lines holding pair `q` of the 16 rows (zero past `rows`).
#[target_feature(enable = "avx512f,avx512bw")]
fn pack_transposed(w: &[f32], rows: usize, k: usize, out: &mut [u32]) {
    for (kb, tile) in out.chunks_exact_mut(TILE_PAIRS).enumerate() {
        let mut lines = [_mm512_setzero_si512(); EDGE];
        for (r, line) in lines.iter_mut().enumerate().take(rows) {
            // SAFETY: row `r` has `k` values and block `kb` starts inside it.
            *line = unsafe { block_pairs(&w[r * k..(r + 1) * k], kb) };
        }
        transpose(&mut lines);
        for (q, line) in lines.iter().enumerate() {
            // SAFETY: the tile has 16 lines of 16 values.
            unsafe { _mm512_storeu_si512(tile.as_mut_ptr().add(q * EDGE).cast(), *line) };
        }
    }
}

/// The backward product's B operand for output columns `first..first + 16` of `n` weight rows
/// of `width` values: for each block of 32 rows, line `q` pairs rows `q` and `q + 16` lane by
/// lane (zeros past `n` and `width`).
#[target_feature(enable = "avx512f,avx512bw")]
fn pack_row_pairs(w: &[f32], n: usize, width: usize, first: usize, out: &mut [u32]) {
    let cols = width.saturating_sub(first).min(EDGE);
    let column = |r: usize| match r < n && cols > 0 {
        // SAFETY: row `r` exists and has `cols` values from `first`.
        true => unsafe { load_part(w.as_ptr().add(r * width + first), cols) },
        false => _mm512_setzero_ps(),
    };
    for (kb, tile) in out.chunks_exact_mut(TILE_PAIRS).enumerate() {
        for (q, line) in tile.chunks_exact_mut(EDGE).enumerate() {
            let r = kb * BLOCK + q;
            let v = pairs(column(r), column(r + EDGE));
            // SAFETY: the line has 16 values.
            unsafe { _mm512_storeu_si512(line.as_mut_ptr().cast(), v) };
        }
    }
}

/// Transposes 16x16 `u32`: in each 128-bit lane, interleave 32-bit then 64-bit elements of row
/// pairs and quads (each lane of the quads then holds 4 rows of one column), then gather lanes
/// across the four quads in two 128-bit shuffles.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn transpose(r: &mut [__m512i; EDGE]) {
    let mut t = [_mm512_setzero_si512(); EDGE];
    for g in 0..4 {
        let i = 4 * g;
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
        t[i + 2] = _mm512_unpacklo_epi32(r[i + 2], r[i + 3]);
        t[i + 3] = _mm512_unpackhi_epi32(r[i + 2], r[i + 3]);
    }
    // u[4g + s]: in lane L, rows 4g..4g+4 of column 4L + s.
    let mut u = [_mm512_setzero_si512(); EDGE];
    for g in 0..4 {
        let i = 4 * g;
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for s in 0..4 {
        // Lanes (rows 0-3, 4-7) of columns 4L + s for L = 0, 2 and L = 1, 3; then rows 8-15.
        let even_low = _mm512_shuffle_i32x4::<0x88>(u[s], u[4 + s]);
        let odd_low = _mm512_shuffle_i32x4::<0xdd>(u[s], u[4 + s]);
        let even_high = _mm512_shuffle_i32x4::<0x88>(u[8 + s], u[12 + s]);
        let odd_high = _mm512_shuffle_i32x4::<0xdd>(u[8 + s], u[12 + s]);
        r[s] = _mm512_shuffle_i32x4::<0x88>(even_low, even_high);
        r[s + 8] = _mm512_shuffle_i32x4::<0xdd>(even_low, even_high);
        r[s + 4] = _mm512_shuffle_i32x4::<0x88>(odd_low, odd_high);
        r[s + 12] = _mm512_shuffle_i32x4::<0xdd>(odd_low, odd_high);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::Rng;

    /// Σ_c a[t, c] · b[r, c] over bf16-rounded operands in f64, and the sum of |terms|.
    fn reference(a: &[f32], b: &[f32], k: usize, t: usize, r: usize) -> (f64, f64) {
        (0..k)
            .map(|c| f64::from(round_bf16(a[t * k + c])) * f64::from(round_bf16(b[r * k + c])))
            .fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()))
    }

    #[test]
    fn transpose_moves_every_value_across_the_diagonal() {
        let Some(_) = Tiles::detect() else { return eprintln!("skipped: no AMX-BF16 tiles here") };
        let mut lines: [__m512i; EDGE] = core::array::from_fn(|r| unsafe {
            core::mem::transmute::<[u32; 16], __m512i>(core::array::from_fn(|c| (r * 16 + c) as u32))
        });
        unsafe { transpose(&mut lines) };
        for (r, line) in lines.iter().enumerate() {
            let got: [u32; 16] = unsafe { core::mem::transmute(*line) };
            assert_eq!(got, core::array::from_fn(|c| (c * 16 + r) as u32), "line {r}");
        }
    }

    /// Both products equal the f64 sums over bf16-rounded operands (each product of two bf16
    /// is exact in f32, so only the f32 sums differ), across tile edges in every dimension:
    /// tokens, output columns and summed values that are and are not multiples of 16 and 32.
    #[test]
    fn products_equal_the_sums_over_bf16_operands() {
        let Some(tiles) = Tiles::detect() else { return eprintln!("skipped: no AMX-BF16 tiles here") };
        let mut rng = Rng::new(5);
        for (tokens, n, k) in [(1, 1, 1), (16, 16, 32), (33, 40, 70), (64, 96, 576), (5, 17, 31)] {
            let x = rng.values(tokens * k, 1.0);
            let w = rng.values(n * k, 2.0);
            // Forward: y[t, r] into a wider result, beside columns it must leave alone.
            let ldy = n + 3;
            let mut y = vec![f32::NAN; tokens * ldy];
            let a = tiles.rows(&x, tokens, k, k);
            let out = unsafe { y.as_mut_ptr().add(1) };
            unsafe { tiles.product(TileProduct { a: &a, tokens, w: &w, n, width: k, out, ld: ldy }) };
            for t in 0..tokens {
                assert!(y[t * ldy].is_nan() && y[t * ldy + n + 1].is_nan(), "wrote outside its columns");
                for r in 0..n {
                    let (exact, mag) = reference(&x, &w, k, t, r);
                    let got = f64::from(y[t * ldy + 1 + r]);
                    assert!(
                        (got - exact).abs() <= 1e-6 * mag + 1e-30,
                        "{tokens}x{n}x{k}: y[{t}, {r}] = {got} vs {exact}"
                    );
                }
            }
            // Backward: dx[t, c] += Σ_r dy[t, r] w[r, c], with w seen as n rows of k columns.
            let dy = rng.values(tokens * n, 1.0);
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let mut dx = rng.values(tokens * k, 1.0);
            let before = dx.clone();
            let a = tiles.rows(&dy, tokens, n, n);
            let out = dx.as_mut_ptr();
            unsafe { tiles.product_acc(TileProduct { a: &a, tokens, w: &w, n, width: k, out, ld: k }) };
            for t in 0..tokens {
                for c in 0..k {
                    let (exact, mag) = reference(&dy, &wt, n, t, c);
                    let (exact, mag) =
                        (exact + f64::from(before[t * k + c]), mag + f64::from(before[t * k + c]).abs());
                    let got = f64::from(dx[t * k + c]);
                    assert!(
                        (got - exact).abs() <= 1e-6 * mag + 1e-30,
                        "{tokens}x{n}x{k}: dx[{t}, {c}] = {got} vs {exact}"
                    );
                }
            }
        }
    }
}
