//! A frozen weight on a GPU: its level form (`quant::Levels`) in two device buffers, or the f32
//! values of a float-format weight, uploaded once from the host blocks. Products with few tokens
//! (decode) read the levels in-kernel; products with many tokens (prefill, training) decode the
//! matrix into a transient f32 buffer for burn's tiled matmul and free it straight after, as
//! llama.cpp's GPU backends do: no f32 copy of the base is ever kept.

use burn::backend::ops::FloatTensorOps;
use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use cubecl::client::Client;
use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernels;
use crate::quant::{Levels, QuantMatrix};

/// Token counts up to this take the in-kernel level product; above it the matrix is decoded
/// once for a tiled matmul, whose reuse of each weight across tokens then pays off.
const FEW_TOKENS: usize = 8;

pub struct DeviceMatrix {
    client: Client,
    device: CubeDevice,
    rows: usize,
    cols: usize,
    form: Form,
}

enum Form {
    Levels {
        words: Handle,
        word_count: usize,
        groups: Handle,
        group_count: usize,
        bits: u32,
        group: usize,
        zero: f32,
    },
    Dense {
        values: Handle,
    },
}

impl DeviceMatrix {
    /// Uploads `matrix` to the device of `client`.
    pub fn upload(matrix: &QuantMatrix, client: &Client, device: &CubeDevice) -> Self {
        let form = match Levels::of(matrix) {
            Some(levels) => Form::Levels {
                words: client.create_from_slice(u32::as_bytes(&levels.words)),
                word_count: levels.words.len(),
                groups: client.create_from_slice(f32::as_bytes(&levels.groups)),
                group_count: levels.groups.len(),
                bits: levels.bits,
                group: levels.group,
                zero: levels.zero,
            },
            None => Form::Dense { values: client.create_from_slice(f32::as_bytes(&matrix.dequantize())) },
        };
        Self {
            client: client.clone(),
            device: device.clone(),
            rows: matrix.rows(),
            cols: matrix.cols(),
            form,
        }
    }

    pub fn device(&self) -> &CubeDevice {
        &self.device
    }

    /// The whole matrix `[rows, cols]` in f32: a fresh buffer for levels, the resident one for
    /// float formats.
    pub fn dequantized(&self) -> CubeTensor {
        let shape = Shape::new([self.rows, self.cols]);
        let handle = match &self.form {
            Form::Dense { values } => values.clone(),
            Form::Levels { words, word_count, groups, group_count, bits, group, zero } => {
                let out = self.client.empty(4 * self.rows * self.cols);
                let cube_dim = CubeDim::new(&self.client, *word_count);
                let count = cubecl::calculate_cube_count_elemwise(&self.client, *word_count, cube_dim);
                // SAFETY: the lengths are those of the buffers just made from `Levels`, whose
                // words cover exactly `rows * cols` values in groups of `group`.
                unsafe {
                    kernels::dequantize_levels::launch(
                        &self.client,
                        count,
                        cube_dim,
                        BufferArg::from_raw_parts(words.clone(), *word_count),
                        BufferArg::from_raw_parts(groups.clone(), *group_count),
                        BufferArg::from_raw_parts(out.clone(), self.rows * self.cols),
                        *zero,
                        *bits,
                        *group,
                    );
                }
                out
            }
        };
        CubeTensor::new_contiguous(self.client.clone(), self.device.clone(), shape, handle, DType::F32)
    }

    /// `x·Wᵀ` over the last dimension of `x` (f32, `cols` wide).
    pub fn forward(&self, x: CubeTensor) -> CubeTensor {
        let (x, tokens, shape) = as_rows(x, self.cols, self.rows);
        if let (true, Form::Levels { words, word_count, groups, group_count, bits, group, zero }) =
            (tokens <= FEW_TOKENS, &self.form)
        {
            let outputs = tokens * self.rows;
            let y = self.client.empty(4 * outputs);
            let cube_dim = CubeDim::new(&self.client, outputs);
            let count = cubecl::calculate_cube_count_elemwise(&self.client, outputs, cube_dim);
            // SAFETY: `x` is contiguous with `tokens * cols` values; the level buffers are this
            // weight's own, and `y` holds `tokens * rows` values.
            unsafe {
                kernels::levels_matmul::launch(
                    &self.client,
                    count,
                    cube_dim,
                    BufferArg::from_raw_parts(x.handle.clone(), tokens * self.cols),
                    BufferArg::from_raw_parts(words.clone(), *word_count),
                    BufferArg::from_raw_parts(groups.clone(), *group_count),
                    BufferArg::from_raw_parts(y.clone(), outputs),
                    self.rows,
                    self.cols,
                    *zero,
                    *bits,
                    *group,
                );
            }
            return CubeTensor::new_contiguous(
                self.client.clone(),
                self.device.clone(),
                shape,
                y,
                DType::F32,
            );
        }
        let w_t = CubeBackend::float_swap_dims(self.dequantized(), 0, 1);
        CubeBackend::float_reshape(CubeBackend::float_matmul(x, w_t), shape)
    }

    /// `dy·W` over the last dimension of `dy` (`rows` wide): the gradient with respect to the
    /// input of [`forward`](Self::forward).
    pub fn input_grad(&self, dy: CubeTensor) -> CubeTensor {
        let (dy, _, shape) = as_rows(dy, self.rows, self.cols);
        CubeBackend::float_reshape(CubeBackend::float_matmul(dy, self.dequantized()), shape)
    }
}

/// `x` (last dimension `width`) as a contiguous `[tokens, width]` matrix, its token count, and
/// the shape of a result whose last dimension is `out_width`.
fn as_rows(x: CubeTensor, width: usize, out_width: usize) -> (CubeTensor, usize, Shape) {
    let x = into_contiguous(x);
    let mut shape = x.shape();
    let last = shape.num_dims() - 1;
    let tokens = shape.num_elements() / width;
    shape[last] = out_width;
    (CubeBackend::float_reshape(x, Shape::new([tokens, width])), tokens, shape)
}
