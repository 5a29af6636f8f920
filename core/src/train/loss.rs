//! The next-token loss, fused with the output head. `logsumexp(h·Wᵀ) − (h·Wᵀ)[y]` is computed
//! a few dozen positions at a time straight from the quantized head, so at most `CHUNK x vocab`
//! logits exist at once (burn's own log-softmax would keep `tokens x vocab` logits, their
//! softmax and their gradient, about 300 MB at 4 x 128 tokens of a 49k vocabulary). Because the
//! loss is a scalar, its gradient with respect to `h` is computed in the same pass and kept for
//! backward, which only scales it: no logits are recomputed.

use std::collections::BTreeMap;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};

use crate::adapt::{detached, Method};
use crate::device::is_host;
use crate::error::Error;
use crate::model::linear::host_f32;
use crate::model::{Adapters, Decoder, KvCache};
use crate::parallel::for_each_chunk_pair_mut;
use crate::quant::QuantMatrix;

/// Positions whose logits exist at once (128 x 49152 f32 = 25 MB). The head is decoded twice
/// per chunk, so smaller chunks trade memory for decoding time.
const CHUNK: usize = 128;

/// What each position of a `[batch, len]` input predicts: `ids[i]` with weight `weights[i]`
/// (0 where nothing is predicted, such as the last position of a row or an unmasked prompt).
#[derive(Clone, Debug)]
pub struct TokenTargets {
    ids: Vec<u32>,
    weights: Vec<f32>,
}

impl TokenTargets {
    /// Next-token targets of `tokens` (`batch` rows of at least 2): every position but the last
    /// of a row predicts the next token, counted where `counted[i + 1]` is set (all when
    /// `None`). The weights average over the counted predictions.
    pub fn next_tokens(tokens: &[u32], counted: Option<&[bool]>, batch: usize) -> Result<Self, Error> {
        let len = tokens.len() / batch.max(1);
        if len < 2 || batch == 0 || tokens.len() != batch * len {
            return Err(Error::InvalidArgument(format!(
                "{} tokens are not {batch} rows of at least 2",
                tokens.len()
            )));
        }
        if let Some(counted) = counted.filter(|c| c.len() != tokens.len()) {
            return Err(Error::InvalidArgument(format!(
                "{} target flags for {} tokens",
                counted.len(),
                tokens.len()
            )));
        }
        let mut ids = vec![0; tokens.len()];
        let mut weights = vec![0.0; tokens.len()];
        for i in (0..tokens.len()).filter(|i| (i + 1) % len != 0) {
            if counted.is_none_or(|c| c[i + 1]) {
                ids[i] = tokens[i + 1];
                weights[i] = 1.0;
            }
        }
        let total = weights.iter().sum::<f32>();
        if total == 0.0 {
            return Err(Error::InvalidArgument("no token of this batch counts in the loss".into()));
        }
        weights.iter_mut().for_each(|w| *w /= total);
        Ok(Self { ids, weights })
    }
}

/// Mean next-token negative log-likelihood of `tokens` (`batch` rows of equal length): every
/// position but the last predicts the next token.
pub fn next_token_loss(
    model: &Decoder,
    adapters: &dyn Adapters,
    tokens: &[u32],
    batch: usize,
) -> Result<Tensor<1>, Error> {
    masked_next_token_loss(model, adapters, tokens, None, batch)
}

/// [`next_token_loss`] counting only the tokens with `targets[i]` set (e.g. the completion of a
/// prompt/completion pair): the mean over those predictions.
pub fn masked_next_token_loss(
    model: &Decoder,
    adapters: &dyn Adapters,
    tokens: &[u32],
    targets: Option<&[bool]>,
    batch: usize,
) -> Result<Tensor<1>, Error> {
    let targets = TokenTargets::next_tokens(tokens, targets, batch)?;
    let mut cache = model.new_cache(batch);
    let hidden = model.forward_adapted(tokens, batch, &mut cache, adapters)?;
    head_loss(model, hidden, targets)
}

/// The loss of final-normed hidden states `[batch, len, d_model]` against `targets`.
fn head_loss(model: &Decoder, hidden: Tensor<3>, targets: TokenTargets) -> Result<Tensor<1>, Error> {
    if hidden.dtype() != DType::F32 {
        return Err(Error::Backend(format!("the loss takes f32 hidden states, not {:?}", hidden.dtype())));
    }
    if !is_host(model.device()) {
        return head_loss_on_device(model, hidden, &targets);
    }
    let loss = <Dispatch as CrossEntropyOps>::quant_cross_entropy(
        hidden.into_dispatch(),
        model.output().clone(),
        targets,
    );
    Ok(Tensor::from_dispatch(loss))
}

/// [`head_loss`] from burn's ops, for devices without the fused host kernel (GPUs): logits of
/// `CHUNK` positions at a time through the head's linear op, their log-softmax and the targets'
/// entries. Autodiff keeps each chunk's softmax for backward (about 50 MB per 128 positions of a
/// 49k vocabulary), which GPU memory affords.
fn head_loss_on_device(
    model: &Decoder,
    hidden: Tensor<3>,
    targets: &TokenTargets,
) -> Result<Tensor<1>, Error> {
    let [b, len, d] = hidden.dims();
    let positions = b * len;
    let vocab = model.config().vocab_size;
    let device = hidden.device();
    let hidden = hidden.reshape([1, positions, d]);
    let mut total = Tensor::<1>::zeros([1], &device);
    for start in (0..positions).step_by(CHUNK) {
        let end = (start + CHUNK).min(positions);
        let weights = &targets.weights[start..end];
        if weights.iter().all(|&w| w == 0.0) {
            continue;
        }
        let n = end - start;
        let logits =
            model.head().forward(hidden.clone().slice([0..1, start..end, 0..d]))?.reshape([n, vocab]);
        let ids: Vec<i64> = targets.ids[start..end].iter().map(|&id| i64::from(id)).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
        let picked = log_softmax(logits, 1).gather(1, ids).reshape([n]);
        let weights = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [n]), &device);
        total = total - (picked * weights).sum();
    }
    Ok(total)
}

/// The loss of one batch (the method's penalty not included) and the gradients of `adapter`'s
/// parameters, by name. With `recompute`, only each block's input is kept from the forward pass
/// and each block is run again during backward (activation checkpointing): activation memory
/// falls from all blocks' to one block's, for one more forward pass of compute.
pub fn loss_and_gradients(
    model: &Decoder,
    adapter: &mut dyn Method,
    tokens: &[u32],
    targets: Option<&[bool]>,
    batch: usize,
    recompute: bool,
) -> Result<(f32, BTreeMap<String, Tensor<2>>), Error> {
    let (loss, grads) = loss_and_gradients_on_device(model, adapter, tokens, targets, batch, recompute)?;
    Ok((host_f32(loss)?[0], grads))
}

/// [`loss_and_gradients`] with the loss left on the device (one value, off the graph), for a
/// caller that awaits its read-back.
pub fn loss_and_gradients_on_device(
    model: &Decoder,
    adapter: &mut dyn Method,
    tokens: &[u32],
    targets: Option<&[bool]>,
    batch: usize,
    recompute: bool,
) -> Result<(Tensor<1>, BTreeMap<String, Tensor<2>>), Error> {
    let penalty = adapter.penalty();
    if !recompute {
        let loss = masked_next_token_loss(model, adapter, tokens, targets, batch)?;
        let value = loss.clone().detach();
        let objective = match penalty {
            Some(penalty) => loss + penalty,
            None => loss,
        };
        return Ok((value, super::collect_grads(adapter, &objective.backward())));
    }
    let targets = TokenTargets::next_tokens(tokens, targets, batch)?;
    let len = tokens.len() / batch;
    // The input sequence: the virtual tokens, then the (adapted) token embeddings.
    let input = |adapters: &dyn Adapters| -> Result<Tensor<3>, Error> {
        let x = adapters.token_embeddings(0, model.embed(tokens, batch)?);
        Ok(match model.virtual_input(batch, adapters)? {
            Some(prompt) => Tensor::cat(vec![prompt, x], 1),
            None => x,
        })
    };
    // Each block sees its own key/value prefix before the sequence.
    let block_cache = |layer: usize, adapters: &dyn Adapters| -> Result<(KvCache, usize), Error> {
        let mut cache = model.new_cache(batch);
        let prefix = model.write_prefix(&mut cache, Some(layer), adapters)?;
        Ok((cache, prefix))
    };
    // Forward without a graph: the adapter's parameters are detached, the block inputs kept.
    let frozen = detached(adapter);
    let mut inputs = vec![input(frozen.as_ref())?];
    let sequence = inputs[0].dims()[1];
    let (_, prefix) = block_cache(0, frozen.as_ref())?;
    let context = model.config().context_len;
    if prefix + sequence > context {
        return Err(Error::ContextOverflow { tokens: prefix + sequence, context });
    }
    let positions = model.positions(prefix, sequence);
    for layer in 0..model.blocks().len() {
        let x = inputs[layer].clone();
        let (mut cache, _) = block_cache(layer, frozen.as_ref())?;
        inputs.push(model.block_forward(layer, x, &positions, &mut cache, frozen.as_ref())?);
    }
    let top = inputs.pop().expect("the embeddings at least").require_grad();
    let d = model.config().d_model;
    let hidden = model.final_norm(top.clone()).slice([0..batch, sequence - len..sequence, 0..d]);
    let loss = head_loss(model, hidden, targets)?;
    let grads = loss.backward();
    let value = loss.detach();
    let mut upstream = top.grad(&grads).expect("the loss depends on the last block");
    let mut total: BTreeMap<String, Tensor<2>> = BTreeMap::new();
    let mut add = |grads: BTreeMap<String, Tensor<2>>| {
        for (name, g) in grads {
            let sum = match total.remove(&name) {
                Some(t) => t + g,
                None => g,
            };
            total.insert(name, sum);
        }
    };
    // Backward block by block: rerun the block with the tracked adapter and back-propagate
    // `Σ out · upstream`, whose gradient with respect to `out` is `upstream`. The first block's
    // input is rebuilt from the tracked adapter, so that soft prompts and embedding changes
    // get their gradients.
    for (layer, x) in inputs.into_iter().enumerate().rev() {
        let x = if layer > 0 { x.require_grad() } else { input(adapter)? };
        let (mut cache, _) = block_cache(layer, adapter)?;
        let out = model.block_forward(layer, x.clone(), &positions, &mut cache, adapter)?;
        let grads = (out * upstream.clone()).sum().backward();
        add(super::collect_grads(adapter, &grads));
        if layer > 0 {
            upstream = x.grad(&grads).expect("the block's output depends on its input");
        }
    }
    if let Some(penalty) = penalty {
        add(super::collect_grads(adapter, &penalty.backward()));
    }
    Ok((value, total))
}

/// The loss as a burn op with a hand-written backward (see the module documentation).
#[backend_extension(Flex, Autodiff)]
pub trait CrossEntropyOps: Backend {
    /// `Σ_i weights[i] · (logsumexp(h_i·Wᵀ) − (h_i·Wᵀ)[ids[i]])` over the rows `h_i` of `hidden`:
    /// a tensor of one value.
    fn quant_cross_entropy(
        hidden: FloatTensor<Self>,
        head: QuantMatrix,
        targets: TokenTargets,
    ) -> FloatTensor<Self>;
}

/// The host kernel of a backend whose tensors live in host memory.
pub trait CrossEntropyKernels: Backend {
    /// The loss and, with `gradient`, its gradient with respect to `hidden`.
    fn cross_entropy(
        hidden: FloatTensor<Self>,
        head: &QuantMatrix,
        targets: &TokenTargets,
        gradient: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);
}

impl CrossEntropyKernels for Flex {
    fn cross_entropy(
        hidden: FlexTensor,
        head: &QuantMatrix,
        targets: &TokenTargets,
        gradient: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let shape = hidden.shape();
        let hidden = hidden.to_contiguous();
        // `head_loss` checked the dtype, and `TokenTargets` has one entry per position.
        let h = hidden.as_slice::<f32>().expect("contiguous f32 hidden states");
        let (loss, dh) = cross_entropy_host(h, head, targets, gradient);
        let loss = FlexTensor::from_data(TensorData::new(vec![loss as f32], [1]));
        (loss, dh.map(|dh| FlexTensor::from_data(TensorData::new(dh, shape))))
    }
}

impl CrossEntropyOps for Flex {
    fn quant_cross_entropy(hidden: FlexTensor, head: QuantMatrix, targets: TokenTargets) -> FlexTensor {
        Self::cross_entropy(hidden, &head, &targets, false).0
    }
}

impl<B: CrossEntropyKernels, C: CheckpointStrategy> CrossEntropyOps for Autodiff<B, C> {
    fn quant_cross_entropy(
        hidden: FloatTensor<Self>,
        head: QuantMatrix,
        targets: TokenTargets,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct HiddenGradient;

        impl<B: Backend> Backward<B, 1> for HiddenGradient {
            /// The gradient of the loss with respect to the hidden states.
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [hidden] = ops.parents;
                let upstream = grads.consume::<B>(&ops.node);
                if let Some(hidden) = hidden {
                    let ones = Shape::from(vec![1; ops.state.shape().num_dims()]);
                    let dh = B::float_mul(ops.state, B::float_reshape(upstream, ones));
                    grads.register::<B>(hidden.id, dh);
                }
            }
        }

        let (hidden, node) = hidden.into_parts();
        match HiddenGradient.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (loss, dh) = B::cross_entropy(hidden, &head, &targets, true);
                prep.finish(dh.expect("asked for the gradient"), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::cross_entropy(hidden, &head, &targets, false).0),
        }
    }
}

/// The loss of rows `hidden` (`[positions, d]`, row-major) in f64 and, with `gradient`,
/// `d loss / d hidden`. Positions of weight 0 are skipped; the rest go through in chunks.
fn cross_entropy_host(
    hidden: &[f32],
    head: &QuantMatrix,
    targets: &TokenTargets,
    gradient: bool,
) -> (f64, Option<Vec<f32>>) {
    let (d, vocab) = (head.cols(), head.rows());
    let active: Vec<usize> = (0..targets.weights.len()).filter(|&i| targets.weights[i] != 0.0).collect();
    let mut dh = gradient.then(|| vec![0f32; hidden.len()]);
    let mut loss = 0f64;
    let mut x = Vec::with_capacity(CHUNK * d);
    let mut logits = vec![0f32; CHUNK * vocab];
    // Per position: log-sum-exp and target logit.
    let mut stats = vec![[0f32; 2]; CHUNK];
    let mut dx = vec![0f32; CHUNK * d];
    for rows in active.chunks(CHUNK) {
        let n = rows.len();
        x.clear();
        x.extend(rows.iter().flat_map(|&i| &hidden[i * d..(i + 1) * d]));
        let logits = &mut logits[..n * vocab];
        head.matmul(&x, n, logits).expect("hidden states of the head's width");
        // One pass per row: the log-sum-exp, and with `gradient` the row turned into
        // d/dlogits of w·(lse − logit[y]) = w·(softmax − onehot(y)).
        for_each_chunk_pair_mut(logits, vocab, &mut stats[..n], 1, |r, row, stats| {
            let (target, w) = (targets.ids[rows[r]] as usize, targets.weights[rows[r]]);
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let picked = row[target];
            let mut sum = 0.0;
            for l in row.iter_mut() {
                *l = (*l - max).exp();
                sum += *l;
            }
            stats[0] = [max + sum.ln(), picked];
            if gradient {
                let scale = w / sum;
                row.iter_mut().for_each(|l| *l *= scale);
                row[target] -= w;
            }
        });
        for (&i, [lse, picked]) in rows.iter().zip(&stats) {
            loss += f64::from(targets.weights[i]) * f64::from(lse - picked);
        }
        let Some(dh) = dh.as_mut() else { continue };
        let dx = &mut dx[..n * d];
        head.matmul_transposed(logits, n, dx).expect("gradients of the head's height");
        for (r, &i) in rows.iter().enumerate() {
            dh[i * d..(i + 1) * d].copy_from_slice(&dx[r * d..(r + 1) * d]);
        }
    }
    (loss, dh)
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Int};

    use super::*;
    use crate::quant::GgmlType;

    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let bits =
                    (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503)) >> 8;
                (bits as f32 / (1 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    /// The fused loss and its gradient equal burn's log-softmax over dequantized logits, with
    /// a vocabulary spanning several chunks' worth of positions and a mask.
    #[test]
    fn fused_loss_and_gradient_equal_log_softmax() {
        let device = Device::flex().autodiff();
        let (vocab, d, batch, len) = (300, 64, 3, 50);
        let head = QuantMatrix::quantize(GgmlType::Q8_0, vocab, d, &values(vocab * d, 1, 2.0)).unwrap();
        let tokens: Vec<u32> =
            values(batch * len, 2, 1.0).iter().map(|v| ((v + 0.5) * 299.0) as u32).collect();
        let counted: Vec<bool> = (0..tokens.len()).map(|i| i % 7 != 3).collect();
        let hv = values(batch * len * d, 3, 4.0);
        let hidden =
            || Tensor::<3>::from_data(TensorData::new(hv.clone(), [batch, len, d]), &device).require_grad();

        let targets = TokenTargets::next_tokens(&tokens, Some(&counted), batch).unwrap();
        let h = hidden();
        let fused = Tensor::<1>::from_dispatch(<Dispatch as CrossEntropyOps>::quant_cross_entropy(
            h.clone().into_dispatch(),
            head.clone(),
            targets.clone(),
        ))
        .mul_scalar(3.0);
        let fused_grad = host_f32(h.grad(&fused.backward()).unwrap()).unwrap();

        let h = hidden();
        let w = Tensor::<2>::from_data(TensorData::new(head.dequantize(), [vocab, d]), &device);
        let logits = h.clone().matmul(w.transpose().unsqueeze::<3>());
        let ids: Vec<i64> = targets.ids.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<3, Int>::from_data(TensorData::new(ids, [batch, len, 1]), &device);
        let weights =
            Tensor::<3>::from_data(TensorData::new(targets.weights.clone(), [batch, len, 1]), &device);
        let reference = (log_softmax(logits, 2).gather(2, ids) * weights).sum().neg().mul_scalar(3.0);
        let reference_grad = host_f32(h.grad(&reference.backward()).unwrap()).unwrap();

        let (a, b) = (host_f32(fused).unwrap()[0], host_f32(reference).unwrap()[0]);
        assert!((a - b).abs() < 1e-4 * b.abs(), "loss {a} vs {b}");
        let scale = reference_grad.iter().fold(0f32, |m, g| m.max(g.abs()));
        for (i, (g, r)) in fused_grad.iter().zip(&reference_grad).enumerate() {
            assert!((g - r).abs() < 1e-4 * scale, "dh[{i}]: {g} vs {r}");
        }
    }

    #[test]
    fn targets_need_a_counted_prediction() {
        assert!(TokenTargets::next_tokens(&[1, 2, 3], None, 2).is_err());
        assert!(TokenTargets::next_tokens(&[1, 2, 3, 4], Some(&[true, false, true, false]), 2).is_err());
        let t = TokenTargets::next_tokens(&[1, 2, 3, 4], Some(&[true, true, false, true]), 2).unwrap();
        assert_eq!((t.ids, t.weights), (vec![2, 0, 4, 0], vec![0.5, 0.0, 0.5, 0.0]));
    }
}
