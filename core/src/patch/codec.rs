//! ComPEFT's storage of a ternary tensor (values in `{−1, 0, +1}` times one scale): the gaps
//! between nonzero positions Rice-coded (a Golomb code with a power-of-two parameter `2^k`:
//! the quotient in unary, then `k` remainder bits), each followed by its sign bit. The
//! parameter is the one that makes this tensor's stream shortest. Integers only, `no_std`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A ternary tensor of `len` values: nonzero at `positions` (ascending), negative where
/// `negative` says so.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ternary {
    pub len: usize,
    pub positions: Vec<u32>,
    pub negative: Vec<bool>,
}

impl Ternary {
    /// `−1`, `0` or `+1` at each position.
    pub fn signs(&self) -> Vec<i8> {
        let mut out = alloc::vec![0i8; self.len];
        for (&p, &neg) in self.positions.iter().zip(&self.negative) {
            out[p as usize] = if neg { -1 } else { 1 };
        }
        out
    }
}

/// Largest Rice parameter tried: gaps never exceed 2^32.
const MAX_RICE_BITS: u8 = 32;

/// The coded stream of `t` and its Rice parameter.
pub fn encode(t: &Ternary) -> (Vec<u8>, u8) {
    let gaps: Vec<u64> = gaps(&t.positions).collect();
    let k = (0..=MAX_RICE_BITS).min_by_key(|&k| stream_bits(&gaps, k)).unwrap_or(0);
    let mut w = BitWriter::default();
    for (gap, &neg) in gaps.iter().zip(&t.negative) {
        for _ in 0..gap >> k {
            w.bit(true);
        }
        w.bit(false);
        for b in (0..k).rev() {
            w.bit((gap >> b) & 1 == 1);
        }
        w.bit(neg);
    }
    (w.finish(), k)
}

/// Bits of the stream for `gaps` with Rice parameter `k` (signs included).
fn stream_bits(gaps: &[u64], k: u8) -> u64 {
    gaps.iter().map(|g| (g >> k) + 1 + u64::from(k) + 1).sum()
}

/// Zero values skipped before each nonzero.
fn gaps(positions: &[u32]) -> impl Iterator<Item = u64> + '_ {
    let mut next = 0u64;
    positions.iter().map(move |&p| {
        let gap = u64::from(p) - next;
        next = u64::from(p) + 1;
        gap
    })
}

/// Reads a stream that [`encode`] wrote for `nonzeros` values among `len`; refuses a stream
/// that runs past `len`, ends early, or has anything but zero padding after its last code.
pub fn decode(bytes: &[u8], len: usize, nonzeros: usize, rice_bits: u8) -> Result<Ternary, String> {
    if nonzeros > len || rice_bits > MAX_RICE_BITS {
        return Err(format!("{nonzeros} nonzeros in {len} values with Rice parameter {rice_bits}"));
    }
    // Each code takes at least two bits, so this bounds the allocation by the real stream.
    if (nonzeros as u64) * 2 > bytes.len() as u64 * 8 {
        return Err(format!("{} bytes cannot hold {nonzeros} nonzeros", bytes.len()));
    }
    let mut r = BitReader { bytes, at: 0 };
    let mut positions = Vec::with_capacity(nonzeros);
    let mut negative = Vec::with_capacity(nonzeros);
    let mut next = 0u64;
    for _ in 0..nonzeros {
        let mut quotient = 0u64;
        while r.bit()? {
            quotient += 1;
            // A gap past the end of the tensor: stop counting before it gets any further.
            if quotient << rice_bits >= len as u64 {
                return Err(format!("a position runs past the {len} values"));
            }
        }
        let mut remainder = 0u64;
        for _ in 0..rice_bits {
            remainder = remainder << 1 | u64::from(r.bit()?);
        }
        let position = next + (quotient << rice_bits) + remainder;
        if position >= len as u64 {
            return Err(format!("position {position} is past the {len} values"));
        }
        positions.push(position as u32);
        negative.push(r.bit()?);
        next = position + 1;
    }
    let used = r.at.div_ceil(8);
    let tail_bits = r.at & 7;
    if used != bytes.len() || (tail_bits != 0 && bytes[used - 1] << tail_bits != 0) {
        return Err(format!("{} bytes after the last of {nonzeros} codes", bytes.len() * 8 - r.at));
    }
    Ok(Ternary { len, positions, negative })
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    used: u32,
}

impl BitWriter {
    fn bit(&mut self, one: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if let (true, Some(byte)) = (one, self.bytes.last_mut()) {
            *byte |= 0x80 >> (self.used % 8);
        }
        self.used = (self.used + 1) % 8;
    }

    fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    /// Bits read.
    at: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Result<bool, String> {
        let byte = self.bytes.get(self.at / 8).ok_or_else(|| String::from("the stream ends early"))?;
        let one = byte & (0x80 >> (self.at % 8)) != 0;
        self.at += 1;
        Ok(one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn round_trips_edge_cases() {
        for t in [
            Ternary { len: 0, positions: vec![], negative: vec![] },
            Ternary { len: 5, positions: vec![], negative: vec![] },
            Ternary { len: 1, positions: vec![0], negative: vec![true] },
            Ternary { len: 9, positions: (0..9).collect(), negative: vec![false; 9] },
            Ternary { len: 1 << 20, positions: vec![3, (1 << 20) - 1], negative: vec![false, true] },
        ] {
            let (bytes, k) = encode(&t);
            assert_eq!(decode(&bytes, t.len, t.positions.len(), k).unwrap(), t);
        }
    }

    /// Positions 2, 3 and 10 of 20, the second negative: gaps 2, 0, 6. With `k = 1` (13 bits;
    /// `k = 0` takes 14, `k = 2` ties at 13 and the smaller wins) each gap is its quotient in
    /// unary and a 0, one remainder bit, then the sign: `1 0 0 0 | 0 0 1 | 1 1 1 0 0 0`, MSB
    /// first, padded with zeros: `1000_0011 1100_0000`.
    #[test]
    fn the_stream_is_the_rice_code_written_out() {
        let t = Ternary { len: 20, positions: vec![2, 3, 10], negative: vec![false, true, false] };
        assert_eq!(encode(&t), (vec![0b1000_0011, 0b1100_0000], 1));
        assert_eq!(decode(&[0b1000_0011, 0b1100_0000], 20, 3, 1).unwrap(), t);
    }

    #[test]
    fn refuses_streams_that_do_not_fit() {
        let t = Ternary { len: 100, positions: vec![10, 50, 99], negative: vec![true, false, true] };
        let (bytes, k) = encode(&t);
        assert!(decode(&bytes, 99, 3, k).is_err(), "a position past the end");
        assert!(decode(&bytes, 100, 4, k).is_err(), "more codes than the stream holds");
        assert!(decode(&bytes, 100, 2, k).is_err(), "codes left over");
        assert!(decode(&bytes[..bytes.len() - 1], 100, 3, k).is_err(), "truncated");
        // A run of ones is a huge gap: refused as soon as it passes the end.
        assert!(decode(&[0xff; 64], 1 << 30, 1, 0).is_err());
    }
}
