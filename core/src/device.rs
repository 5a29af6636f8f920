//! Where a model runs: the CPU (burn-flex with our SIMD kernels) or a GPU through burn-wgpu
//! (Vulkan, Metal or DX12; never OpenGL, where wgpu's compute support is partial).

use core::fmt;
use core::str::FromStr;

use burn::tensor::Device;

use crate::error::Error;

/// What the caller asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// A GPU, software ones (Mesa's lavapipe) included; an error when there is none.
    Gpu,
    /// A hardware GPU when there is one, else the CPU, with the reason kept.
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "auto" => Ok(Self::Auto),
            other => Err(Error::InvalidArgument(format!("device '{other}' (expected cpu, gpu or auto)"))),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::Auto => "auto",
        })
    }
}

/// The device a model was put on, and why.
#[derive(Clone, Debug)]
pub struct ComputeDevice {
    pub device: Device,
    /// `cpu`, or the adapter's name with its graphics API (e.g. `Vulkan: llvmpipe (LLVM 15.0.7,
    /// 256 bits)`).
    pub name: String,
    pub gpu: bool,
    /// Why `auto` chose the CPU, when it did.
    pub fallback: Option<String>,
}

impl ComputeDevice {
    pub fn cpu() -> Self {
        Self { device: Device::flex(), name: "cpu".into(), gpu: false, fallback: None }
    }

    /// The device for `choice`.
    pub fn select(choice: DeviceChoice) -> Result<Self, Error> {
        match choice {
            DeviceChoice::Cpu => Ok(Self::cpu()),
            DeviceChoice::Gpu => open_gpu().map(|(gpu, _)| gpu),
            DeviceChoice::Auto => Ok(match open_gpu() {
                Ok((gpu, true)) => gpu,
                Ok((gpu, false)) => Self {
                    fallback: Some(format!(
                        "only a software GPU was found ({}); the CPU path is faster",
                        gpu.name
                    )),
                    ..Self::cpu()
                },
                Err(e) => Self { fallback: Some(e.to_string()), ..Self::cpu() },
            }),
        }
    }
}

/// The first graphics API of this platform with an adapter, and whether that adapter is a
/// hardware GPU.
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
fn open_gpu() -> Result<(ComputeDevice, bool), Error> {
    use burn::tensor::wgpu::WgpuInitError;
    use cubecl::device::{WgpuBackend, WgpuDevice, WgpuDeviceKind};

    let mut tried = Vec::new();
    for (api, name) in
        [(WgpuBackend::Vulkan, "Vulkan"), (WgpuBackend::Metal, "Metal"), (WgpuBackend::Dx12, "DX12")]
    {
        let device = match Device::wgpu_options().graphics_api(api).init() {
            Ok(device) => device,
            // wgpu's runtime is one per process and selector: an earlier engine opened this
            // one, and a device naming the same selector shares it.
            Err(WgpuInitError::Registration { .. }) => {
                Device::new(WgpuDevice::new(WgpuDeviceKind::DefaultDevice).on(api))
            }
            Err(e) => {
                tried.push(format!("{name}: {e}"));
                continue;
            }
        };
        let identity = device.identity();
        let adapter = identity.as_ref().map_or_else(|| "unnamed adapter".to_string(), |i| i.name.clone());
        // A software rasterizer reports no physical card.
        let hardware = identity.is_some_and(|i| i.physical.is_some());
        let gpu = ComputeDevice { device, name: format!("{name}: {adapter}"), gpu: true, fallback: None };
        return Ok((gpu, hardware));
    }
    Err(Error::Device(format!("no GPU adapter found ({})", tried.join("; "))))
}

#[cfg(not(all(feature = "gpu", not(target_arch = "wasm32"))))]
fn open_gpu() -> Result<(ComputeDevice, bool), Error> {
    Err(Error::Device("this build has no GPU support (the `gpu` feature is off)".into()))
}

/// Whether tensors on `device` live in host memory (Flex), where the fused host kernels apply.
pub fn is_host(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

std::thread_local! {
    /// Set while this thread runs [`guard`]ed work on a GPU.
    static GUARDED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Runs `work`, turning a panic into [`Error::Device`] when the model is on a GPU: the GPU
/// runtime reports a lost device or exhausted memory by panicking inside an op, and a caller
/// (an app, a training run with checkpoints) must get an error it can act on instead. On the
/// CPU a panic is a bug and is left to unwind.
pub fn guard<R>(compute: &ComputeDevice, work: impl FnOnce() -> Result<R, Error>) -> Result<R, Error> {
    if !compute.gpu {
        return work();
    }
    let outer = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    GUARDED.with(|g| g.set(outer));
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("the GPU runtime failed");
        Err(Error::Device(format!("{} failed: {message}", compute.name)))
    })
}

/// Whether a panic on this thread now would come back from [`guard`] as an error, so that an
/// application's panic hook can leave reporting it to the error (the CLI does).
pub fn panic_becomes_error() -> bool {
    GUARDED.with(core::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_bad_ones_are_named() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("'tpu'") && err.contains("cpu, gpu or auto"), "{err}");
    }

    #[test]
    fn a_gpu_failure_becomes_a_device_error() {
        let gpu = ComputeDevice { name: "Vulkan: test".into(), gpu: true, ..ComputeDevice::cpu() };
        let err = guard::<()>(&gpu, || {
            assert!(panic_becomes_error());
            panic!("Out of memory: 512 MiB requested")
        })
        .unwrap_err();
        assert!(!panic_becomes_error());
        assert!(
            matches!(&err, Error::Device(m) if m.contains("Out of memory") && m.contains("Vulkan: test")),
            "{err}"
        );
        assert_eq!(guard(&gpu, || Ok(7)).unwrap(), 7);
    }
}
