#!/usr/bin/env bash
# Builds the browser package: adaptkit-wasm for wasm32 (release, SIMD128) and its JS glue with
# wasm-bindgen (--target web), twice: web/pkg (the CPU path) and web/pkg-webgpu (with WebGPU).
# Prints both sizes (gzip too) and then the CPU bundle's wasm path.
# wasm-bindgen-cli comes from scripts/install-web-tools.sh, pinned to the crate's version.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}
bindgen=${WASM_BINDGEN:-$HOME/.cache/adaptkit/tools/wasm-bindgen/bin/wasm-bindgen}
# Two bundles of one API: the CPU path alone (web/pkg) and with WebGPU (web/pkg-webgpu); the
# worker loads the second only when it will use a GPU.
bundle() {
  local out=$1
  shift
  cargo build --release -p adaptkit-wasm --target wasm32-unknown-unknown --lib "$@" >&2
  "$bindgen" --target web --remove-name-section --remove-producers-section --out-dir "$out" \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/adaptkit_wasm.wasm"
  echo "web: $out/adaptkit_wasm_bg.wasm $(stat -c %s "$out/adaptkit_wasm_bg.wasm") bytes, $(gzip -9 -c "$out/adaptkit_wasm_bg.wasm" | wc -c) gzipped" >&2
}
bundle web/pkg-webgpu --features webgpu
bundle web/pkg
echo web/pkg/adaptkit_wasm_bg.wasm
