//! A frozen weight on a GPU: its level form (`quant::Levels`) in two device buffers, or the f32
//! values of a float-format weight, uploaded once from the host blocks. Products with few tokens
//! (decode) read the levels in-kernel; products with many tokens (prefill, training) decode the
//! matrix into a transient f32 buffer for burn's tiled matmul and free it straight after, as
//! llama.cpp's GPU backends do: no f32 copy of the base is ever kept. A matrix whose f32 form
//! would not fit one storage binding (wgpu's default limit is 128 MiB: Gemma's tied 262k x 640
//! embedding is 671 MB) is kept as bands of rows, each its own weight, their outputs side by side.

use burn::backend::ops::FloatTensorOps;
use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape, Slice};
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

/// The most bytes of one band's f32 form: wgpu's default `max_storage_buffer_binding_size`,
/// which lavapipe and most phones keep.
const BAND_BYTES: usize = 128 << 20;

/// A frozen weight on a device: one band of rows, or several where one would not fit a binding.
pub struct DeviceMatrix {
    bands: Vec<Band>,
    cols: usize,
}

/// Rows `first..first + rows` of a weight, on the device.
struct Band {
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
    /// Uploads `matrix` to the device of `client`, in bands of rows where it is large.
    pub fn upload(matrix: &QuantMatrix, client: &Client, device: &CubeDevice) -> Self {
        let (rows, cols) = (matrix.rows(), matrix.cols());
        let band_rows = (BAND_BYTES / (4 * cols.max(1))).max(1);
        if rows <= band_rows {
            return Self { bands: vec![Band::upload(matrix, client, device)], cols };
        }
        let row_bytes = matrix.data().len() / rows;
        let bands = (0..rows)
            .step_by(band_rows)
            .map(|first| {
                let n = band_rows.min(rows - first);
                let bytes =
                    matrix.data().slice(first * row_bytes..(first + n) * row_bytes).expect("rows in range");
                let band = QuantMatrix::new(matrix.ty(), n, cols, bytes).expect("a band of a valid matrix");
                Band::upload(&band, client, device)
            })
            .collect();
        Self { bands, cols }
    }

    pub fn device(&self) -> &CubeDevice {
        &self.bands[0].device
    }

    /// `x·Wᵀ` over the last dimension of `x` (f32, `cols` wide).
    pub fn forward(&self, x: CubeTensor) -> CubeTensor {
        if let [band] = &self.bands[..] {
            return band.forward(x);
        }
        let last = x.shape().num_dims() - 1;
        CubeBackend::float_cat(self.bands.iter().map(|band| band.forward(x.clone())).collect(), last)
    }

    /// `dy·W` over the last dimension of `dy` (`rows` wide): the gradient with respect to the
    /// input of [`forward`](Self::forward), the sum of the bands' over their columns of `dy`.
    pub fn input_grad(&self, dy: CubeTensor) -> CubeTensor {
        if let [band] = &self.bands[..] {
            return band.input_grad(dy);
        }
        let shape = dy.shape();
        let last = shape.num_dims() - 1;
        let mut first = 0;
        let mut sum: Option<CubeTensor> = None;
        for band in &self.bands {
            let slices: Vec<Slice> =
                (0..=last)
                    .map(|d| {
                        if d == last {
                            Slice::from(first..first + band.rows)
                        } else {
                            Slice::from(0..shape[d])
                        }
                    })
                    .collect();
            let part = band.input_grad(CubeBackend::float_slice(dy.clone(), &slices));
            sum = Some(match sum {
                Some(total) => CubeBackend::float_add(total, part),
                None => part,
            });
            first += band.rows;
        }
        debug_assert_eq!(self.cols, sum.as_ref().map_or(self.cols, |s| s.shape()[last]));
        sum.expect("a banded matrix has bands")
    }
}

impl Band {
    fn upload(matrix: &QuantMatrix, client: &Client, device: &CubeDevice) -> Self {
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

    /// The whole band `[rows, cols]` in f32: a fresh buffer for levels, the resident one for
    /// float formats.
    fn dequantized(&self) -> CubeTensor {
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

    fn forward(&self, x: CubeTensor) -> CubeTensor {
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

    fn input_grad(&self, dy: CubeTensor) -> CubeTensor {
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
