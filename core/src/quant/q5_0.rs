//! Q5_0: 32 values as an f16 scale `d`, a u32 `qh` holding bit 4 of each level (bit `i` for
//! value `i`) and the low 4 bits nibble-packed as in Q4_0; value `d * (q - 16)`.

use super::q4_0::{nibble_lanes, nibbles, pack_nibbles, symmetric_levels};
use super::simd::Simd;
use super::{affine32_dot_row, each_block, each_block_mut, f16_at, put_f16};
use super::{Format, GgmlType};

pub(crate) struct Q5_0;

impl Format for Q5_0 {
    const TY: GgmlType = GgmlType::Q5_0;
    const XSUMS: bool = true;

    fn dequantize(bytes: &[u8], out: &mut [f32]) {
        each_block(bytes, out, |b: &[u8; 22], o: &mut [f32; 32]| {
            let d = f16_at(b, 0);
            for (o, q) in o.iter_mut().zip(levels(b[2..6].try_into().unwrap(), &b[6..])) {
                *o = (i32::from(q) - 16) as f32 * d;
            }
        });
    }

    fn quantize(values: &[f32], out: &mut [u8]) {
        each_block_mut(values, out, |v: &[f32; 32], o: &mut [u8; 22]| {
            let (d, q) = symmetric_levels(v, 16.0, 31);
            put_f16(o, 0, d);
            pack_levels(&q, (&mut o[2..]).try_into().unwrap());
        });
    }

    #[inline(always)]
    unsafe fn dot_row<S: Simd>(s: S, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        affine32_dot_row::<S, 22>(s, row, x, xsum, |b| {
            let d = s.splat_f16(b);
            (d, -16.0 * s.lane0(d), level_lanes(s, b.add(2)))
        })
    }
}

/// The 32 five-bit levels of `qh` (4 bytes) and `qs` (16 bytes), in value order.
pub(super) fn levels(qh: &[u8; 4], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes(*qh);
    let lo = nibbles(qs[..16].try_into().unwrap());
    core::array::from_fn(|i| lo[i] | (((qh >> i) & 1) as u8) << 4)
}

/// Packs five-bit levels into `qh` (4 bytes) followed by `qs` (16 bytes).
pub(super) fn pack_levels(q: &[u8; 32], out: &mut [u8; 20]) {
    let qh = q.iter().enumerate().fold(0u32, |h, (i, q)| h | u32::from(q >> 4 & 1) << i);
    out[..4].copy_from_slice(&qh.to_le_bytes());
    pack_nibbles(q, (&mut out[4..]).try_into().unwrap());
}

/// For each byte value, eight bytes holding its bits `i` at bit 4 of byte `i`: the high bits
/// of eight levels, ready to widen into lanes and OR onto their nibbles.
static HIGH_BITS: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b][i] = ((b >> i) as u8 & 1) << 4;
            i += 1;
        }
        b += 1;
    }
    t
};

/// The levels of `qh` (4 bytes) and `qs` (16 bytes) at `p` as four lane groups of eight.
///
/// # Safety
/// `p` points at 20 readable bytes.
#[inline(always)]
pub(super) unsafe fn level_lanes<S: Simd>(s: S, p: *const u8) -> [S::I; 4] {
    let lo = nibble_lanes(s, p.add(4));
    core::array::from_fn(|g| s.or(lo[g], s.widen_u8(HIGH_BITS[usize::from(*p.add(g))].as_ptr())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_block() {
        // d = 2; qh has bits 0 and 31 set: value 0 is level 16 + 0, value 31 level 16 + 15.
        let mut b = [0u8; 22];
        b[..2].copy_from_slice(&half::f16::from_f32(2.0).to_le_bytes());
        b[2..6].copy_from_slice(&(1u32 | 1 << 31).to_le_bytes());
        b[6 + 15] = 0xf0;
        b[6 + 1] = 0x03;
        let mut out = [0f32; 32];
        Q5_0::dequantize(&b, &mut out);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[31], (31.0 - 16.0) * 2.0);
        assert_eq!(out[1], (3.0 - 16.0) * 2.0);
        assert_eq!(out[17], -32.0);
    }
}
