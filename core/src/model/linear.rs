//! A frozen linear layer whose weight stays in its GGUF block format. The product runs in our
//! own quantized kernels (`quant::QuantMatrix`), not in burn, because burn dequantizes its
//! quantized tensors on every call on CPU (55-110x slower than f32, see reference/feasibility.md).

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::Error;
use crate::quant::QuantMatrix;

pub struct QuantLinear {
    weight: QuantMatrix,
}

impl QuantLinear {
    pub fn new(weight: QuantMatrix) -> Self {
        Self { weight }
    }

    pub fn weight(&self) -> &QuantMatrix {
        &self.weight
    }

    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }

    pub fn in_features(&self) -> usize {
        self.weight.cols()
    }

    /// `x: [batch, len, in] -> [batch, len, out]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, Error> {
        let [output] = project(x, [self])?;
        Ok(output)
    }

    fn forward_host(&self, input: &[f32], dims: [usize; 3], device: &Device) -> Result<Tensor<3>, Error> {
        let [b, t, _] = dims;
        let mut out = vec![0.0; b * t * self.out_features()];
        self.weight.matmul(input, b * t, &mut out)?;
        Ok(Tensor::from_data(TensorData::new(out, [b, t, self.out_features()]), device))
    }
}

/// Several linears of the same input (q, k, v; gate, up), reading the input back once.
pub fn project<const N: usize>(x: Tensor<3>, linears: [&QuantLinear; N]) -> Result<[Tensor<3>; N], Error> {
    let dims = x.dims();
    let device = x.device();
    let input = host_f32(x)?;
    let mut outputs = Vec::with_capacity(N);
    for linear in linears {
        outputs.push(linear.forward_host(&input, dims, &device)?);
    }
    // Exactly N were pushed, so the conversion always succeeds.
    outputs.try_into().map_err(|_| Error::Backend("projection count mismatch".into()))
}

/// The values of a float tensor on the host, converted to f32 whatever the device's float type.
pub(crate) fn host_f32<const D: usize>(x: Tensor<D>) -> Result<Vec<f32>, Error> {
    x.try_into_vec_as::<f32>().map_err(|e| Error::Backend(format!("reading a tensor back failed: {e:?}")))
}
