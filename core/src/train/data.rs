//! Training text as fixed-length token windows: `.txt` documents (split on blank lines) are
//! tokenized, packed into one stream separated by the end-of-sequence token, cut into windows,
//! shuffled with a seed, and split into training and held-out windows.

use crate::error::Error;
use crate::tokenizer::Tokenizer;

pub struct Windows {
    pub train: Vec<Vec<u32>>,
    pub held_out: Vec<Vec<u32>>,
}

/// `held_out_fraction` of the windows (at least one when there are two or more) are held out.
pub fn text_windows(
    text: &str,
    tokenizer: &Tokenizer,
    seq: usize,
    held_out_fraction: f32,
    seed: u64,
) -> Result<Windows, Error> {
    if seq < 2 {
        return Err(Error::InvalidArgument(format!("sequence length {seq} must be at least 2")));
    }
    let mut stream = Vec::new();
    for document in text.split("\n\n").map(str::trim).filter(|d| !d.is_empty()) {
        stream.extend(tokenizer.encode(document, true)?);
        stream.extend(tokenizer.eos());
    }
    let mut windows: Vec<Vec<u32>> = stream.chunks_exact(seq).map(<[u32]>::to_vec).collect();
    if windows.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the data has {} tokens, fewer than one window of {seq}",
            stream.len()
        )));
    }
    shuffle(&mut windows, seed);
    let held = if windows.len() >= 2 {
        ((windows.len() as f32 * held_out_fraction).round() as usize).clamp(1, windows.len() - 1)
    } else {
        0
    };
    let held_out = windows.split_off(windows.len() - held);
    Ok(Windows { train: windows, held_out })
}

/// Fisher-Yates with a platform-independent generator, so a seed gives the same order everywhere.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let run = |seed| {
            let mut v: Vec<u32> = (0..50).collect();
            shuffle(&mut v, seed);
            v
        };
        let mut sorted = run(3);
        assert_ne!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(run(3), sorted);
        assert_ne!(run(4), sorted);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
