//! Every block format as integer levels with one affine map per group of values:
//! `w = scale · (q − zero) + min`, one `(scale, min)` pair per 16 or 32 values, the levels packed
//! eight (4-bit formats) or four (5-, 6- and 8-bit formats) to a `u32`. GPU kernels read this
//! form: one kernel then serves every format, and the weights stay quantized on the device.
//!
//! The order of operations matches each format's `dequantize` (e.g. Q4_K's
//! `(d · scale) · q − dmin · min`), so decoding this form gives the same f32 values.

use alloc::vec;
use alloc::vec::Vec;

use super::k_scales::{self, HEAD};
use super::{f16_at, q4_0, q4_k, q5_0, q5_k, q6_k, GgmlType, QuantMatrix};

/// A matrix in level form (see the module documentation). Rows are whole groups and whole
/// words, so group `g` covers values `g·group..(g+1)·group` of the row-major matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Levels {
    /// Bits per level in `words`: 4 or 8.
    pub bits: u32,
    /// Values per `(scale, min)` pair.
    pub group: usize,
    /// Subtracted from every level before scaling (8 for Q4_0, 32 for Q6_K, …).
    pub zero: f32,
    /// The levels, value `i` in bits `bits·(i mod k)..` of word `i / k` with `k = 32 / bits`.
    pub words: Vec<u32>,
    /// `[scale, min]` of each group, row-major.
    pub groups: Vec<f32>,
}

/// Decodes one block into its levels and appends its `(scale, min)` pairs.
type DecodeBlock = fn(block: &[u8], q: &mut [u8], groups: &mut Vec<f32>);

/// How one format decodes into levels: its bits per stored level, group, zero and block decoder.
struct Decoder {
    bits: u32,
    group: usize,
    zero: f32,
    decode: DecodeBlock,
}

impl Levels {
    /// The level form of `matrix`, or `None` for the float formats (F32, F16, BF16), which
    /// have no levels.
    pub fn of(matrix: &QuantMatrix) -> Option<Self> {
        let decoder = decoder(matrix.ty())?;
        let ty = matrix.ty();
        let values = matrix.rows() * matrix.cols();
        let per_word = (32 / decoder.bits) as usize;
        let mut words = vec![0u32; values / per_word];
        let mut groups = Vec::with_capacity(2 * values / decoder.group);
        let mut q = vec![0u8; ty.block_len()];
        for (block, words) in matrix
            .data()
            .chunks_exact(ty.block_bytes())
            .zip(words.chunks_exact_mut(ty.block_len() / per_word))
        {
            (decoder.decode)(block, &mut q, &mut groups);
            for (word, q) in words.iter_mut().zip(q.chunks_exact(per_word)) {
                *word =
                    q.iter().enumerate().fold(0, |w, (k, &q)| w | u32::from(q) << (decoder.bits * k as u32));
            }
        }
        Some(Self { bits: decoder.bits, group: decoder.group, zero: decoder.zero, words, groups })
    }

    /// The part of every value (row-major) proportional to its block's scale `d`:
    /// `scale · (level − zero)`, which is the value less its group's `min`. PEQA trains `d`,
    /// and `∂w/∂d = this / d`.
    pub fn scaled_parts(&self) -> Vec<f32> {
        let per_word = (32 / self.bits) as usize;
        let mask = (1u32 << self.bits) - 1;
        let mut out = Vec::with_capacity(self.words.len() * per_word);
        for (i, &word) in self.words.iter().enumerate() {
            let scale = self.groups[2 * (i * per_word / self.group)];
            for k in 0..per_word {
                let q = (word >> (self.bits * k as u32)) & mask;
                out.push(scale * (q as f32 - self.zero));
            }
        }
        out
    }

    /// All values, row-major: the format's meaning, spelled out for the tests.
    #[cfg(test)]
    fn dequantize(&self) -> Vec<f32> {
        let per_word = (32 / self.bits) as usize;
        let mask = (1u32 << self.bits) - 1;
        let mut out = Vec::with_capacity(self.words.len() * per_word);
        for (i, &word) in self.words.iter().enumerate() {
            let g = i * per_word / self.group;
            let (scale, min) = (self.groups[2 * g], self.groups[2 * g + 1]);
            for k in 0..per_word {
                let q = (word >> (self.bits * k as u32)) & mask;
                out.push(scale * (q as f32 - self.zero) + min);
            }
        }
        out
    }
}

fn decoder(ty: GgmlType) -> Option<Decoder> {
    use GgmlType as T;
    let (bits, group, zero, decode): (u32, usize, f32, DecodeBlock) = match ty {
        T::Q4_0 => (4, 32, 8.0, |b, q, g| {
            q.copy_from_slice(&q4_0::nibbles(b[2..18].try_into().unwrap()));
            g.extend([f16_at(b, 0), 0.0]);
        }),
        T::Q4_1 => (4, 32, 0.0, |b, q, g| {
            q.copy_from_slice(&q4_0::nibbles(b[4..20].try_into().unwrap()));
            g.extend([f16_at(b, 0), f16_at(b, 2)]);
        }),
        T::Q5_0 => (8, 32, 16.0, |b, q, g| {
            q.copy_from_slice(&q5_0::levels(b[2..6].try_into().unwrap(), &b[6..]));
            g.extend([f16_at(b, 0), 0.0]);
        }),
        T::Q5_1 => (8, 32, 0.0, |b, q, g| {
            q.copy_from_slice(&q5_0::levels(b[4..8].try_into().unwrap(), &b[8..]));
            g.extend([f16_at(b, 0), f16_at(b, 2)]);
        }),
        // Signed levels shifted into 0..=255.
        T::Q8_0 => (8, 32, 128.0, |b, q, g| {
            for (q, &v) in q.iter_mut().zip(&b[2..34]) {
                *q = (i16::from(v as i8) + 128) as u8;
            }
            g.extend([f16_at(b, 0), 0.0]);
        }),
        T::Q4K => (4, 32, 0.0, |b, q, g| {
            q.copy_from_slice(&q4_k::levels(&b[HEAD..]));
            k_scale_groups(b, g);
        }),
        T::Q5K => (8, 32, 0.0, |b, q, g| {
            q.copy_from_slice(&q5_k::levels(&b[HEAD..q5_k::QS], &b[q5_k::QS..]));
            k_scale_groups(b, g);
        }),
        T::Q6K => (8, 16, 32.0, |b, q, g| {
            q.copy_from_slice(&q6_k::levels(b.try_into().unwrap()));
            let d = f16_at(b, q6_k::D);
            for &sc in &b[q6_k::SCALES..q6_k::D] {
                g.extend([d * f32::from(sc as i8), 0.0]);
            }
        }),
        _ => return None,
    };
    Some(Decoder { bits, group, zero, decode })
}

/// The eight `(d · scale, −dmin · min)` pairs of a Q4_K/Q5_K super-block.
fn k_scale_groups(b: &[u8], groups: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scales::unpack(b[4..HEAD].try_into().unwrap());
    for (sc, mn) in sc.into_iter().zip(mn) {
        groups.extend([d * f32::from(sc), -(dmin * f32::from(mn))]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::Rng;

    #[test]
    fn levels_decode_to_the_formats_own_values_exactly() {
        let (rows, cols) = (3, 512);
        let values = Rng::new(7).values(rows * cols, 2.0);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0]
            .into_iter()
            .chain([GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K])
        {
            let m = QuantMatrix::quantize(ty, rows, cols, &values).unwrap();
            let levels = Levels::of(&m).unwrap();
            assert_eq!(levels.words.len() * (32 / levels.bits as usize), rows * cols, "{ty}");
            assert_eq!(levels.groups.len(), 2 * rows * cols / levels.group, "{ty}");
            assert_eq!(levels.dequantize(), m.dequantize(), "{ty}");
        }
    }

    #[test]
    fn float_formats_have_no_levels() {
        let m = QuantMatrix::quantize(GgmlType::F16, 2, 32, &[0.5; 64]).unwrap();
        assert!(Levels::of(&m).is_none());
    }
}
