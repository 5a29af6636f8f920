//! `gpu_kernels`: whether our GPU kernels and device code are in this build. Natively that is the
//! `gpu` feature (burn is built with wgpu there); on wasm32 it also takes `webgpu`, which brings
//! burn's WebGPU backend into the bundle.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(gpu_kernels)");
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|arch| arch == "wasm32");
    if feature("GPU") && (!wasm || feature("WEBGPU")) {
        println!("cargo::rustc-cfg=gpu_kernels");
    }
}
