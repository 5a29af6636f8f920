//! LoRA's side path `s · (x Aᵀ) Bᵀ` and its gradients on the host's product kernels, in parallel
//! over chunks of tokens. As burn ops its six thin products (`[tokens, d] x [d, r]` with a rank r
//! of about 8) ran on one thread each, every output zero-filled first and every transposition
//! copied: a quarter of a LoRA training step on two threads.

use alloc::vec;
use alloc::vec::Vec;

use crate::parallel::{for_each_chunk_mut, zeroed};
use crate::quant::{f32_gemm, f32_gemm_acc, AccOperands};

/// Tokens one task covers (8 tasks for a 4 x 128 batch).
const TOKEN_CHUNK: usize = 64;
/// Rows of a weight's gradient one task covers (2 tasks at rank 8).
const RANK_CHUNK: usize = 4;

/// `x: [tokens, d_in]`, `A: [rank, d_in]`, `B: [d_out, rank]`, all row-major.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub tokens: usize,
    pub d_in: usize,
    pub rank: usize,
    pub d_out: usize,
}

/// `(s · (x Aᵀ) Bᵀ, x Aᵀ)`: the output `[tokens, d_out]` and the rank-sized middle, which
/// backward needs.
pub fn forward(shape: Shape, x: &[f32], a: &[f32], b: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Shape { tokens, d_in, rank, d_out } = shape;
    let mut middle = vec![0.0; tokens * rank];
    if rank == 0 {
        return (vec![0.0; tokens * d_out], middle);
    }
    for_each_chunk_mut(&mut middle, TOKEN_CHUNK * rank, |i, middle| {
        let x = &x[i * TOKEN_CHUNK * d_in..][..middle.len() / rank * d_in];
        f32_gemm(x, a, d_in, rank, middle);
    });
    let b_t = transpose(b, d_out, rank, 1.0);
    let mut y = zeroed(tokens * d_out);
    for_each_chunk_mut(&mut y, TOKEN_CHUNK * d_out, |i, y| {
        let n = y.len() / d_out.max(1);
        let scaled: Vec<f32> =
            middle[i * TOKEN_CHUNK * rank..][..n * rank].iter().map(|v| v * scale).collect();
        f32_gemm_acc(AccOperands { a: &scaled, lda: rank, w: &b_t, n: rank, tokens: n }, y);
    });
    (y, middle)
}

/// The gradients of `x`, `A` and `B` (each only where asked for) under `dy: [tokens, d_out]`:
/// with `g = s · dy B`, `dx = g A`, `dA = gᵀ x`, `dB = s · dyᵀ (x Aᵀ)`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    shape: Shape,
    x: &[f32],
    a: &[f32],
    b: &[f32],
    middle: &[f32],
    dy: &[f32],
    scale: f32,
    wanted: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let Shape { tokens, d_in, rank, d_out } = shape;
    let [want_x, want_a, want_b] = wanted;
    if rank == 0 {
        return [want_x.then(|| vec![0.0; tokens * d_in]), want_a.then(Vec::new), want_b.then(Vec::new)];
    }
    let mut g = vec![0.0; tokens * rank];
    let b_t = transpose(b, d_out, rank, 1.0);
    for_each_chunk_mut(&mut g, TOKEN_CHUNK * rank, |i, g| {
        f32_gemm(&dy[i * TOKEN_CHUNK * d_out..][..g.len() / rank * d_out], &b_t, d_out, rank, g);
        g.iter_mut().for_each(|v| *v *= scale);
    });
    let dx = want_x.then(|| {
        let mut dx = zeroed(tokens * d_in);
        for_each_chunk_mut(&mut dx, TOKEN_CHUNK * d_in, |i, dx| {
            let n = dx.len() / d_in.max(1);
            let ops = AccOperands {
                a: &g[i * TOKEN_CHUNK * rank..][..n * rank],
                lda: rank,
                w: a,
                n: rank,
                tokens: n,
            };
            f32_gemm_acc(ops, dx);
        });
        dx
    });
    // Both weight gradients sum over tokens: `[rank, tokens]` times `[tokens, width]`.
    let over_tokens = |left_t: &[f32], right: &[f32], width: usize| {
        let mut out = vec![0.0; rank * width];
        for_each_chunk_mut(&mut out, RANK_CHUNK * width, |i, out| {
            let rows = out.len() / width.max(1);
            let a = &left_t[i * RANK_CHUNK * tokens..][..rows * tokens];
            f32_gemm_acc(AccOperands { a, lda: tokens, w: right, n: tokens, tokens: rows }, out);
        });
        out
    };
    let da = want_a.then(|| over_tokens(&transpose(&g, tokens, rank, 1.0), x, d_in));
    let db = want_b.then(|| {
        let db_t = over_tokens(&transpose(middle, tokens, rank, scale), dy, d_out);
        transpose(&db_t, rank, d_out, 1.0)
    });
    [dx, da, db]
}

/// `scale ·` the transpose of the row-major `[rows, cols]` matrix `m`.
fn transpose(m: &[f32], rows: usize, cols: usize, scale: f32) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for (r, row) in m.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v * scale;
        }
    }
    t
}
