#!/usr/bin/env bash
# The quantized kernels' tests (every format's f32 and integer kernels against the scalar
# reference, property tests included) on the instruction sets this machine does not run
# natively: aarch64 NEON, with and without `sdot`, under qemu-user; wasm32 SIMD128 under Node's
# WASI (V8, the engine of Chromium). The core alone, without std (no burn): a minute's build, in
# its own folder of the shared target directory (its flags differ from the portability checks').
# Tools: scripts/install-test-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}/cross"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# qemu's default CPU has the dot-product extension; built for it, the no-std detection picks the
# `sdot` kernel, and the tests add the kernel without it.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+dotprod"
export CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $PWD/scripts/wasi-run.mjs"
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C target-feature=+simd128"
for target in aarch64-unknown-linux-gnu wasm32-wasip1; do
  echo "== the kernels on $target"
  cargo test --release -q -p adaptkit --no-default-features --target "$target" --lib -- quant::
done
