//! CubeCL kernels over the level form of a weight (`quant::Levels`): `w = scale·(q − zero) + min`
//! per group, levels packed `32 / bits` to a word. They compile to WGSL (wgpu, WebGPU), SPIR-V
//! or MSL; `bits` and the group size are compile-time constants, so each format gets its own
//! specialised shader from one source.

use cubecl::prelude::*;

/// Every weight value into `out` (row-major f32): one unit per packed word.
#[cube(launch)]
pub fn dequantize_levels(
    words: &[u32],
    groups: &[f32],
    out: &mut [f32],
    zero: f32,
    #[comptime] bits: u32,
    #[comptime] group: usize,
) {
    let word_index = ABSOLUTE_POS;
    if word_index >= words.len() {
        terminate!();
    }
    let per_word = comptime!(32 / bits) as usize;
    let mask = comptime!((1u32 << bits) - 1);
    let first = word_index * per_word;
    let g = first / group;
    let scale = groups[2 * g];
    let min = groups[2 * g + 1];
    let word = words[word_index];
    #[unroll]
    for k in 0..per_word {
        let q = (word >> (bits * k as u32)) & mask;
        out[first + k] = scale * (f32::cast_from(q) - zero) + min;
    }
}

/// `y[t, r] = Σ_c x[t, c] · w[r, c]` straight from the levels, for the few tokens of a decode
/// step: one unit per output value. Per group the levels are summed against `x` and the affine
/// map applied once: `scale·(Σ x·q − zero·Σ x) + min·Σ x`.
#[cube(launch)]
pub fn levels_matmul(
    x: &[f32],
    words: &[u32],
    groups: &[f32],
    y: &mut [f32],
    rows: usize,
    cols: usize,
    zero: f32,
    #[comptime] bits: u32,
    #[comptime] group: usize,
) {
    let out_index = ABSOLUTE_POS;
    if out_index >= y.len() {
        terminate!();
    }
    let per_word = comptime!(32 / bits) as usize;
    let words_per_group = comptime!(group / (32 / bits) as usize);
    let mask = comptime!((1u32 << bits) - 1);
    let t = out_index / rows;
    let r = out_index % rows;
    let groups_per_row = cols / group;
    let mut acc = 0.0f32;
    for g in 0..groups_per_row {
        let mut dot = 0.0f32;
        let mut sum = 0.0f32;
        let first_word = (r * groups_per_row + g) * words_per_group;
        let first_x = t * cols + g * group;
        #[unroll]
        for w in 0..words_per_group {
            let word = words[first_word + w];
            #[unroll]
            for k in 0..per_word {
                let xv = x[first_x + w * per_word + k];
                let q = (word >> (bits * k as u32)) & mask;
                dot += xv * f32::cast_from(q);
                sum += xv;
            }
        }
        let gi = r * groups_per_row + g;
        acc += groups[2 * gi] * (dot - zero * sum) + groups[2 * gi + 1] * sum;
    }
    y[out_index] = acc;
}
