//! Where a model runs: the CPU (burn-flex with our SIMD kernels) or a GPU through burn-wgpu
//! (Vulkan, Metal or DX12; never OpenGL, where wgpu's compute support is partial), and how a
//! GPU's failures (a lost device, exhausted memory) become errors.

use core::fmt;
use core::str::FromStr;
use std::sync::{Arc, Mutex};

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
    /// Where the GPU runtime's failures outside a read are recorded (GPUs only).
    pub failures: Option<Arc<GpuFailures>>,
}

/// Failures the GPU runtime reports outside a read (wgpu's "uncaptured" errors: a buffer that
/// could not be allocated, a validation error). The runtime's own handler panics on them, which
/// no caller can catch under `panic = "abort"` (wasm) or on another thread; the handler this
/// module installs records them here instead, and [`guard`] returns the first as an error when
/// the call ends (it wins over the call's result, which may not be trustworthy).
#[derive(Debug, Default)]
pub struct GpuFailures(Mutex<Option<String>>);

impl GpuFailures {
    /// Keeps the first failure until it is taken.
    pub fn record(&self, message: String) {
        let mut slot = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.get_or_insert(message);
    }

    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

impl ComputeDevice {
    pub fn cpu() -> Self {
        Self { device: Device::flex(), name: "cpu".into(), gpu: false, fallback: None, failures: None }
    }

    /// The device for `choice`. In the browser a GPU can only be opened asynchronously: use
    /// [`select_async`](Self::select_async) there (this returns the CPU for `auto`, saying why).
    pub fn select(choice: DeviceChoice) -> Result<Self, Error> {
        Self::choose(choice, open_gpu)
    }

    /// [`select`](Self::select), opening the GPU without blocking: the only way in the browser,
    /// where WebGPU hands out its adapter and device through promises.
    pub async fn select_async(choice: DeviceChoice) -> Result<Self, Error> {
        if choice == DeviceChoice::Cpu {
            return Ok(Self::cpu());
        }
        let opened = open_gpu_async().await;
        Self::choose(choice, || opened)
    }

    fn choose(
        choice: DeviceChoice,
        open: impl FnOnce() -> Result<(ComputeDevice, bool), Error>,
    ) -> Result<Self, Error> {
        match choice {
            DeviceChoice::Cpu => Ok(Self::cpu()),
            DeviceChoice::Gpu => open().map(|(gpu, _)| gpu),
            DeviceChoice::Auto => Ok(match open() {
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

/// Natively a GPU opens synchronously (and a build without GPU code has none to open): the
/// async form only has to exist.
#[cfg(not(all(gpu_kernels, target_arch = "wasm32")))]
async fn open_gpu_async() -> Result<(ComputeDevice, bool), Error> {
    open_gpu()
}

/// The browser's WebGPU adapter (`navigator.gpu`), opened through promises, and whether it is
/// a hardware GPU (not a fallback adapter such as Chromium's SwiftShader, which reports itself
/// as a CPU).
#[cfg(all(gpu_kernels, target_arch = "wasm32"))]
async fn open_gpu_async() -> Result<(ComputeDevice, bool), Error> {
    use burn::tensor::wgpu::{wgpu, WgpuInitError};

    // A worker holds one WebGPU runtime; a second model in it shares it (and its failure record).
    static OPENED: Mutex<Option<(ComputeDevice, bool)>> = Mutex::new(None);
    if let Some(opened) = OPENED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone() {
        return Ok(opened);
    }
    let (device, setup) = Device::wgpu_options().init_with_setup_async().await.map_err(|e| match e {
        WgpuInitError::Registration { .. } => {
            Error::Device("WebGPU was opened by something else in this worker".into())
        }
        other => Error::Device(format!("no WebGPU adapter ({other})")),
    })?;
    let info = setup.adapter.get_info();
    let hardware = info.device_type != wgpu::DeviceType::Cpu;
    // Browsers may keep the adapter's description to themselves.
    let adapter = match (info.name.is_empty(), hardware) {
        (false, _) => info.name.clone(),
        (true, true) => "unnamed adapter".into(),
        (true, false) => "fallback (software) adapter".into(),
    };
    let failures = Arc::new(GpuFailures::default());
    let record = failures.clone();
    setup.device.on_uncaptured_error(Arc::new(move |e| record.record(e.to_string())));
    let gpu = ComputeDevice {
        device,
        name: format!("WebGPU: {adapter}"),
        gpu: true,
        fallback: None,
        failures: Some(failures),
    };
    *OPENED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((gpu.clone(), hardware));
    Ok((gpu, hardware))
}

/// The first graphics API of this platform with an adapter, and whether that adapter is a
/// hardware GPU.
#[cfg(all(gpu_kernels, not(target_arch = "wasm32")))]
fn open_gpu() -> Result<(ComputeDevice, bool), Error> {
    use burn::tensor::wgpu::WgpuInitError;
    use cubecl::device::{WgpuBackend, WgpuDevice, WgpuDeviceKind};

    // One record per graphics API: wgpu's runtime is one per process and selector.
    static FAILURES: Mutex<Vec<(&str, Arc<GpuFailures>)>> = Mutex::new(Vec::new());
    let failures_of = |name: &'static str| {
        let mut all = FAILURES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match all.iter().find(|(n, _)| *n == name) {
            Some((_, f)) => f.clone(),
            None => {
                let f = Arc::new(GpuFailures::default());
                all.push((name, f.clone()));
                f
            }
        }
    };
    let mut tried = Vec::new();
    for (api, name) in
        [(WgpuBackend::Vulkan, "Vulkan"), (WgpuBackend::Metal, "Metal"), (WgpuBackend::Dx12, "DX12")]
    {
        let failures = failures_of(name);
        let device = match Device::wgpu_options().graphics_api(api).init_with_setup() {
            Ok((device, setup)) => {
                let record = failures.clone();
                setup.device.on_uncaptured_error(Arc::new(move |e| record.record(e.to_string())));
                device
            }
            // An earlier engine opened this runtime (and installed the handler); a device
            // naming the same selector shares it.
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
        let name = format!("{name}: {adapter}");
        let gpu = ComputeDevice { device, name, gpu: true, fallback: None, failures: Some(failures) };
        return Ok((gpu, hardware));
    }
    Err(Error::Device(format!("no GPU adapter found ({})", tried.join("; "))))
}

#[cfg(all(gpu_kernels, target_arch = "wasm32"))]
fn open_gpu() -> Result<(ComputeDevice, bool), Error> {
    Err(Error::Device(
        "in the browser WebGPU opens asynchronously: open the model with the async call".into(),
    ))
}

#[cfg(not(gpu_kernels))]
fn open_gpu() -> Result<(ComputeDevice, bool), Error> {
    Err(Error::Device(
        "this build has no GPU support (the `gpu` feature is off; in the browser, `webgpu`)".into(),
    ))
}

/// Frees what burn's autodiff keeps of forward passes that will never see a backward pass
/// (evaluation, generation on a trainable model). burn 0.22 registers every operation on an
/// autodiff device, untracked ones too, and drops the registrations only during a backward
/// pass: about 1 KB each, some 3,000 per forward pass of a 30-layer model, so memory grew by
/// ~4 MiB per evaluated window or generated token. The backward of a one-value tensor sweeps
/// every registration no live tensor refers to. Nothing to do on other devices.
pub fn release_untracked_graphs(device: &Device) {
    if device.is_autodiff() {
        let _ = burn::tensor::Tensor::<1>::zeros([1], device).require_grad().sum().backward();
    }
}

/// Whether tensors on `device` live in host memory (Flex), where the fused host kernels apply.
pub fn is_host(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

std::thread_local! {
    /// Set while this thread runs [`guard`]ed work on a GPU.
    static GUARDED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Runs `work` on a GPU so that the GPU's failures come back as [`Error::Device`] naming the
/// device: a read-back that failed (the runtime records a failed launch or a lost device on
/// the buffers and reports it when they are read; our reads are all fallible), and a failure
/// the runtime recorded outside a read ([`GpuFailures`]). On native targets a panic raised
/// inside the GPU runtime's own code (a blocking call it cannot fail otherwise) becomes one
/// too; any other panic is a bug and keeps unwinding. On the CPU, `work` runs as it is.
pub fn guard<R>(compute: &ComputeDevice, work: impl FnOnce() -> Result<R, Error>) -> Result<R, Error> {
    if !compute.gpu {
        return work();
    }
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_runtime_panics(work);
    GUARDED.with(|g| g.set(outer));
    let result = result.map_err(|message| compute.failure(&message)).and_then(|r| r);
    compute.settle(result)
}

/// [`guard`] for async work (in the browser, where GPU read-backs are awaited): a failure the
/// GPU runtime recorded while it ran wins over its result. (No panic can be caught there: wasm
/// aborts on panics.)
pub async fn guard_async<R>(
    compute: &ComputeDevice,
    work: impl core::future::Future<Output = Result<R, Error>>,
) -> Result<R, Error> {
    let result = work.await;
    if !compute.gpu {
        return result;
    }
    compute.settle(result)
}

impl ComputeDevice {
    fn failure(&self, message: &str) -> Error {
        Error::Device(format!("{} failed: {message}", self.name))
    }

    /// The result of GPU work: a failure recorded meanwhile wins, a failed read names the device.
    fn settle<R>(&self, result: Result<R, Error>) -> Result<R, Error> {
        if let Some(message) = self.failures.as_ref().and_then(|f| f.take()) {
            return Err(self.failure(&message));
        }
        result.map_err(|e| match e {
            Error::Backend(message) => self.failure(&message),
            other => other,
        })
    }
}

/// Drives `work` to its end without an executor: natively by blocking on it; in the browser
/// only when it never has to wait, which holds for everything on the CPU (its reads are
/// immediate) and never for a GPU read-back, which must be awaited there. The runtime's
/// blocking calls are their `_async` forms driven by this.
pub fn wait<R>(work: impl core::future::Future<Output = Result<R, Error>>) -> Result<R, Error> {
    burn::tensor::try_read_sync(work).unwrap_or_else(|| {
        Err(Error::Device("a GPU read-back cannot block in the browser: use the call's async form".into()))
    })
}

/// `work`, with a panic raised in the GPU runtime's code turned into its message; any other
/// panic resumes. (wasm aborts on panics: nothing to catch there.)
#[cfg(not(target_arch = "wasm32"))]
fn catch_runtime_panics<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    let before = runtime_panics::count();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|payload| {
        if runtime_panics::count() == before {
            std::panic::resume_unwind(payload);
        }
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("the GPU runtime failed");
        message.to_string()
    })
}

#[cfg(target_arch = "wasm32")]
fn catch_runtime_panics<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    Ok(work())
}

/// Counts panics whose location is in the GPU runtime's crates (cubecl, wgpu, naga,
/// burn-cubecl), with a panic hook installed on first use that then calls the hook that was
/// there before. A panic the runtime raises on its own worker and re-raises on the caller's
/// thread is counted when it is first raised.
#[cfg(not(target_arch = "wasm32"))]
mod runtime_panics {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Once;

    static COUNT: AtomicUsize = AtomicUsize::new(0);

    pub fn count() -> usize {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if info.location().is_some_and(|l| in_gpu_runtime(l.file())) {
                    COUNT.fetch_add(1, Ordering::SeqCst);
                }
                previous(info);
            }));
        });
        COUNT.load(Ordering::SeqCst)
    }

    pub(super) fn in_gpu_runtime(file: &str) -> bool {
        ["cubecl", "wgpu", "naga", "burn-cubecl", "burn_cubecl"].iter().any(|name| file.contains(name))
    }
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

    fn test_gpu() -> ComputeDevice {
        ComputeDevice {
            name: "Vulkan: test".into(),
            gpu: true,
            failures: Some(Arc::default()),
            ..ComputeDevice::cpu()
        }
    }

    #[test]
    fn a_recorded_gpu_failure_becomes_a_device_error_and_wins_over_the_result() {
        let gpu = test_gpu();
        let err = guard(&gpu, || {
            assert!(panic_becomes_error());
            gpu.failures.as_ref().unwrap().record("Out of memory: 512 MiB requested".into());
            Ok(7)
        })
        .unwrap_err();
        assert!(!panic_becomes_error());
        assert!(
            matches!(&err, Error::Device(m) if m.contains("Out of memory") && m.contains("Vulkan: test")),
            "{err}"
        );
        // Taken once: the device works on.
        assert_eq!(guard(&gpu, || Ok(7)).unwrap(), 7);
        // A failed read-back on the GPU is a device error too.
        let err =
            guard::<()>(&gpu, || Err(Error::Backend("reading a tensor back failed".into()))).unwrap_err();
        assert!(matches!(&err, Error::Device(m) if m.contains("reading")), "{err}");
    }

    #[test]
    fn a_bug_is_not_turned_into_a_gpu_error() {
        let gpu = test_gpu();
        let caught = std::panic::catch_unwind(|| guard::<()>(&gpu, || panic!("index out of bounds: a bug")));
        assert!(
            caught.is_err(),
            "a panic outside the GPU runtime must keep unwinding, not become {caught:?}"
        );
        assert!(runtime_panics::in_gpu_runtime(
            "/root/.cargo/registry/src/index.crates.io-1949/cubecl-runtime-0.11.3/src/client.rs"
        ));
        assert!(!runtime_panics::in_gpu_runtime("core/src/gpu/kernels.rs"));
    }
}
