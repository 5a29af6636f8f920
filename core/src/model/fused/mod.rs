//! RMSNorm, the gated MLP activation (SwiGLU, GeGLU), RoPE and causal (optionally sliding-window) attention as single ops with their own backward, on host tensors
//! (Flex). As chains of burn ops each kept several full-size tensors for autodiff (SwiGLU four
//! `[tokens, ffn]` tensors, attention its `len x context` scores and probabilities) and paid a
//! dispatch per element-wise step; fused, RMSNorm keeps its input and one value per row, the gated activation
//! its two inputs, RoPE nothing but the pass's tables, attention its inputs, output and one log-sum-exp per query row, and no
//! `len x context` matrix outlives a block of query rows ([`attention`]'s module). LoRA's side
//! path runs its thin products on the host kernels in parallel ([`low_rank`]'s module).
//!
//! Other devices (GPUs) run the same maths as burn graphs ([`graph`]), which are also the
//! reference the fused ops are tested against, in value and gradient.

mod attention;
mod elementwise;
pub(crate) mod graph;
mod low_rank;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Shape, Tensor, TensorData};

use super::architecture::Activation;
use crate::device::is_host;
use crate::parallel::zeroed;
pub(crate) use elementwise::{activate, rms_norm_row};

/// `x / rms(x) * weight` over the last dimension of `x: [batch, len, d]`.
pub fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f32) -> Tensor<3> {
    if !fuses(&x) {
        return graph::rms_norm(x, weight, eps);
    }
    let y = <Dispatch as FusedOps>::fused_rms_norm(x.into_dispatch(), weight.clone().into_dispatch(), eps);
    Tensor::from_dispatch(y)
}

/// `activation(gate) * up`, element by element (SwiGLU, GeGLU).
pub fn gated(activation: Activation, gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    if !fuses(&gate) {
        return graph::gated(activation, gate, up);
    }
    let y = <Dispatch as FusedOps>::fused_gated(gate.into_dispatch(), up.into_dispatch(), activation);
    Tensor::from_dispatch(y)
}

/// RoPE's rotation of `x: [batch, heads, len, head_dim]` by the tables `cos` and `signed_sin`
/// (`[1, 1, len, head_dim]`, see `rope::RopeTables`).
pub fn rope(x: Tensor<4>, cos: &Tensor<4>, signed_sin: &Tensor<4>) -> Tensor<4> {
    if !fuses(&x) {
        return graph::rope(x, cos, signed_sin);
    }
    let y = <Dispatch as FusedOps>::fused_rope(
        x.into_dispatch(),
        cos.clone().into_dispatch(),
        signed_sin.clone().into_dispatch(),
    );
    Tensor::from_dispatch(y)
}

/// Causal grouped-query attention: `q: [batch, kv_heads, groups * len, head_dim]` (query head
/// `kv * groups + g`'s token `i` at row `g * len + i`) over `keys`, `values:
/// [batch, kv_heads, context, head_dim]`, whose last `len` positions are the queries' own.
/// Row `g * len + i` sees positions `0..=context - len + i`, or with a sliding `window` only the
/// last `window` of them. Without the fused op (GPUs) the burn graph adds `mask`,
/// [`graph::causal_mask`] of these sizes, made here when not given.
pub fn attention(
    q: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    groups: usize,
    window: Option<usize>,
    mask: Option<&Tensor<4>>,
) -> Tensor<4> {
    if !fuses(&q) {
        let (len, context) = (q.dims()[2] / groups, keys.dims()[2]);
        let masked = len > 1 || window.is_some_and(|w| w < context);
        let made = (mask.is_none() && masked)
            .then(|| graph::causal_mask(context - len, len, groups, window, &q.device()));
        return graph::attention(q, keys, values, mask.or(made.as_ref()));
    }
    let out = <Dispatch as FusedOps>::fused_attention(
        q.into_dispatch(),
        keys.into_dispatch(),
        values.into_dispatch(),
        groups,
        window.unwrap_or(usize::MAX),
    );
    Tensor::from_dispatch(out)
}

/// `scale · (x Aᵀ) Bᵀ` for `x: [tokens, d_in]`, `a: [rank, d_in]`, `b: [d_out, rank]`: LoRA's
/// side path.
pub fn low_rank(x: Tensor<2>, a: &Tensor<2>, b: &Tensor<2>, scale: f32) -> Tensor<2> {
    if !fuses(&x) {
        return graph::low_rank(x, a, b, scale);
    }
    let y = <Dispatch as FusedOps>::fused_low_rank(
        x.into_dispatch(),
        a.clone().into_dispatch(),
        b.clone().into_dispatch(),
        scale,
    );
    Tensor::from_dispatch(y)
}

/// Whether the fused ops take `x`: f32 host tensors.
fn fuses<const D: usize>(x: &Tensor<D>) -> bool {
    is_host(&x.device()) && x.dtype() == DType::F32
}

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    fn fused_rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
    fn fused_gated(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self>;
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        signed_sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    fn fused_attention(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        groups: usize,
        window: usize,
    ) -> FloatTensor<Self>;
    fn fused_low_rank(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
}

/// What the low-rank path's backward needs from its forward pass.
#[derive(Clone, Debug)]
pub struct LowRankSaved<B: Backend> {
    x: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    /// `x Aᵀ`, `[tokens, rank]`.
    middle: FloatTensor<B>,
    scale: f32,
}

/// What attention's backward needs from its forward pass.
#[derive(Clone, Debug)]
pub struct AttentionSaved<B: Backend> {
    q: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    out: FloatTensor<B>,
    /// Each query row's log-sum-exp of its scaled scores, `[batch, kv_heads, rows]`.
    log_sum_exp: FloatTensor<B>,
    groups: usize,
    window: usize,
}

/// The host kernels of a backend whose tensors live in host memory, forward and backward.
pub trait FusedKernels: Backend {
    /// The normed rows and each row's `1 / rms`.
    fn rms_norm_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The gradients of `x` and (with `weight_grad`) of `weight`.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        inverse_rms: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        weight_grad: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);
    fn gated_forward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self>;
    /// The gradients of `gate` and `up`.
    fn gated_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        activation: Activation,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The rotation of `x`, or with `back` its transpose (the gradient).
    fn rope_forward(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        signed_sin: FloatTensor<Self>,
        back: bool,
    ) -> FloatTensor<Self>;
    /// The output and what backward needs.
    fn attention_forward(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        groups: usize,
        window: usize,
    ) -> (FloatTensor<Self>, AttentionSaved<Self>);
    /// The gradients of `q`, `keys` and `values`.
    fn attention_backward(
        saved: AttentionSaved<Self>,
        d_out: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// The output and what backward needs.
    fn low_rank_forward(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, LowRankSaved<Self>);
    /// The gradients of `x`, `a` and `b`, each where `wanted`.
    fn low_rank_backward(
        saved: LowRankSaved<Self>,
        dy: FloatTensor<Self>,
        wanted: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3];
}

/// The f32 values of a host tensor, contiguous. The public wrappers only pass f32 tensors
/// ([`fuses`]), and backward receives gradients of the forward's own f32 outputs.
fn contiguous(x: FlexTensor) -> FlexTensor {
    x.to_contiguous()
}

fn data(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("contiguous f32 host tensor")
}

fn host_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl FusedKernels for Flex {
    fn rms_norm_forward(x: FlexTensor, weight: FlexTensor, eps: f32) -> (FlexTensor, FlexTensor) {
        let (x, weight) = (contiguous(x), contiguous(weight));
        let shape = x.shape();
        let rows = shape.num_elements() / weight.shape().num_elements().max(1);
        let mut y = zeroed(shape.num_elements());
        let mut inverse_rms = vec![0.0; rows];
        elementwise::rms_norm(data(&x), data(&weight), eps, &mut y, &mut inverse_rms);
        (host_tensor(y, shape), host_tensor(inverse_rms, Shape::from(vec![rows])))
    }

    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        inverse_rms: FlexTensor,
        dy: FlexTensor,
        weight_grad: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let (x, weight, inverse_rms, dy) =
            (contiguous(x), contiguous(weight), contiguous(inverse_rms), contiguous(dy));
        let mut dx = zeroed(x.shape().num_elements());
        let mut dw = weight_grad.then(|| vec![0.0; weight.shape().num_elements()]);
        let (x_values, w) = (data(&x), data(&weight));
        elementwise::rms_norm_backward(
            x_values,
            w,
            data(&inverse_rms),
            data(&dy),
            &mut dx,
            dw.as_deref_mut(),
        );
        (host_tensor(dx, x.shape()), dw.map(|dw| host_tensor(dw, weight.shape())))
    }

    fn gated_forward(gate: FlexTensor, up: FlexTensor, activation: Activation) -> FlexTensor {
        let (gate, up) = (contiguous(gate), contiguous(up));
        let mut y = zeroed(gate.shape().num_elements());
        elementwise::gated(activation, data(&gate), data(&up), &mut y);
        host_tensor(y, gate.shape())
    }

    fn gated_backward(
        gate: FlexTensor,
        up: FlexTensor,
        dy: FlexTensor,
        activation: Activation,
    ) -> (FlexTensor, FlexTensor) {
        let (gate, up, dy) = (contiguous(gate), contiguous(up), contiguous(dy));
        let n = gate.shape().num_elements();
        let (mut d_gate, mut d_up) = (zeroed(n), zeroed(n));
        elementwise::gated_backward(activation, data(&gate), data(&up), data(&dy), &mut d_gate, &mut d_up);
        (host_tensor(d_gate, gate.shape()), host_tensor(d_up, up.shape()))
    }

    fn rope_forward(x: FlexTensor, cos: FlexTensor, signed_sin: FlexTensor, back: bool) -> FlexTensor {
        let (x, cos, signed_sin) = (contiguous(x), contiguous(cos), contiguous(signed_sin));
        let shape = x.shape();
        let mut y = zeroed(shape.num_elements());
        let head_dim = shape[shape.num_dims() - 1];
        elementwise::rope(data(&x), data(&cos), data(&signed_sin), head_dim, back, &mut y);
        host_tensor(y, shape)
    }

    fn attention_forward(
        q: FlexTensor,
        keys: FlexTensor,
        values: FlexTensor,
        groups: usize,
        window: usize,
    ) -> (FlexTensor, AttentionSaved<Self>) {
        let (q, keys, values) = (contiguous(q), contiguous(keys), contiguous(values));
        let shape = attention_shape(&q, &keys, groups, window);
        let mut out = zeroed(q.shape().num_elements());
        let mut log_sum_exp = vec![0.0; shape.heads * shape.rows];
        attention::forward(shape, data(&q), data(&keys), data(&values), &mut out, &mut log_sum_exp);
        let [b, kv, rows, _] = dims4(&q);
        let out = host_tensor(out, q.shape());
        let log_sum_exp = host_tensor(log_sum_exp, Shape::from(vec![b, kv, rows]));
        (out.clone(), AttentionSaved { q, keys, values, out, log_sum_exp, groups, window })
    }

    fn attention_backward(
        saved: AttentionSaved<Self>,
        d_out: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let AttentionSaved { q, keys, values, out, log_sum_exp, groups, window } = saved;
        let d_out = contiguous(d_out);
        let shape = attention_shape(&q, &keys, groups, window);
        let mut dq = zeroed(q.shape().num_elements());
        let mut dk = zeroed(keys.shape().num_elements());
        let mut dv = zeroed(keys.shape().num_elements());
        let forward = attention::Forward {
            q: data(&q),
            keys: data(&keys),
            values: data(&values),
            out: data(&out),
            log_sum_exp: data(&log_sum_exp),
        };
        attention::backward(shape, forward, data(&d_out), &mut dq, &mut dk, &mut dv);
        (host_tensor(dq, q.shape()), host_tensor(dk, keys.shape()), host_tensor(dv, values.shape()))
    }

    fn low_rank_forward(
        x: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        scale: f32,
    ) -> (FlexTensor, LowRankSaved<Self>) {
        let (x, a, b) = (contiguous(x), contiguous(a), contiguous(b));
        let shape = low_rank_shape(&x, &b);
        let (y, middle) = low_rank::forward(shape, data(&x), data(&a), data(&b), scale);
        let y = host_tensor(y, Shape::from(vec![shape.tokens, shape.d_out]));
        let middle = host_tensor(middle, Shape::from(vec![shape.tokens, shape.rank]));
        (y, LowRankSaved { x, a, b, middle, scale })
    }

    fn low_rank_backward(
        saved: LowRankSaved<Self>,
        dy: FlexTensor,
        wanted: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let LowRankSaved { x, a, b, middle, scale } = saved;
        let dy = contiguous(dy);
        let shape = low_rank_shape(&x, &b);
        let grads =
            low_rank::backward(shape, data(&x), data(&a), data(&b), data(&middle), data(&dy), scale, wanted);
        let shapes = [x.shape(), a.shape(), b.shape()];
        let mut grads = grads.into_iter().zip(shapes).map(|(g, shape)| g.map(|g| host_tensor(g, shape)));
        core::array::from_fn(|_| grads.next().flatten())
    }
}

fn low_rank_shape(x: &FlexTensor, b: &FlexTensor) -> low_rank::Shape {
    let (x, b) = (x.shape(), b.shape());
    low_rank::Shape { tokens: x[0], d_in: x[1], rank: b[1], d_out: b[0] }
}

fn dims4(x: &FlexTensor) -> [usize; 4] {
    let s = x.shape();
    [s[0], s[1], s[2], s[3]]
}

fn attention_shape(q: &FlexTensor, keys: &FlexTensor, groups: usize, window: usize) -> attention::Shape {
    let [b, kv, rows, head_dim] = dims4(q);
    attention::Shape { heads: b * kv, rows, len: rows / groups, keys: dims4(keys)[2], head_dim, window }
}

impl FusedOps for Flex {
    fn fused_rms_norm(x: FlexTensor, weight: FlexTensor, eps: f32) -> FlexTensor {
        Self::rms_norm_forward(x, weight, eps).0
    }

    fn fused_gated(gate: FlexTensor, up: FlexTensor, activation: Activation) -> FlexTensor {
        Self::gated_forward(gate, up, activation)
    }

    fn fused_rope(x: FlexTensor, cos: FlexTensor, signed_sin: FlexTensor) -> FlexTensor {
        Self::rope_forward(x, cos, signed_sin, false)
    }

    fn fused_attention(
        q: FlexTensor,
        keys: FlexTensor,
        values: FlexTensor,
        groups: usize,
        window: usize,
    ) -> FlexTensor {
        Self::attention_forward(q, keys, values, groups, window).0
    }

    fn fused_low_rank(x: FlexTensor, a: FlexTensor, b: FlexTensor, scale: f32) -> FlexTensor {
        Self::low_rank_forward(x, a, b, scale).0
    }
}

impl<B: FusedKernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RmsNormBackward;

        impl<B: FusedKernels> Backward<B, 2> for RmsNormBackward {
            /// The input, the weight and each row's `1 / rms`.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [x_node, weight_node] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x, weight, inverse_rms) = ops.state;
                let (dx, dw) = B::rms_norm_backward(x, weight, inverse_rms, dy, weight_node.is_some());
                if let Some(node) = x_node {
                    grads.register::<B>(node.id, dx);
                }
                if let (Some(node), Some(dw)) = (weight_node, dw) {
                    grads.register::<B>(node.id, dw);
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        match RmsNormBackward.prepare::<C>([x_node, weight_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, inverse_rms) = B::rms_norm_forward(x.clone(), weight.clone(), eps);
                prep.finish((x, weight, inverse_rms), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm_forward(x, weight, eps).0),
        }
    }

    fn fused_gated(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        activation: Activation,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GatedBackward;

        impl<B: FusedKernels> Backward<B, 2> for GatedBackward {
            /// Both inputs and the activation.
            type State = (FloatTensor<B>, FloatTensor<B>, Activation);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [gate_node, up_node] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (gate, up, activation) = ops.state;
                let (d_gate, d_up) = B::gated_backward(gate, up, dy, activation);
                if let Some(node) = gate_node {
                    grads.register::<B>(node.id, d_gate);
                }
                if let Some(node) = up_node {
                    grads.register::<B>(node.id, d_up);
                }
            }
        }

        let (gate, gate_node) = gate.into_parts();
        let (up, up_node) = up.into_parts();
        match GatedBackward.prepare::<C>([gate_node, up_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::gated_forward(gate.clone(), up.clone(), activation);
                prep.finish((gate, up, activation), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gated_forward(gate, up, activation)),
        }
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        signed_sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RopeBackward;

        impl<B: FusedKernels> Backward<B, 1> for RopeBackward {
            /// The tables, shared by every layer of a pass: no activation is kept.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [x_node] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                if let Some(node) = x_node {
                    let (cos, signed_sin) = ops.state;
                    grads.register::<B>(node.id, B::rope_forward(dy, cos, signed_sin, true));
                }
            }
        }

        let (x, x_node) = x.into_parts();
        // The tables are constants (no gradient flows to them).
        let (cos, signed_sin) = (cos.into_parts().0, signed_sin.into_parts().0);
        match RopeBackward.prepare::<C>([x_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::rope_forward(x, cos.clone(), signed_sin.clone(), false);
                prep.finish((cos, signed_sin), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rope_forward(x, cos, signed_sin, false)),
        }
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        groups: usize,
        window: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: FusedKernels> Backward<B, 3> for AttentionBackward {
            type State = AttentionSaved<B>;

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [q_node, keys_node, values_node] = ops.parents;
                let d_out = grads.consume::<B>(&ops.node);
                let (dq, dk, dv) = B::attention_backward(ops.state, d_out);
                for (node, grad) in [(q_node, dq), (keys_node, dk), (values_node, dv)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let (q, q_node) = q.into_parts();
        let (keys, keys_node) = keys.into_parts();
        let (values, values_node) = values.into_parts();
        match AttentionBackward.prepare::<C>([q_node, keys_node, values_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, saved) = B::attention_forward(q, keys, values, groups, window);
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_forward(q, keys, values, groups, window).0),
        }
    }

    fn fused_low_rank(
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LowRankBackward;

        impl<B: FusedKernels> Backward<B, 3> for LowRankBackward {
            type State = LowRankSaved<B>;

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let dy = grads.consume::<B>(&ops.node);
                let wanted = ops.parents.each_ref().map(Option::is_some);
                let computed = B::low_rank_backward(ops.state, dy, wanted);
                for (node, grad) in ops.parents.into_iter().zip(computed) {
                    if let (Some(node), Some(grad)) = (node, grad) {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (a, a_node) = a.into_parts();
        let (b, b_node) = b.into_parts();
        match LowRankBackward.prepare::<C>([x_node, a_node, b_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, saved) = B::low_rank_forward(x, a, b, scale);
                prep.finish(saved, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::low_rank_forward(x, a, b, scale).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::model::linear::host_f32;
    use crate::quant::tests::Rng;

    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        Rng::new(seed).values(n, scale)
    }

    fn tensor<const D: usize>(dims: [usize; D], seed: u64, scale: f32, device: &Device) -> Tensor<D> {
        let n = dims.iter().product();
        Tensor::from_data(TensorData::new(values(n, seed, scale), dims), device).require_grad()
    }

    /// `fused` and `graph` on the same inputs: equal values, and equal gradients of every input
    /// under the same upstream gradient.
    fn check<const D: usize, const O: usize>(
        what: &str,
        inputs: &[Tensor<D>],
        fused: impl Fn(&[Tensor<D>]) -> Tensor<O>,
        graph: impl Fn(&[Tensor<D>]) -> Tensor<O>,
        tolerance: f32,
    ) {
        let run = |op: &dyn Fn(&[Tensor<D>]) -> Tensor<O>| {
            let inputs: Vec<Tensor<D>> = inputs.iter().map(|x| x.clone().detach().require_grad()).collect();
            let y = op(&inputs);
            let upstream = Tensor::<O>::from_data(
                TensorData::new(values(y.shape().num_elements(), 99, 1.0), y.shape()),
                &y.device(),
            );
            let grads = (y.clone() * upstream).sum().backward();
            let mut out = vec![host_f32(y).unwrap()];
            out.extend(inputs.iter().map(|x| host_f32(x.grad(&grads).expect("input is tracked")).unwrap()));
            out
        };
        let (got, want) = (run(&fused), run(&graph));
        for (k, (got, want)) in got.iter().zip(&want).enumerate() {
            let name = if k == 0 { "value".to_string() } else { format!("gradient of input {k}") };
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!((g - w).abs() <= tolerance * scale, "{what} {name}[{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn rms_norm_equals_the_graph_in_value_and_gradient() {
        let device = Device::flex().autodiff();
        let x = tensor([2, 37, 48], 1, 3.0, &device);
        let weight = tensor([1, 1, 48], 2, 0.5, &device).add_scalar(1.0);
        let norm = |graph: bool| {
            move |t: &[Tensor<3>]| {
                let weight = t[1].clone().reshape([48]);
                if graph {
                    graph::rms_norm(t[0].clone(), &weight, 1e-5)
                } else {
                    rms_norm(t[0].clone(), &weight, 1e-5)
                }
            }
        };
        check("rms_norm", &[x, weight], norm(false), norm(true), 1e-5);
    }

    #[test]
    fn gated_activations_equal_the_graph_in_value_and_gradient() {
        let device = Device::flex().autodiff();
        // Gates out to ±8, where the sigmoid and the tanh saturate.
        let (gate, up) = (tensor([3, 29, 40], 3, 8.0, &device), tensor([3, 29, 40], 4, 2.0, &device));
        for activation in [Activation::Silu, Activation::GeluTanh] {
            let fused = |t: &[Tensor<3>]| gated(activation, t[0].clone(), t[1].clone());
            let graph = |t: &[Tensor<3>]| graph::gated(activation, t[0].clone(), t[1].clone());
            check(&format!("{activation:?}"), &[gate.clone(), up.clone()], fused, graph, 1e-5);
        }
    }

    #[test]
    fn rope_equals_the_graph_in_value_and_gradient() {
        let device = Device::flex().autodiff();
        let (len, head_dim) = (11, 16);
        let x = tensor([2, 3, len, head_dim], 8, 2.0, &device);
        // Any tables of the right shape: the op multiplies by them as they are.
        let cos = tensor([1, 1, len, head_dim], 9, 1.0, &device).detach();
        let signed_sin = tensor([1, 1, len, head_dim], 10, 1.0, &device).detach();
        let fused = |t: &[Tensor<4>]| rope(t[0].clone(), &cos, &signed_sin);
        let graph = |t: &[Tensor<4>]| graph::rope(t[0].clone(), &cos, &signed_sin);
        check("rope", &[x], fused, graph, 1e-5);
    }

    #[test]
    fn low_rank_equals_the_graph_in_value_and_gradient() {
        let device = Device::flex().autodiff();
        // Token chunks with a partial last one, a rank past one gradient task, widths that are
        // not multiples of a vector.
        let (tokens, d_in, rank, d_out) = (150, 37, 6, 45);
        let x = tensor([tokens, d_in], 11, 2.0, &device);
        let a = tensor([rank, d_in], 12, 0.5, &device);
        let b = tensor([d_out, rank], 13, 0.5, &device);
        let fused = |t: &[Tensor<2>]| low_rank(t[0].clone(), &t[1], &t[2], 1.7);
        let graph = |t: &[Tensor<2>]| graph::low_rank(t[0].clone(), &t[1], &t[2], 1.7);
        check("low_rank", &[x, a, b], fused, graph, 1e-5);
    }

    #[test]
    fn attention_equals_the_masked_graph_in_value_and_gradient() {
        let device = Device::flex().autodiff();
        let (b, kv, groups, hd) = (2, 2, 3, 16);
        // A training pass (several query blocks, one straddling two query heads), a prompt after
        // a cache, and one decode token; each without a window and through one that hides keys.
        for (len, cached, window) in
            [(70, 0, None), (70, 0, Some(20)), (5, 9, None), (5, 9, Some(4)), (1, 12, None), (1, 12, Some(5))]
        {
            let context = cached + len;
            let q = tensor([b, kv, groups * len, hd], 5, 2.0, &device);
            let keys = tensor([b, kv, context, hd], 6, 2.0, &device);
            let values = tensor([b, kv, context, hd], 7, 1.0, &device);
            let fused =
                |t: &[Tensor<4>]| attention(t[0].clone(), t[1].clone(), t[2].clone(), groups, window, None);
            let graph = |t: &[Tensor<4>]| {
                let mask = graph::causal_mask(cached, len, groups, window, &device);
                graph::attention(t[0].clone(), t[1].clone(), t[2].clone(), Some(&mask))
            };
            let what = format!("attention of {len} after {cached} through window {window:?}");
            check(&what, &[q, keys, values], fused, graph, 1e-5);
        }
    }
}
