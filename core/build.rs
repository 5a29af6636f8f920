//! Two jobs. `gpu_kernels`: whether our GPU kernels and device code are in this build. Natively that is the
//! `gpu` feature (burn is built with wgpu there); on wasm32 it also takes `webgpu`, which brings
//! burn's WebGPU backend into the bundle. And with `flower`, Flower's protobuf messages.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(gpu_kernels)");
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|arch| arch == "wasm32");
    if feature("GPU") && (!wasm || feature("WEBGPU")) {
        println!("cargo::rustc-cfg=gpu_kernels");
    }
    #[cfg(feature = "flower")]
    flower_protos();
}

/// With `flower`: Flower's Fleet API messages (proto/flower.proto) compiled to Rust, into OUT_DIR.
#[cfg(feature = "flower")]
fn flower_protos() {
    let proto = "proto/flower.proto";
    println!("cargo::rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"]).unwrap_or_else(|e| panic!("{proto}: {e}"));
    prost_build::Config::new()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating Rust from {proto}: {e}"));
}
