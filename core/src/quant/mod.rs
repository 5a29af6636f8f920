//! Block quantization formats of GGUF/ggml. Weights stay in their blocks in memory; kernels
//! dequantize in registers. One module per block format.
//!
//! Every format has a scalar `dequantize` that is bit-exact with ggml's `dequantize_row_*` and
//! doubles as the reference the SIMD kernels are tested against, a quantizer, and a row-dot
//! kernel written once over the [`simd::Simd`] vocabulary and compiled per instruction set.

// Targets without any SIMD instruction set run only the scalar reference, which leaves the
// generic kernels unused there.
#![cfg_attr(
    not(any(
        target_arch = "x86",
        target_arch = "x86_64",
        all(target_arch = "aarch64", target_feature = "neon", target_endian = "little"),
        all(target_arch = "wasm32", target_feature = "simd128")
    )),
    allow(dead_code, unused_variables)
)]

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

mod float;
mod int8;
mod k_scales;
mod levels;
mod matrix;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;
mod q8_k;
mod simd;

pub use levels::Levels;
pub use matrix::QuantMatrix;
// For the host decoder (`model`, which needs `std`).
#[cfg(feature = "std")]
pub(crate) use simd::{f32_gemm, f32_gemm_acc, AccOperands};

/// A ggml tensor element type, with the numeric ids GGUF files use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    /// Maps a GGUF type id; `None` for ids this build does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
        }
    }

    /// Number of values in one block (1 for plain element types).
    pub const fn block_len(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
        }
    }

    /// Byte offset in a block of its f16 scale `d`, which scales every value of the block
    /// (K-quants: the super-block scale over the sub-block scales), for the formats we read
    /// whose values are `d · (…) + offset`; `None` for the others.
    pub const fn scale_offset(self) -> Option<usize> {
        use GgmlType::*;
        match self {
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K => Some(0),
            Q6K => Some(q6_k::D),
            _ => None,
        }
    }

    /// Bytes of one block, as laid out by ggml.
    pub const fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
        }
    }

    /// Bytes needed for `n` values, or `None` when `n` is not a whole number of blocks or the
    /// size overflows (both are signs of a corrupt or hostile file).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let block = self.block_len() as u64;
        if !n.is_multiple_of(block) {
            return None;
        }
        (n / block).checked_mul(self.block_bytes() as u64)
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a quantization request was refused. Every variant names the values that were wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("tensor type {0} has no quantization kernels")]
    Unsupported(GgmlType),
    #[error("{len} values are not a whole number of {ty} blocks of {block_len}")]
    NotWholeBlocks { ty: GgmlType, len: usize, block_len: usize },
    #[error("{ty} data for {values} values needs {expected} bytes, got {actual}")]
    ByteLength { ty: GgmlType, values: usize, expected: usize, actual: usize },
    #[error("a {rows}x{cols} {ty} matrix does not fit in memory")]
    TooLarge { ty: GgmlType, rows: usize, cols: usize },
    #[error("{what} has {actual} values, expected {expected}")]
    Length { what: &'static str, expected: usize, actual: usize },
    #[error("row {row} is out of range for a matrix of {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },
}

/// Dequantizes `bytes`, which hold `out.len()` values of type `ty`, into `out`; bit-exact with
/// ggml's `dequantize_row_*`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let ops = FormatOps::of(ty)?;
    check_bytes(ty, out.len(), bytes.len())?;
    (ops.dequantize)(bytes, out);
    Ok(())
}

/// Quantizes `values` into ggml blocks of type `ty` (bit-identical to ggml's reference quantizer
/// for the float and 32-value formats; a simpler but sound search for the K-quants).
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, QuantError> {
    let ops = FormatOps::of(ty)?;
    let mut out = vec![0u8; byte_len(ty, values.len())?];
    (ops.quantize)(values, &mut out);
    Ok(out)
}

/// Every type [`QuantMatrix`] holds, floats first.
pub const SUPPORTED_TYPES: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8K,
];

/// Whether [`dequantize`], [`quantize`] and [`QuantMatrix`] handle `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    FormatOps::of(ty).is_ok()
}

/// Bytes that `values` values of `ty` occupy, validating that they are whole blocks.
fn byte_len(ty: GgmlType, values: usize) -> Result<usize, QuantError> {
    let block_len = ty.block_len();
    if !values.is_multiple_of(block_len) {
        return Err(QuantError::NotWholeBlocks { ty, len: values, block_len });
    }
    (values / block_len).checked_mul(ty.block_bytes()).ok_or(QuantError::TooLarge {
        ty,
        rows: 1,
        cols: values,
    })
}

fn check_bytes(ty: GgmlType, values: usize, actual: usize) -> Result<(), QuantError> {
    let expected = byte_len(ty, values)?;
    if expected != actual {
        return Err(QuantError::ByteLength { ty, values, expected, actual });
    }
    Ok(())
}

/// One ggml block format: a scalar reference and a kernel generic over the instruction set.
pub(crate) trait Format {
    const TY: GgmlType;
    const LEN: usize = Self::TY.block_len();
    const BYTES: usize = Self::TY.block_bytes();
    /// Whether [`Format::dot_row`] wants the sums of `x` over each 32 values: formats with an
    /// offset term (`w = d*q + m`) fold it into `m * sum(x)` instead of adding it per element.
    const XSUMS: bool = false;

    /// `bytes` are whole blocks and `out` holds exactly their values.
    fn dequantize(bytes: &[u8], out: &mut [f32]);
    /// `values` are whole blocks and `out` holds exactly their bytes.
    fn quantize(values: &[f32], out: &mut [u8]);

    /// Dot product of one row of blocks with `x`, unpacking the blocks in registers.
    ///
    /// # Safety
    /// `row` holds whole blocks whose values number `x.len()`; when `XSUMS`, `xsum` holds the
    /// sums of `x` over each 32 values (`x.len() / 32` of them). `s` proves its ISA is present.
    unsafe fn dot_row<S: simd::Simd>(s: S, row: &[u8], x: &[f32], xsum: &[f32]) -> f32;
}

/// The scalar reference dot product: dequantize a stretch, then multiply-add in order.
fn dot_row_ref<F: Format>(row: &[u8], x: &[f32]) -> f32 {
    // A multiple of every block length, small enough to stay in L1.
    const STRETCH: usize = 256;
    let mut buf = [0f32; STRETCH];
    let stretch_bytes = STRETCH / F::LEN * F::BYTES;
    let mut acc = 0f32;
    for (bytes, xs) in row.chunks(stretch_bytes).zip(x.chunks(STRETCH)) {
        let w = &mut buf[..xs.len()];
        F::dequantize(bytes, w);
        for (w, x) in w.iter().zip(xs) {
            acc += w * x;
        }
    }
    acc
}

/// The per-format entry points, resolved once from a runtime [`GgmlType`].
pub(crate) struct FormatOps {
    pub dequantize: fn(&[u8], &mut [f32]),
    pub quantize: fn(&[f32], &mut [u8]),
    pub xsums: bool,
    pub dot_rows: DotRows,
}

/// [`simd::dot_rows`] for one format; unsafe for the same reasons.
type DotRows = unsafe fn(simd::Isa, &[u8], &[f32], &[f32], &mut [f32]);

struct OpsOf<F>(core::marker::PhantomData<F>);

impl<F: Format> OpsOf<F> {
    const OPS: FormatOps = FormatOps {
        dequantize: F::dequantize,
        quantize: F::quantize,
        xsums: F::XSUMS,
        dot_rows: simd::dot_rows::<F>,
    };
}

impl FormatOps {
    fn of(ty: GgmlType) -> Result<&'static FormatOps, QuantError> {
        use GgmlType as T;
        Ok(match ty {
            T::F32 => &OpsOf::<float::F32>::OPS,
            T::F16 => &OpsOf::<float::F16>::OPS,
            T::BF16 => &OpsOf::<float::Bf16>::OPS,
            T::Q4_0 => &OpsOf::<q4_0::Q4_0>::OPS,
            T::Q4_1 => &OpsOf::<q4_1::Q4_1>::OPS,
            T::Q5_0 => &OpsOf::<q5_0::Q5_0>::OPS,
            T::Q5_1 => &OpsOf::<q5_1::Q5_1>::OPS,
            T::Q8_0 => &OpsOf::<q8_0::Q8_0>::OPS,
            T::Q4K => &OpsOf::<q4_k::Q4K>::OPS,
            T::Q5K => &OpsOf::<q5_k::Q5K>::OPS,
            T::Q6K => &OpsOf::<q6_k::Q6K>::OPS,
            T::Q8K => &OpsOf::<q8_k::Q8K>::OPS,
            T::Q8_1 | T::Q2K | T::Q3K | T::I8 | T::I16 | T::I32 | T::I64 | T::F64 => {
                return Err(QuantError::Unsupported(ty))
            }
        })
    }
}

/// The row-dot shared by the 32-value formats, whose blocks all decode to `d * q + c`:
/// `block` reads one block into its scale `d` (in every lane), its per-value offset `c` and its
/// four lane groups of levels `q`, and the offsets are applied once per block as `c * sum(x)`.
///
/// # Safety
/// As [`Format::dot_row`] with `XSUMS`, for blocks of `BYTES` bytes.
#[inline(always)]
unsafe fn affine32_dot_row<S: simd::Simd, const BYTES: usize>(
    s: S,
    row: &[u8],
    x: &[f32],
    xsum: &[f32],
    block: impl Fn(*const u8) -> (S::F, f32, [S::I; 4]),
) -> f32 {
    let mut acc = s.zero();
    let mut offsets = 0f32;
    for b in 0..row.len() / BYTES {
        let (d, c, q) = block(row.as_ptr().add(b * BYTES));
        acc = s.fma(d, s.dot32(q, x.as_ptr().add(32 * b)), acc);
        offsets += c * *xsum.get_unchecked(b);
    }
    s.hsum(acc) + offsets
}

/// Calls `f` on each block of `bytes` with the matching values of `out`. Callers pass whole
/// blocks; the array conversions cannot fail after `chunks_exact` and compile away.
#[inline(always)]
fn each_block<const B: usize, const L: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; L]),
) {
    for (b, o) in bytes.chunks_exact(B).zip(out.chunks_exact_mut(L)) {
        f(b.try_into().unwrap(), o.try_into().unwrap());
    }
}

/// The quantizing counterpart of [`each_block`].
#[inline(always)]
fn each_block_mut<const B: usize, const L: usize>(
    values: &[f32],
    out: &mut [u8],
    f: impl Fn(&[f32; L], &mut [u8; B]),
) {
    for (v, o) in values.chunks_exact(L).zip(out.chunks_exact_mut(B)) {
        f(v.try_into().unwrap(), o.try_into().unwrap());
    }
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_le(b[at], b[at + 1])
}

/// The little-endian f16 `[lo, hi]` as f32, exactly. `half`'s conversion checks CPU features on
/// every call with `std` and branches on every class without; this one is branch-free.
#[inline(always)]
fn f16_le(lo: u8, hi: u8) -> f32 {
    let h = u32::from(u16::from_le_bytes([lo, hi]));
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // All three candidates, then a select, so that loops of this vectorize.
    // Normal: rebias the exponent from 15 to 127; the mantissa moves up 13 bits.
    let normal = (em << 13) + ((127 - 15) << 23);
    // Subnormal: em * 2^-24, both factors exact.
    let subnormal = (em as i32 as f32 * (1.0 / 16_777_216.0)).to_bits();
    // Infinity or NaN (payload kept).
    let special = (em << 13) | 0x7f80_0000;
    let magnitude = if em < 0x400 {
        subnormal
    } else if em >= 0x7c00 {
        special
    } else {
        normal
    };
    f32::from_bits(sign | magnitude)
}

#[inline(always)]
fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

/// `roundf`: to nearest, ties away from zero (core has no `f32::round` without std).
#[inline(always)]
fn round_away(x: f32) -> i32 {
    let t = x as i32;
    let frac = x - t as f32;
    if frac >= 0.5 {
        t.saturating_add(1)
    } else if frac <= -0.5 {
        t.saturating_sub(1)
    } else {
        t
    }
}

fn abs(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & 0x7fff_ffff)
}

/// The element of largest magnitude, with its sign (ggml's symmetric quantizers map it to the
/// most negative level).
fn signed_absmax(values: &[f32]) -> f32 {
    let mut best = 0f32;
    for &v in values {
        if abs(v) > abs(best) {
            best = v;
        }
    }
    best
}

#[cfg(test)]
pub(crate) mod tests {
    use super::simd::Isa;
    use super::*;
    use proptest::prelude::*;

    /// A small deterministic generator, so that one proptest seed expands into any amount of
    /// data of any shape.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
        }

        pub fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
        }

        /// Uniform in [-1, 1).
        pub fn unit(&mut self) -> f32 {
            (self.next_u32() >> 8) as f32 / (1 << 23) as f32 - 1.0
        }

        pub fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.unit() * scale).collect()
        }
    }

    /// Bytes of `n` values of `ty`, every bit random except the scales, which get finite values
    /// of a sane range (random f16 bits would often be NaN or infinite).
    pub(crate) fn random_blocks(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
        use GgmlType as T;
        let mut bytes: Vec<u8> = (0..byte_len(ty, n).unwrap()).map(|_| rng.next_u32() as u8).collect();
        for b in bytes.chunks_exact_mut(ty.block_bytes()) {
            let v = rng.unit();
            match ty {
                T::F32 => b.copy_from_slice(&(4.0 * v).to_le_bytes()),
                T::BF16 => b.copy_from_slice(&((4.0 * v).to_bits() >> 16).to_le_bytes()[..2]),
                T::F16 => put_f16(b, 0, 4.0 * v),
                T::Q4_0 | T::Q5_0 | T::Q8_0 => put_f16(b, 0, v),
                T::Q4_1 | T::Q5_1 | T::Q4K | T::Q5K => {
                    put_f16(b, 0, v);
                    put_f16(b, 2, rng.unit());
                }
                T::Q6K => put_f16(b, 208, v / 16.0),
                T::Q8K => b[..4].copy_from_slice(&(v / 64.0).to_le_bytes()),
                _ => unreachable!("{ty} has no kernels"),
            }
        }
        bytes
    }

    /// How far a value may move through `quantize` then `dequantize`, given the values quantized
    /// together with it (its block, or super-block for the K-quants).
    fn error_bound(ty: GgmlType, group: &[f32], v: f32) -> f32 {
        use GgmlType as T;
        let amax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
        let min = group.iter().fold(f32::MAX, |m, &v| m.min(v));
        let max = group.iter().fold(f32::MIN, |m, &v| m.max(v));
        let range0 = max.max(0.0) - min.min(0.0);
        match ty {
            T::F32 => 0.0,
            // Half a unit in the last place; subnormals have a fixed spacing of 2^-24.
            T::F16 => v.abs() / 2048.0 + 1.0 / 33_554_432.0,
            T::BF16 => v.abs() / 256.0,
            // The symmetric formats clip the largest value of the other sign by up to a step.
            T::Q4_0 => 1.01 * amax / 8.0,
            T::Q5_0 => 1.01 * amax / 16.0,
            T::Q4_1 => 0.52 * (max - min) / 15.0 + min.abs() / 1024.0,
            T::Q5_1 => 0.52 * (max - min) / 31.0 + min.abs() / 1024.0,
            T::Q8_0 => 0.57 * amax / 127.0,
            T::Q4K => 0.6 * range0 / 15.0,
            T::Q5K => 0.6 * range0 / 31.0,
            T::Q6K => 0.55 * amax / 31.0,
            T::Q8K => 0.501 * amax / 127.0,
            _ => unreachable!(),
        }
    }

    /// No regression files: the tests would write them into the source tree.
    pub(crate) fn config() -> ProptestConfig {
        ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
    }

    proptest! {
        #![proptest_config(config())]

        /// Every row-dot kernel usable here (the scalar reference and the SIMD one) agrees with
        /// the exact product of the dequantized row, within a few f32 roundings of the sum of
        /// the absolute terms, for random bytes of every format and random shapes.
        #[test]
        fn kernels_match_reference(
            seed: u64,
            ty in proptest::sample::select(&SUPPORTED_TYPES[..]),
            rows in 1usize..5,
            blocks in 1usize..5,
        ) {
            let mut rng = Rng::new(seed);
            // Odd lengths for the unblocked floats exercise the vector tails.
            let cols = if ty.block_len() == 1 { blocks * 29 + (seed % 8) as usize } else { blocks * ty.block_len() };
            let bytes = random_blocks(ty, rows * cols, &mut rng);
            let x = rng.values(cols, 1.0);
            let ops = FormatOps::of(ty).unwrap();
            let mut w = vec![0f32; rows * cols];
            (ops.dequantize)(&bytes, &mut w);
            let xsum: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
            for isa in Isa::all() {
                let mut y = vec![0f32; rows];
                // SAFETY: `bytes` holds `rows` rows of `cols` values; `xsum` sums each 32.
                unsafe { (ops.dot_rows)(isa, &bytes, &x, &xsum, &mut y) };
                for (r, w) in w.chunks_exact(cols).enumerate() {
                    let exact: f64 = w.iter().zip(&x).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum();
                    let mag: f64 = w.iter().zip(&x).map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs()).sum();
                    let err = (f64::from(y[r]) - exact).abs();
                    prop_assert!(err <= 1e-6 * mag + 1e-30,
                        "{ty} on {}: row {r} of {rows}x{cols}: {} vs exact {exact} (|terms| {mag})", isa.name(), y[r]);
                }
            }
        }

        /// Quantizing then dequantizing moves no value further than its format's resolution.
        #[test]
        fn roundtrip_error_is_bounded(
            seed: u64,
            ty in proptest::sample::select(&SUPPORTED_TYPES[..]),
            blocks in 1usize..4,
            exp in -4i32..8,
            shifted: bool,
        ) {
            let mut rng = Rng::new(seed);
            let group = ty.block_len().max(32);
            let scale = 2f32.powi(exp);
            let shift = if shifted { 3.0 * scale * rng.unit() } else { 0.0 };
            let v: Vec<f32> = rng.values(blocks * group, scale).iter().map(|v| v + shift).collect();
            let q = quantize(ty, &v).unwrap();
            prop_assert_eq!(q.len(), byte_len(ty, v.len()).unwrap());
            let mut back = vec![0f32; v.len()];
            dequantize(ty, &q, &mut back).unwrap();
            let group = ty.block_len();
            for (vs, bs) in v.chunks(group.max(1)).zip(back.chunks(group.max(1))) {
                for (&a, &b) in vs.iter().zip(bs) {
                    let bound = error_bound(ty, vs, a);
                    prop_assert!((a - b).abs() <= bound, "{ty}: {a} came back as {b} (bound {bound})");
                }
            }
        }
    }

    #[test]
    fn f16_conversion_is_exact_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let [lo, hi] = h.to_le_bytes();
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_le(lo, hi);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#06x}");
        }
    }

    /// The kernels read block scales through their own f16 paths (a vector broadcast for `d`, an
    /// integer fast path for `m`): every finite f16 must come out exact on every ISA.
    #[test]
    fn kernel_scale_reads_are_exact_for_every_finite_f16() {
        let q8_0 = FormatOps::of(GgmlType::Q8_0).unwrap();
        let q4_1 = FormatOps::of(GgmlType::Q4_1).unwrap();
        let mut x = [0f32; 32];
        x[0] = 1.0;
        for isa in Isa::all() {
            for h in (0..=u16::MAX).filter(|h| h & 0x7c00 != 0x7c00) {
                let want = f16_le(h as u8, (h >> 8) as u8);
                // Q8_0 with level 1 at value 0: the dot is `d`.
                let mut block = [0u8; 34];
                block[..2].copy_from_slice(&h.to_le_bytes());
                block[2] = 1;
                let mut y = [0f32];
                // SAFETY: one block of 32 values; Q8_0 needs no sums.
                unsafe { (q8_0.dot_rows)(isa, &block, &x, &[], &mut y) };
                assert_eq!(y[0], want, "Q8_0 d = {h:#06x} on {}", isa.name());
                // Q4_1 with d = 0 and all levels 0: the dot is `m * sum(x)` = `m`.
                let mut block = [0u8; 20];
                block[2..4].copy_from_slice(&h.to_le_bytes());
                // SAFETY: one block of 32 values, whose sum is 1.
                unsafe { (q4_1.dot_rows)(isa, &block, &x, &[1.0], &mut y) };
                assert_eq!(y[0], want, "Q4_1 m = {h:#06x} on {}", isa.name());
            }
        }
    }

    #[test]
    fn format_constants_agree_with_ggml_type() {
        for ty in SUPPORTED_TYPES {
            assert!(is_supported(ty));
            let n = 2 * ty.block_len();
            assert_eq!(quantize(ty, &vec![0.5; n]).unwrap().len(), 2 * ty.block_bytes());
        }
        assert!(!is_supported(GgmlType::Q2K));
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(quantize(GgmlType::Q3K, &[0.0; 256]), Err(QuantError::Unsupported(GgmlType::Q3K)));
        assert_eq!(
            quantize(GgmlType::Q4_1, &[0.0; 33]),
            Err(QuantError::NotWholeBlocks { ty: GgmlType::Q4_1, len: 33, block_len: 32 })
        );
        let mut out = [0f32; 32];
        assert_eq!(
            dequantize(GgmlType::Q8_0, &[0; 33], &mut out),
            Err(QuantError::ByteLength { ty: GgmlType::Q8_0, values: 32, expected: 34, actual: 33 })
        );
        let msg = alloc::format!("{}", dequantize(GgmlType::Q6K, &[0; 210], &mut out).unwrap_err());
        assert_eq!(msg, "32 values are not a whole number of Q6_K blocks of 256");
    }
}
