//! GPU compute through burn-wgpu (Vulkan, Metal, DX12): the frozen quantized base in its level
//! form on the device, with our own CubeCL kernels for its products.

mod kernels;
mod weight;

pub use weight::DeviceMatrix;
