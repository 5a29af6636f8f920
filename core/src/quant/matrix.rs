//! A weight matrix that stays in its quantized blocks, with products computed straight from them.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::int8::{Activations, Int8Kind};
use super::simd::{self, Isa, TileProduct, Tiles};
use super::{byte_len, FormatOps, GgmlType, QuantError};
use crate::bytes::SharedBytes;
use crate::parallel::{for_each_chunk_mut, for_each_chunk_mut_spinning, for_each_index};

/// From this many tokens on, each weight row is decoded once to f32 and multiplied with every
/// token, so the unpacking is paid once per row instead of once per row and token.
const PREFILL_TOKENS: usize = 4;
/// Weight values one parallel task covers at least, so scheduling stays small against the work.
const TASK_VALUES: usize = 16 * 1024;
/// Tokens one task of prefill's final transposition moves: sixteen values, a cache line, from
/// each row of the `[rows, tokens]` product.
const TRANSPOSE_TOKENS: usize = 16;
/// Bytes of decoded f32 weight rows one prefill task keeps; with three token rows beside them
/// they stay in a 32 KiB L1 while the tokens stream past (12-96 KiB measured the same on Zen 3).
const SCRATCH_BYTES: usize = 24 * 1024;
/// Rows of `W` one pass of [`QuantMatrix::matmul_transposed`] sums over: a band of decoded
/// columns of them (64 KiB for 32 columns) stays in L2 (512 measured 3% faster than 1024 on
/// Zen 3).
const SLAB_ROWS: usize = 512;
/// Weight rows one task of the tile-unit prefill decodes and multiplies with every token: two
/// result tiles wide, so that a 192-row product still splits into six tasks.
const TILE_TASK_ROWS: usize = 32;

/// An f32 buffer whose first value is 64-byte aligned, so that the product kernels' vector
/// loads do not straddle cache lines: from the 16-byte alignment the allocator gives, three in
/// four of AVX-512's whole-line loads do (prefill measured 11% faster aligned).
struct Aligned {
    values: Vec<f32>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        let values = vec![0f32; len + 15];
        let at = values.as_ptr().align_offset(64).min(15);
        Self { values, at, len }
    }

    fn copy_of(x: &[f32]) -> Self {
        let mut copy = Self::zeroed(x.len());
        copy.copy_from_slice(x);
        copy
    }
}

impl core::ops::Deref for Aligned {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.values[self.at..self.at + self.len]
    }
}

impl core::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values[self.at..self.at + self.len]
    }
}

/// A row-major weight `W[rows, cols]` in GGUF layout: each row is `cols / block_len`
/// consecutive blocks (GGUF lists the dimensions as `[cols, rows]`). Shapes and byte lengths are
/// validated once, in [`QuantMatrix::new`].
#[derive(Clone)]
pub struct QuantMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: SharedBytes,
    ops: &'static FormatOps,
    isa: Isa,
    /// Set when decode's products run on integer activations (the format and the ISA have
    /// kernels for them, see [`super::int8`]).
    int8: Option<Int8Kind>,
    /// Set when the multi-token products run on a bf16 tile unit (see
    /// [`with_bf16_products`](Self::with_bf16_products)).
    tiles: Option<Tiles>,
}

impl QuantMatrix {
    /// Wraps `data`, which must hold exactly `rows` rows of `cols` values of type `ty`, and
    /// picks the best kernels this machine runs.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: SharedBytes) -> Result<Self, QuantError> {
        let ops = FormatOps::of(ty)?;
        let row_bytes = byte_len(ty, cols)?;
        let too_large = QuantError::TooLarge { ty, rows, cols };
        let values = rows.checked_mul(cols).ok_or(too_large.clone())?;
        let expected = rows.checked_mul(row_bytes).ok_or(too_large)?;
        if data.len() != expected {
            return Err(QuantError::ByteLength { ty, values, expected, actual: data.len() });
        }
        Ok(Self { ty, rows, cols, row_bytes, data, ops, isa: Isa::detect(), int8: None, tiles: None })
    }

    /// Quantizes the row-major `values` (`rows * cols` of them) into a new matrix.
    pub fn quantize(ty: GgmlType, rows: usize, cols: usize, values: &[f32]) -> Result<Self, QuantError> {
        expect_len("values", rows.checked_mul(cols), values.len())?;
        let bytes = super::quantize(ty, values)?;
        Self::new(ty, rows, cols, SharedBytes::from_vec(bytes))
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The blocks, row after row.
    pub fn data(&self) -> &SharedBytes {
        &self.data
    }

    /// The instruction set the kernels use here, e.g. `"avx2+fma"` or `"scalar"`.
    pub fn kernel(&self) -> &'static str {
        match self.int8 {
            Some(_) => self.isa.int8_name(),
            None => self.isa.name(),
        }
    }

    /// The instruction set of the f32 products, whatever decode runs on.
    pub fn isa_name(&self) -> &'static str {
        self.isa.name()
    }

    /// The unit the multi-token products (prefill, training) run on when it is not the decode
    /// kernel's: `Some("amx bf16 tiles")` after [`with_bf16_products`](Self::with_bf16_products)
    /// on a machine that has them.
    pub fn tile_kernel(&self) -> Option<&'static str> {
        self.tiles.map(|_| "amx bf16 tiles")
    }

    /// The same matrix on the portable scalar kernels, which are the reference the SIMD ones
    /// are tested against: for comparing speed, or ruling a kernel out when results look off.
    pub fn with_reference_kernels(mut self) -> Self {
        self.isa = Isa::Scalar;
        self.int8 = None;
        self.tiles = None;
        self
    }

    /// The same matrix with decode on integer activations where the format and this machine
    /// have kernels for them (see [`super::int8`]): llama.cpp's speed, at a small cost in
    /// accuracy against the f32-activation reference, which stays the default here.
    pub fn with_integer_activations(mut self) -> Self {
        self.int8 = Int8Kind::of(self.ty).filter(|_| self.isa.has_int8());
        self
    }

    /// The same matrix with its multi-token products ([`matmul`](Self::matmul) from
    /// `PREFILL_TOKENS` tokens, [`matmul_transposed`](Self::matmul_transposed)) on the CPU's
    /// bf16 tile unit (Intel AMX) where it has one and Linux grants it: weights and activations
    /// rounded to bf16, sums in f32 (PyTorch's bf16 autocast). Unchanged elsewhere.
    pub fn with_bf16_products(mut self) -> Self {
        self.tiles = Tiles::detect();
        self
    }

    /// `y[t * rows + r] = Σ_c W[r, c] · x[t * cols + c]` for each of `tokens` rows of `x`, in
    /// parallel over the output rows on the installed pool. f32 accumulation throughout.
    pub fn matmul(&self, x: &[f32], tokens: usize, y: &mut [f32]) -> Result<(), QuantError> {
        expect_len("x", tokens.checked_mul(self.cols), x.len())?;
        expect_len("y", tokens.checked_mul(self.rows), y.len())?;
        if self.cols == 0 {
            y.fill(0.0);
        } else if tokens >= PREFILL_TOKENS {
            self.prefill(x, tokens, y);
        } else {
            for (x, y) in x.chunks_exact(self.cols).zip(y.chunks_exact_mut(self.rows.max(1))) {
                self.matvec(x, y);
            }
        }
        Ok(())
    }

    /// One token: each quantized row is dotted with `x` directly, unpacked in registers; on
    /// integer activations where the format and ISA have kernels for them.
    fn matvec(&self, x: &[f32], y: &mut [f32]) {
        // A multiple of four: the integer kernels take rows four at a time.
        let rows_per_task = (TASK_VALUES / self.cols).max(1).next_multiple_of(4);
        if let Some(kind) = self.int8 {
            let a = Activations::quantize(x);
            for_each_chunk_mut_spinning(y, rows_per_task, |i, out| {
                let start = i * rows_per_task * self.row_bytes;
                let rows = &self.data[start..start + out.len() * self.row_bytes];
                // SAFETY: `new` checked that each row is `row_bytes` of whole `kind` blocks
                // holding `cols` values, and `a` quantizes the `cols` values of `x`.
                unsafe { simd::dot_rows_int8(self.isa, kind, rows, &a, out) }
            });
            return;
        }
        let xsum: Vec<f32> =
            if self.ops.xsums { x.chunks_exact(32).map(|c| c.iter().sum()).collect() } else { Vec::new() };
        for_each_chunk_mut_spinning(y, rows_per_task, |i, out| {
            let start = i * rows_per_task * self.row_bytes;
            let rows = &self.data[start..start + out.len() * self.row_bytes];
            // SAFETY: `new` checked that each row is `row_bytes` of whole blocks holding `cols`
            // values, `matmul` that `x` has `cols` values, and `xsum` sums each 32 of them.
            unsafe { (self.ops.dot_rows)(self.isa, rows, x, &xsum, out) }
        });
    }

    /// Several tokens: each task decodes a few rows into an L1-sized f32 scratch and multiplies
    /// them with all tokens, writing a transposed `[rows, tokens]` result.
    fn prefill(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        if let Some(tiles) = self.tiles {
            return self.prefill_on_tiles(tiles, x, tokens, y);
        }
        let rows_per_task = (SCRATCH_BYTES / (4 * self.cols) / 4 * 4).max(4);
        let x = Aligned::copy_of(x);
        let mut yt = vec![0f32; self.rows * tokens];
        for_each_chunk_mut(&mut yt, rows_per_task * tokens, |i, out| {
            let (first, n) = (i * rows_per_task, out.len() / tokens);
            let mut w = Aligned::zeroed(n * self.cols);
            let bytes = &self.data[first * self.row_bytes..(first + n) * self.row_bytes];
            (self.ops.dequantize)(bytes, &mut w);
            simd::gemm(self.isa, &w, &x, self.cols, tokens, out);
        });
        // Back to `[tokens, rows]`, a few tokens per task: each row of `yt` is then read a
        // cache line at a time rather than a value per line (training measured 3% faster).
        let rows = self.rows;
        for_each_chunk_mut(y, rows.max(1) * TRANSPOSE_TOKENS, |i, y| {
            let first = i * TRANSPOSE_TOKENS;
            let n = y.len() / rows.max(1);
            for r in 0..rows {
                for (t, &v) in yt[r * tokens + first..][..n].iter().enumerate() {
                    y[t * rows + r] = v;
                }
            }
        });
    }

    /// [`prefill`](Self::prefill) on the tile unit: each task decodes `TILE_TASK_ROWS` weight rows
    /// and writes their columns of the `[tokens, rows]` result directly.
    fn prefill_on_tiles(&self, tiles: Tiles, x: &[f32], tokens: usize, y: &mut [f32]) {
        let x = tiles.rows(x, tokens, self.cols, self.cols);
        let y = Columns(y.as_mut_ptr());
        for_each_index(self.rows.div_ceil(TILE_TASK_ROWS), |i| {
            let first = i * TILE_TASK_ROWS;
            let n = TILE_TASK_ROWS.min(self.rows - first);
            let mut w = vec![0f32; n * self.cols];
            (self.ops.dequantize)(&self.data[first * self.row_bytes..(first + n) * self.row_bytes], &mut w);
            // SAFETY: `x` holds the `tokens` rows of `cols` values `matmul` checked; `y` has
            // `tokens` rows of `rows` values, of which this task alone writes columns
            // `first..first + n`.
            let product =
                TileProduct { a: &x, tokens, w: &w, n, width: self.cols, out: y.at(first), ld: self.rows };
            unsafe { tiles.product(product) };
        });
    }

    /// `dx[t * cols + c] = Σ_r dy[t * rows + r] · W[r, c]`: the product with `Wᵀ`, which carries
    /// gradients back through a frozen weight to the layer's input without an f32 copy of it.
    /// Each task owns a band of columns; it decodes that band of a slab of at most `SLAB_ROWS`
    /// rows (so a 49k-row output head still works in cache-sized pieces) and accumulates the
    /// slab's product for all tokens.
    pub fn matmul_transposed(&self, dy: &[f32], tokens: usize, dx: &mut [f32]) -> Result<(), QuantError> {
        expect_len("dy", tokens.checked_mul(self.rows), dy.len())?;
        expect_len("dx", tokens.checked_mul(self.cols), dx.len())?;
        if self.rows == 0 || self.cols == 0 || tokens == 0 {
            dx.fill(0.0);
            return Ok(());
        }
        if let Some(tiles) = self.tiles {
            self.matmul_transposed_on_tiles(tiles, dy, tokens, dx);
            return Ok(());
        }
        let band = self.band();
        // Band after band, each `[tokens, band width]`.
        let mut banded = Aligned::zeroed(self.cols * tokens);
        for first in (0..self.rows).step_by(SLAB_ROWS) {
            let n = SLAB_ROWS.min(self.rows - first);
            for_each_chunk_mut(&mut banded, band * tokens, |i, out| {
                let width = out.len() / tokens;
                let w = self.decode_band(first, n, i * band, width);
                let ops = simd::AccOperands { a: &dy[first..], lda: self.rows, w: &w, n, tokens };
                simd::gemm_acc(self.isa, ops, out);
            });
        }
        let cols = self.cols;
        for_each_chunk_mut(dx, cols, |t, dx| {
            for (i, dx) in dx.chunks_mut(band).enumerate() {
                let width = dx.len();
                dx.copy_from_slice(&banded[i * band * tokens + t * width..][..width]);
            }
        });
        Ok(())
    }

    /// [`matmul_transposed`](Self::matmul_transposed) on the tile unit: slab by slab, each task
    /// owns a band of `dx`'s columns and adds the slab's product into it directly.
    fn matmul_transposed_on_tiles(&self, tiles: Tiles, dy: &[f32], tokens: usize, dx: &mut [f32]) {
        dx.fill(0.0);
        let band = self.band();
        let dx = Columns(dx.as_mut_ptr());
        for first in (0..self.rows).step_by(SLAB_ROWS) {
            let n = SLAB_ROWS.min(self.rows - first);
            let dy = tiles.rows(&dy[first..], tokens, n, self.rows);
            for_each_index(self.cols.div_ceil(band), |i| {
                let width = band.min(self.cols - i * band);
                let w = self.decode_band(first, n, i * band, width);
                // SAFETY: `dy` holds `tokens` rows of the slab's `n` values; `dx` has `tokens`
                // rows of `cols` values, of which this task alone touches columns
                // `i * band..i * band + width`.
                let product =
                    TileProduct { a: &dy, tokens, w: &w, n, width, out: dx.at(i * band), ld: self.cols };
                unsafe { tiles.product_acc(product) };
            });
        }
    }

    /// Bands of columns for the products with `Wᵀ`: whole blocks (a block cannot be decoded in
    /// part) of at least 32 columns; 18 tasks for 576 columns share out evenly over 2 or 3
    /// threads.
    fn band(&self) -> usize {
        let block = self.ty.block_len();
        (32usize.div_ceil(block) * block).min(self.cols)
    }

    /// Columns `first_col..first_col + width` (whole blocks) of rows `first..first + n`, as f32
    /// `[n, width]`.
    fn decode_band(&self, first: usize, n: usize, first_col: usize, width: usize) -> Aligned {
        let (block, block_bytes) = (self.ty.block_len(), self.ty.block_bytes());
        let (offset, len) = (first_col / block * block_bytes, width / block * block_bytes);
        let mut w = Aligned::zeroed(n * width);
        for (r, w) in w.chunks_exact_mut(width).enumerate() {
            let start = (first + r) * self.row_bytes + offset;
            (self.ops.dequantize)(&self.data[start..start + len], w);
        }
        w
    }

    /// Row `r` of `W` as f32, bit-exact with ggml.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if r >= self.rows {
            return Err(QuantError::RowOutOfRange { row: r, rows: self.rows });
        }
        expect_len("out", Some(self.cols), out.len())?;
        (self.ops.dequantize)(&self.data[r * self.row_bytes..(r + 1) * self.row_bytes], out);
        Ok(())
    }

    /// All of `W` as row-major f32, bit-exact with ggml.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if let Some(rows_per_task) = TASK_VALUES.checked_div(self.cols) {
            let rows_per_task = rows_per_task.max(1);
            for_each_chunk_mut(&mut out, rows_per_task * self.cols, |i, out| {
                let start = i * rows_per_task * self.row_bytes;
                let n = out.len() / self.cols;
                (self.ops.dequantize)(&self.data[start..start + n * self.row_bytes], out);
            });
        }
        out
    }

    /// Embedding lookup: row `ids[i]` of `W` into `out[i * cols..(i + 1) * cols]`.
    pub fn get_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<(), QuantError> {
        expect_len("out", ids.len().checked_mul(self.cols), out.len())?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.rows) {
            return Err(QuantError::RowOutOfRange { row: bad as usize, rows: self.rows });
        }
        for (&id, out) in ids.iter().zip(out.chunks_exact_mut(self.cols.max(1))) {
            self.dequantize_row(id as usize, out)?;
        }
        Ok(())
    }
}

fn expect_len(what: &'static str, expected: Option<usize>, actual: usize) -> Result<(), QuantError> {
    match expected {
        Some(expected) if expected == actual => Ok(()),
        // An overflowing product can be no slice's length.
        expected => Err(QuantError::Length { what, expected: expected.unwrap_or(usize::MAX), actual }),
    }
}

/// A result matrix that parallel tasks write in disjoint bands of columns.
struct Columns(*mut f32);

// SAFETY: the tasks that share a `Columns` write disjoint places of it (each its own columns),
// and the product waits for all of them before the result is read.
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

impl Columns {
    /// The place of column `c` in the first row. A method, so that closures capture the whole
    /// (`Sync`) value rather than its raw pointer.
    fn at(&self, c: usize) -> *mut f32 {
        self.0.wrapping_add(c)
    }
}

impl fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("kernel", &self.isa.name())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::{config, random_blocks, Rng};
    use crate::quant::SUPPORTED_TYPES;
    use proptest::prelude::*;

    /// `y = W x` in f64 from the dequantized weights, and the sums of the absolute terms.
    fn naive(w: &[f32], x: &[f32], rows: usize, cols: usize, tokens: usize) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; tokens * rows];
        let mut mag = vec![0f64; tokens * rows];
        for t in 0..tokens {
            for r in 0..rows {
                for c in 0..cols {
                    let p = f64::from(w[r * cols + c]) * f64::from(x[t * cols + c]);
                    y[t * rows + r] += p;
                    mag[t * rows + r] += p.abs();
                }
            }
        }
        (y, mag)
    }

    proptest! {
        #![proptest_config(config())]

        /// `matmul` equals dequantize-then-multiply for one token (matvec) and several
        /// (prefill), on every instruction set here, for every format and random shapes.
        #[test]
        fn matmul_matches_dequantized_product(
            seed: u64,
            ty in proptest::sample::select(&SUPPORTED_TYPES[..]),
            rows in 1usize..12,
            blocks in 1usize..4,
            tokens in proptest::sample::select(&[1usize, 2, 3, 4, 5, 8, 9][..]),
        ) {
            let mut rng = Rng::new(seed);
            let cols = if ty.block_len() == 1 { blocks * 21 + (seed % 8) as usize } else { blocks * ty.block_len() };
            let bytes = SharedBytes::from_vec(random_blocks(ty, rows * cols, &mut rng));
            let mut m = QuantMatrix::new(ty, rows, cols, bytes).unwrap();
            let x = rng.values(tokens * cols, 1.0);
            let (exact, mag) = naive(&m.dequantize(), &x, rows, cols, tokens);
            for isa in Isa::all() {
                m.isa = isa;
                let mut y = vec![f32::NAN; tokens * rows];
                m.matmul(&x, tokens, &mut y).unwrap();
                for i in 0..y.len() {
                    prop_assert!((f64::from(y[i]) - exact[i]).abs() <= 1e-6 * mag[i] + 1e-30,
                        "{ty} {rows}x{cols}, {tokens} tokens on {}: y[{i}] = {} vs {}", isa.name(), y[i], exact[i]);
                }
            }
        }
    }

    #[test]
    fn transposed_product_matches_the_dequantized_weights() {
        let mut rng = Rng::new(11);
        for ty in SUPPORTED_TYPES {
            // Several bands, a partial last band where blocks are narrower than a band, token
            // counts around the micro-kernel's six, and a tall matrix summed over several row
            // slabs, the last one partial.
            let block = ty.block_len();
            let cols = 2 * block.max(64) + if block == 1 { 13 } else { block };
            for (rows, tokens) in [(7, 1), (7, 6), (7, 17), (2 * SLAB_ROWS + 5, 5)] {
                let mut m = QuantMatrix::quantize(ty, rows, cols, &rng.values(rows * cols, 2.0)).unwrap();
                let w = m.dequantize();
                let dy = rng.values(tokens * rows, 1.0);
                for isa in Isa::all() {
                    m.isa = isa;
                    let mut dx = vec![f32::NAN; tokens * cols];
                    m.matmul_transposed(&dy, tokens, &mut dx).unwrap();
                    for t in 0..tokens {
                        for c in 0..cols {
                            let terms =
                                (0..rows).map(|r| f64::from(dy[t * rows + r]) * f64::from(w[r * cols + c]));
                            let (exact, mag) = terms.fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()));
                            let got = f64::from(dx[t * cols + c]);
                            assert!(
                                (got - exact).abs() <= 1e-5 * mag + 1e-30,
                                "{ty} {rows} rows on {}: t{t} c{c}: {got} vs {exact}",
                                isa.name()
                            );
                        }
                    }
                }
                let mut short = vec![0f32; cols];
                assert!(m.matmul_transposed(&[0.0; 3], 1, &mut short).is_err());
            }
        }
    }

    /// On the bf16 tile unit both products equal the f64 sums over the bf16-rounded weights and
    /// activations (whose products are exact in f32), for every format: prefill across row
    /// groups and partial tiles, the transposed product across bands and row slabs.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn tile_products_equal_the_sums_over_bf16_operands() {
        use crate::quant::simd::round_bf16;
        if Tiles::detect().is_none() {
            return eprintln!("skipped: no AMX-BF16 tiles here");
        }
        let dot = |a: &[f32], b: &mut dyn Iterator<Item = f32>| {
            a.iter()
                .zip(b)
                .map(|(&a, b)| f64::from(round_bf16(a)) * f64::from(round_bf16(b)))
                .fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()))
        };
        let mut rng = Rng::new(13);
        for ty in SUPPORTED_TYPES {
            let block = ty.block_len();
            let cols = 2 * block.max(64) + if block == 1 { 13 } else { block };
            for (rows, tokens) in [(7, 4), (45, 37), (2 * SLAB_ROWS + 5, 5)] {
                let m = QuantMatrix::quantize(ty, rows, cols, &rng.values(rows * cols, 2.0))
                    .unwrap()
                    .with_bf16_products();
                let w = m.dequantize();
                let x = rng.values(tokens * cols, 1.0);
                let mut y = vec![f32::NAN; tokens * rows];
                m.matmul(&x, tokens, &mut y).unwrap();
                let dy = rng.values(tokens * rows, 1.0);
                let mut dx = vec![f32::NAN; tokens * cols];
                m.matmul_transposed(&dy, tokens, &mut dx).unwrap();
                for t in 0..tokens {
                    for r in 0..rows {
                        let (exact, mag) =
                            dot(&x[t * cols..][..cols], &mut w[r * cols..][..cols].iter().copied());
                        let got = f64::from(y[t * rows + r]);
                        assert!(
                            (got - exact).abs() <= 1e-6 * mag + 1e-30,
                            "{ty} {rows}x{cols}: y[{t}, {r}] = {got} vs {exact}"
                        );
                    }
                    for c in 0..cols {
                        let (exact, mag) =
                            dot(&dy[t * rows..][..rows], &mut (0..rows).map(|r| w[r * cols + c]));
                        let got = f64::from(dx[t * cols + c]);
                        assert!(
                            (got - exact).abs() <= 1e-6 * mag + 1e-30,
                            "{ty} {rows}x{cols}: dx[{t}, {c}] = {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_and_embedding_lookup_agree_with_dequantize() {
        let mut rng = Rng::new(7);
        for ty in SUPPORTED_TYPES {
            let (rows, cols) = (5, 2 * ty.block_len().max(32));
            let m = QuantMatrix::quantize(ty, rows, cols, &rng.values(rows * cols, 2.0)).unwrap();
            let all = m.dequantize();
            let mut row = vec![0f32; cols];
            m.dequantize_row(3, &mut row).unwrap();
            assert_eq!(row, &all[3 * cols..4 * cols]);
            let mut emb = vec![0f32; 3 * cols];
            m.get_rows(&[4, 0, 4], &mut emb).unwrap();
            assert_eq!(&emb[..cols], &all[4 * cols..]);
            assert_eq!(&emb[cols..2 * cols], &all[..cols]);
            assert_eq!(&emb[2 * cols..], &all[4 * cols..]);
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let bytes = |n| SharedBytes::from_vec(vec![0u8; n]);
        assert_eq!(
            QuantMatrix::new(GgmlType::Q4_1, 2, 48, bytes(40)).unwrap_err(),
            QuantError::NotWholeBlocks { ty: GgmlType::Q4_1, len: 48, block_len: 32 }
        );
        assert_eq!(
            QuantMatrix::new(GgmlType::Q4_1, 2, 64, bytes(79)).unwrap_err(),
            QuantError::ByteLength { ty: GgmlType::Q4_1, values: 128, expected: 80, actual: 79 }
        );
        assert_eq!(
            QuantMatrix::new(GgmlType::Q8_0, usize::MAX / 2, 64, bytes(0)).unwrap_err(),
            QuantError::TooLarge { ty: GgmlType::Q8_0, rows: usize::MAX / 2, cols: 64 }
        );
        assert_eq!(
            QuantMatrix::new(GgmlType::I8, 1, 1, bytes(1)).unwrap_err(),
            QuantError::Unsupported(GgmlType::I8)
        );

        let m = QuantMatrix::new(GgmlType::Q4_1, 2, 64, bytes(80)).unwrap();
        let mut y = [0f32; 4];
        assert_eq!(
            m.matmul(&[0.0; 64], 2, &mut y),
            Err(QuantError::Length { what: "x", expected: 128, actual: 64 })
        );
        assert_eq!(
            m.matmul(&[0.0; 64], 1, &mut y),
            Err(QuantError::Length { what: "y", expected: 2, actual: 4 })
        );
        assert_eq!(m.get_rows(&[2], &mut [0.0; 64]), Err(QuantError::RowOutOfRange { row: 2, rows: 2 }));
        assert_eq!(
            m.dequantize_row(0, &mut [0.0; 63]),
            Err(QuantError::Length { what: "out", expected: 64, actual: 63 })
        );
    }

    #[test]
    fn empty_shapes_work() {
        let m = QuantMatrix::new(GgmlType::F32, 3, 0, SharedBytes::from_vec(vec![])).unwrap();
        let mut y = [1f32; 6];
        m.matmul(&[], 2, &mut y).unwrap();
        assert_eq!(y, [0.0; 6]);
        assert!(m.dequantize().is_empty());
        let m = QuantMatrix::new(GgmlType::Q4_0, 0, 32, SharedBytes::from_vec(vec![])).unwrap();
        m.matmul(&[0.0; 160], 5, &mut []).unwrap();
        m.matmul(&[0.0; 32], 1, &mut []).unwrap();
    }
}
