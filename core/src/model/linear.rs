//! A frozen linear layer whose weight stays in its GGUF block format. The product runs in our
//! own quantized kernels (`quant::QuantMatrix` on the CPU, `gpu::DeviceMatrix` on a GPU), not in
//! burn, because burn dequantizes its quantized tensors on every call on CPU (55-110x slower than
//! f32, measured when the project started) and its autodiff would keep each dequantized f32 weight
//! alive until backward.
//!
//! The product is a burn op (`#[backend_extension]`) with a hand-written backward: gradients
//! flow through the frozen weight to the layer's input (`dx = dy·W`, again from the blocks) and
//! no gradient is computed for the weight, so adapters on earlier layers can train on top of it.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Tensor, TensorData};

use crate::error::Error;
use crate::quant::{QuantError, QuantMatrix};

/// Cloning shares the weight (its blocks and any device copy).
#[derive(Clone)]
pub struct QuantLinear {
    weight: FrozenWeight,
    /// Added to every output, `[out]`.
    bias: Option<Tensor<1>>,
}

impl QuantLinear {
    pub fn new(weight: QuantMatrix) -> Self {
        Self { weight: FrozenWeight::new(weight), bias: None }
    }

    /// The layer with an output bias of `out_features` values.
    pub fn with_bias(self, bias: Tensor<1>) -> Self {
        Self { bias: Some(bias), ..self }
    }

    pub fn bias(&self) -> Option<&Tensor<1>> {
        self.bias.as_ref()
    }

    pub fn weight(&self) -> &QuantMatrix {
        &self.weight.host
    }

    /// Changes the CPU kernels of the weight, e.g. to [`QuantMatrix::with_integer_activations`];
    /// before the first product on a GPU, whose copy this drops.
    pub fn choose_kernels(&mut self, choose: impl FnOnce(QuantMatrix) -> QuantMatrix) {
        self.weight = FrozenWeight::new(choose(self.weight.host.clone()));
    }

    pub fn out_features(&self) -> usize {
        self.weight.host.rows()
    }

    pub fn in_features(&self) -> usize {
        self.weight.host.cols()
    }

    /// `x: [batch, len, in] -> [batch, len, out]`, differentiable with respect to `x` on an
    /// autodiff device.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let y = self.product(x)?;
        Ok(match &self.bias {
            Some(bias) => y + bias.clone().reshape([1, 1, self.out_features()]),
            None => y,
        })
    }

    /// `x·Wᵀ`: [`forward`](Self::forward) without the bias.
    pub fn product(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let dims = x.dims();
        if dims[2] != self.in_features() {
            return Err(Error::InvalidArgument(format!(
                "input of width {} for a linear layer of {} inputs",
                dims[2],
                self.in_features()
            )));
        }
        if x.dtype() != DType::F32 {
            return Err(Error::Backend(format!(
                "quantized linear layers take f32 input, not {:?}",
                x.dtype()
            )));
        }
        let y = <Dispatch as QuantLinearOps>::quant_linear(x.into_dispatch(), self.weight.clone());
        Ok(Tensor::from_dispatch(y))
    }
}

/// A frozen weight as the linear op takes it: the host blocks (memory-mapped from the model
/// file), and on a GPU their device form, uploaded the first time a product there needs it.
#[derive(Clone)]
pub struct FrozenWeight {
    host: QuantMatrix,
    #[cfg(gpu_kernels)]
    device: std::sync::Arc<std::sync::OnceLock<crate::gpu::DeviceMatrix>>,
}

impl FrozenWeight {
    fn new(host: QuantMatrix) -> Self {
        Self {
            host,
            #[cfg(gpu_kernels)]
            device: Default::default(),
        }
    }

    /// The device form on the device of `x`, uploaded on first use.
    #[cfg(gpu_kernels)]
    fn on_device_of(&self, x: &burn_cubecl::tensor::CubeTensor) -> &crate::gpu::DeviceMatrix {
        let matrix =
            self.device.get_or_init(|| crate::gpu::DeviceMatrix::upload(&self.host, &x.client, &x.device));
        // A model lives on one device; `Engine` never moves tensors between GPUs.
        assert!(matrix.device() == &x.device, "a weight uploaded to one GPU was used on another");
        matrix
    }
}

impl core::fmt::Debug for FrozenWeight {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "FrozenWeight({:?})", self.host)
    }
}

/// The kernels of a backend for the frozen product and its input gradient.
pub trait QuantKernels: Backend {
    /// `x·Wᵀ` over the last dimension.
    fn quant_forward(x: FloatTensor<Self>, weight: &FrozenWeight) -> FloatTensor<Self>;
    /// `dy·W` over the last dimension: the gradient with respect to the input.
    fn quant_input_grad(dy: FloatTensor<Self>, weight: &FrozenWeight) -> FloatTensor<Self>;
}

#[backend_extension(Flex, Cube: cfg(gpu_kernels), Autodiff)]
pub trait QuantLinearOps: Backend {
    fn quant_linear(x: FloatTensor<Self>, weight: FrozenWeight) -> FloatTensor<Self>;
}

impl QuantKernels for Flex {
    fn quant_forward(x: FlexTensor, weight: &FrozenWeight) -> FlexTensor {
        let w = &weight.host;
        on_host(x, w.rows(), |x, tokens, y| w.matmul(x, tokens, y))
    }

    fn quant_input_grad(dy: FlexTensor, weight: &FrozenWeight) -> FlexTensor {
        let w = &weight.host;
        on_host(dy, w.cols(), |dy, tokens, dx| w.matmul_transposed(dy, tokens, dx))
    }
}

impl QuantLinearOps for Flex {
    fn quant_linear(x: FlexTensor, weight: FrozenWeight) -> FlexTensor {
        Self::quant_forward(x, &weight)
    }
}

#[cfg(gpu_kernels)]
mod cube {
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeBackend;

    use super::{FrozenWeight, QuantKernels, QuantLinearOps};

    impl QuantKernels for CubeBackend {
        fn quant_forward(x: CubeTensor, weight: &FrozenWeight) -> CubeTensor {
            weight.on_device_of(&x).forward(x)
        }

        fn quant_input_grad(dy: CubeTensor, weight: &FrozenWeight) -> CubeTensor {
            weight.on_device_of(&dy).input_grad(dy)
        }
    }

    impl QuantLinearOps for CubeBackend {
        fn quant_linear(x: CubeTensor, weight: FrozenWeight) -> CubeTensor {
            Self::quant_forward(x, &weight)
        }
    }
}

impl<B: QuantKernels, C: CheckpointStrategy> QuantLinearOps for Autodiff<B, C> {
    fn quant_linear(x: FloatTensor<Self>, weight: FrozenWeight) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct InputGradient;

        impl<B: QuantKernels> Backward<B, 1> for InputGradient {
            // The weight's bytes are shared, not copied; no activation is kept for backward.
            type State = FrozenWeight;

            fn backward(self, ops: Ops<FrozenWeight, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [input] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                if let Some(input) = input {
                    grads.register::<B>(input.id, B::quant_input_grad(dy, &ops.state));
                }
            }
        }

        let (x, node) = x.into_parts();
        match InputGradient.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::quant_forward(x, &weight);
                prep.finish(weight, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quant_forward(x, &weight)),
        }
    }
}

/// Runs `kernel` on the f32 values of `x` (zero-copy when contiguous) into a tensor whose last
/// dimension is `width`.
fn on_host(
    x: FlexTensor,
    width: usize,
    kernel: impl FnOnce(&[f32], usize, &mut [f32]) -> Result<(), QuantError>,
) -> FlexTensor {
    let x = x.to_contiguous();
    let mut shape = x.shape();
    let last = shape.num_dims() - 1;
    let tokens = shape.num_elements() / shape[last].max(1);
    shape[last] = width;
    let mut out = crate::parallel::zeroed(tokens * width);
    // `QuantLinear::forward` checked the width and dtype, and backward receives gradients of
    // the forward's own f32 output, so neither the slice nor the kernel can fail here.
    let input = x.as_slice::<f32>().expect("contiguous f32 activations");
    kernel(input, tokens, &mut out).expect("shapes checked by QuantLinear::forward");
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// The values of a float tensor on the host, converted to f32 whatever the device's float type.
/// Blocks natively; in the browser it works for host tensors only (see [`read_f32`]).
pub fn host_f32<const D: usize>(x: Tensor<D>) -> Result<Vec<f32>, Error> {
    crate::device::wait(read_f32(x))
}

/// [`host_f32`] without blocking: a GPU's read-back, awaited (the only kind the browser has).
pub async fn read_f32<const D: usize>(x: Tensor<D>) -> Result<Vec<f32>, Error> {
    let failed = |e: String| Error::Backend(format!("reading a tensor back failed: {e}"));
    let data = x.into_data_async().await.map_err(|e| failed(format!("{e:?}")))?;
    data.try_into_vec_as::<f32>().map_err(|e| failed(format!("{e:?}")))
}

/// The values of an integer tensor on the host, awaited like [`read_f32`].
pub async fn read_i64<const D: usize>(x: Tensor<D, burn::tensor::Int>) -> Result<Vec<i64>, Error> {
    let failed = |e: String| Error::Backend(format!("reading token ids back failed: {e}"));
    let data = x.into_data_async().await.map_err(|e| failed(format!("{e:?}")))?;
    data.try_into_vec_as::<i64>().map_err(|e| failed(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::quant::GgmlType;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32
                    - 0.5
            })
            .collect()
    }

    /// `out[t, j] = Σ_i a[t, i] · m(i, j)` in f64.
    fn product(
        a: &[f32],
        tokens: usize,
        inner: usize,
        outer: usize,
        m: impl Fn(usize, usize) -> f32,
    ) -> Vec<f64> {
        let mut out = vec![0f64; tokens * outer];
        for t in 0..tokens {
            for j in 0..outer {
                out[t * outer + j] =
                    (0..inner).map(|i| f64::from(a[t * inner + i]) * f64::from(m(i, j))).sum();
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((f64::from(*g) - w).abs() < 1e-4 * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn gradients_flow_through_the_frozen_quantized_weight() {
        let device = Device::flex().autodiff();
        let (rows, cols, tokens) = (48, 256, 6);
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::F16] {
            let weight = QuantMatrix::quantize(ty, rows, cols, &values(rows * cols, 1)).unwrap();
            let w = weight.dequantize();
            let (xv, gv) = (values(tokens * cols, 2), values(tokens * rows, 3));
            let x = Tensor::<3>::from_data(TensorData::new(xv.clone(), [2, 3, cols]), &device).require_grad();
            let g = Tensor::<3>::from_data(TensorData::new(gv.clone(), [2, 3, rows]), &device);
            let y = QuantLinear::new(weight).forward(x.clone()).unwrap();
            assert_close(
                &host_f32(y.clone()).unwrap(),
                &product(&xv, tokens, cols, rows, |c, r| w[r * cols + c]),
                "y",
            );
            // d(Σ y·g)/dx = g·W
            let grads = (y * g).sum().backward();
            let dx = host_f32(x.grad(&grads).expect("x is tracked")).unwrap();
            assert_close(&dx, &product(&gv, tokens, rows, cols, |r, c| w[r * cols + c]), &format!("{ty} dx"));
        }
    }

    #[test]
    fn a_wrong_width_is_an_error_not_a_panic() {
        let weight = QuantMatrix::quantize(GgmlType::Q8_0, 4, 32, &values(128, 1)).unwrap();
        let x = Tensor::<3>::zeros([1, 2, 64], &Device::flex());
        assert!(matches!(QuantLinear::new(weight).forward(x), Err(Error::InvalidArgument(_))));
    }
}
