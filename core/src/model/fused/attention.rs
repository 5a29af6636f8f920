//! Causal grouped-query attention on host buffers, a block of query rows at a time, so that no
//! `len x context` matrix exists: the forward pass keeps each query row's log-sum-exp, and the
//! backward pass recomputes a block's probabilities from it (FlashAttention's scheme, on the
//! CPU's f32 product kernels). A block stops at the last key any of its rows sees, which skips
//! the masked half of causal training's products.

use crate::parallel::{for_each_chunk_mut, for_each_chunk_pair_mut};
use crate::quant::{f32_gemm, f32_gemm_acc, AccOperands};

/// Query rows per block: a block's scores are `QUERY_BLOCK x context` values (512 KB at 2048
/// positions).
const QUERY_BLOCK: usize = 64;

/// The sizes of one call: `heads` independent (sequence, kv head) pairs, each with `rows`
/// query rows (`groups` query heads of `len` tokens, head by head) over `keys` positions, the
/// last `len` of them the queries' own; `head_dim` values per row. A row sees at most `window`
/// keys, its own and those just before it (`usize::MAX`: all before it).
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub heads: usize,
    pub rows: usize,
    pub len: usize,
    pub keys: usize,
    pub head_dim: usize,
    pub window: usize,
}

impl Shape {
    /// The end of the keys query row `row` sees: those before the pass and its own token's
    /// prefix.
    fn visible(&self, row: usize) -> usize {
        self.keys - self.len + row % self.len + 1
    }

    /// The first key query row `row` sees (0 unless a sliding window hides older ones).
    fn first_visible(&self, row: usize) -> usize {
        self.visible(row).saturating_sub(self.window)
    }

    /// The most keys a row of the block `first..first + n` sees.
    fn block_keys(&self, first: usize, n: usize) -> usize {
        (first..first + n).map(|r| self.visible(r)).max().unwrap_or(0)
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// One head's operands, `[rows or keys, head_dim]` each.
fn head<'a>(s: &Shape, h: usize, q: &'a [f32], keys: &'a [f32], values: &'a [f32]) -> [&'a [f32]; 3] {
    let (rows, k) = (s.rows * s.head_dim, s.keys * s.head_dim);
    [&q[h * rows..][..rows], &keys[h * k..][..k], &values[h * k..][..k]]
}

/// `out = softmax(scale · q·keysᵀ + causal mask)·values` and each row's log-sum-exp of its
/// scaled, visible scores.
pub(super) fn forward(
    s: Shape,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
    log_sum_exp: &mut [f32],
) {
    let (hd, scale) = (s.head_dim, s.scale());
    for_each_chunk_pair_mut(out, s.rows * hd, log_sum_exp, s.rows, |h, out, log_sum_exp| {
        let [q, keys, values] = head(&s, h, q, keys, values);
        let mut scores = vec![0.0; QUERY_BLOCK.min(s.rows) * s.keys];
        out.fill(0.0);
        for first in (0..s.rows).step_by(QUERY_BLOCK) {
            let n = QUERY_BLOCK.min(s.rows - first);
            let seen = s.block_keys(first, n);
            let p = &mut scores[..n * seen];
            f32_gemm(&q[first * hd..(first + n) * hd], &keys[..seen * hd], hd, seen, p);
            for (i, row) in p.chunks_exact_mut(seen).enumerate() {
                let r = first + i;
                log_sum_exp[r] = softmax_visible(row, s.first_visible(r)..s.visible(r), scale);
            }
            let ops = AccOperands { a: p, lda: seen, w: &values[..seen * hd], n: seen, tokens: n };
            f32_gemm_acc(ops, &mut out[first * hd..(first + n) * hd]);
        }
    });
}

/// Turns the raw scores `row[visible]` into the softmax of `scale · score`, zeroes the masked
/// rest, and returns the log-sum-exp of the scaled scores.
fn softmax_visible(row: &mut [f32], visible: core::ops::Range<usize>, scale: f32) -> f32 {
    row[..visible.start].fill(0.0);
    row[visible.end..].fill(0.0);
    let seen = &mut row[visible];
    let max = seen.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    let mut sum = 0.0;
    for v in seen.iter_mut() {
        *v = (*v * scale - max).exp();
        sum += *v;
    }
    let inverse = 1.0 / sum;
    seen.iter_mut().for_each(|v| *v *= inverse);
    max + sum.ln()
}

/// What [`backward`] reads of the forward pass.
pub(super) struct Forward<'a> {
    pub q: &'a [f32],
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub out: &'a [f32],
    pub log_sum_exp: &'a [f32],
}

/// The gradients of [`forward`] given `d_out`, a block of query rows at a time: with `P` the
/// block's probabilities (recomputed from the log-sum-exp), `dP = d_out·valuesᵀ`,
/// `dS = P ⊙ (dP − rowsum(d_out ⊙ out))·scale`: `dq = dS·keys`, `dkeys += dSᵀ·q`,
/// `dvalues += Pᵀ·d_out`.
pub(super) fn backward(
    s: Shape,
    f: Forward,
    d_out: &[f32],
    dq: &mut [f32],
    d_keys: &mut [f32],
    d_values: &mut [f32],
) {
    let (hd, scale) = (s.head_dim, s.scale());
    let (q_len, kv_len) = (s.rows * hd, s.keys * hd);
    // One buffer per head with its three gradients, [dq | d_keys | d_values].
    let mut grads = vec![0.0; s.heads * (q_len + 2 * kv_len)];
    for_each_chunk_mut(&mut grads, q_len + 2 * kv_len, |h, grads| {
        let [q, keys, values] = head(&s, h, f.q, f.keys, f.values);
        let out = &f.out[h * q_len..][..q_len];
        let d_out = &d_out[h * q_len..][..q_len];
        let log_sum_exp = &f.log_sum_exp[h * s.rows..][..s.rows];
        let (dq, kv) = grads.split_at_mut(q_len);
        let (d_keys, d_values) = kv.split_at_mut(kv_len);
        let block = QUERY_BLOCK.min(s.rows) * s.keys;
        let (mut p, mut ds, mut transposed) = (vec![0.0; block], vec![0.0; block], vec![0.0; block]);
        for first in (0..s.rows).step_by(QUERY_BLOCK) {
            let n = QUERY_BLOCK.min(s.rows - first);
            let seen = s.block_keys(first, n);
            let rows = first * hd..(first + n) * hd;
            let (p, ds) = (&mut p[..n * seen], &mut ds[..n * seen]);
            f32_gemm(&q[rows.clone()], &keys[..seen * hd], hd, seen, p);
            f32_gemm(&d_out[rows.clone()], &values[..seen * hd], hd, seen, ds);
            for (i, (p, ds)) in p.chunks_exact_mut(seen).zip(ds.chunks_exact_mut(seen)).enumerate() {
                let r = first + i;
                let visible = s.first_visible(r)..s.visible(r);
                let lse = log_sum_exp[r];
                let row = r * hd..(r + 1) * hd;
                let d_out_dot_out: f32 = d_out[row.clone()].iter().zip(&out[row]).map(|(a, b)| a * b).sum();
                for (p, ds) in p[visible.clone()].iter_mut().zip(&mut ds[visible.clone()]) {
                    *p = (*p * scale - lse).exp();
                    *ds = *p * (*ds - d_out_dot_out) * scale;
                }
                for masked in [0..visible.start, visible.end..seen] {
                    p[masked.clone()].fill(0.0);
                    ds[masked].fill(0.0);
                }
            }
            f32_gemm_acc(
                AccOperands { a: ds, lda: seen, w: &keys[..seen * hd], n: seen, tokens: n },
                &mut dq[rows.clone()],
            );
            for (m, w, grad) in
                [(&*ds, &q[rows.clone()], &mut *d_keys), (&*p, &d_out[rows.clone()], &mut *d_values)]
            {
                let t = &mut transposed[..seen * n];
                transpose(m, n, seen, t);
                f32_gemm_acc(AccOperands { a: t, lda: n, w, n, tokens: seen }, &mut grad[..seen * hd]);
            }
        }
    });
    for (h, grads) in grads.chunks_exact(q_len + 2 * kv_len).enumerate() {
        dq[h * q_len..][..q_len].copy_from_slice(&grads[..q_len]);
        d_keys[h * kv_len..][..kv_len].copy_from_slice(&grads[q_len..q_len + kv_len]);
        d_values[h * kv_len..][..kv_len].copy_from_slice(&grads[q_len + kv_len..]);
    }
}

/// `out[c * rows + r] = m[r * cols + c]`.
fn transpose(m: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::Rng;

    /// `scale · q·kᵀ` of row `r` against key `j`, softmaxed over the visible keys, in f64.
    fn reference(s: Shape, q: &[f32], keys: &[f32], values: &[f32]) -> Vec<f64> {
        let hd = s.head_dim;
        let mut out = vec![0.0; s.heads * s.rows * hd];
        for h in 0..s.heads {
            let [q, keys, values] = head(&s, h, q, keys, values);
            for r in 0..s.rows {
                let first = s.first_visible(r);
                let scores: Vec<f64> = (first..s.visible(r))
                    .map(|j| {
                        let dot: f64 =
                            (0..hd).map(|c| f64::from(q[r * hd + c]) * f64::from(keys[j * hd + c])).sum();
                        dot / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|v| (v - max).exp()).sum();
                for (j, v) in (first..).zip(&scores) {
                    let p = (v - max).exp() / sum;
                    for c in 0..hd {
                        out[(h * s.rows + r) * hd + c] += p * f64::from(values[j * hd + c]);
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        Rng::new(seed).values(n, 1.0)
    }

    #[test]
    fn forward_equals_the_softmax_written_out_across_blocks() {
        // Two heads, 3 groups of 50 tokens after 30 cached positions: 150 rows, three blocks,
        // a block straddling two query heads; without a window and with one shorter than the
        // pass.
        for window in [usize::MAX, 37] {
            let s = Shape { heads: 2, rows: 150, len: 50, keys: 80, head_dim: 16, window };
            let (q, k, v) = (values(2 * 150 * 16, 1), values(2 * 80 * 16, 2), values(2 * 80 * 16, 3));
            let mut out = vec![0.0; q.len()];
            let mut lse = vec![0.0; 2 * 150];
            forward(s, &q, &k, &v, &mut out, &mut lse);
            for (i, (got, want)) in out.iter().zip(reference(s, &q, &k, &v)).enumerate() {
                assert!((f64::from(*got) - want).abs() < 1e-5, "window {window}: out[{i}]: {got} vs {want}");
            }
        }
    }
}
