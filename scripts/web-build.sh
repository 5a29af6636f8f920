#!/usr/bin/env bash
# Builds the browser package: adaptkit-wasm for wasm32 (release, SIMD128) and its JS glue with
# wasm-bindgen (--target web) into web/pkg. Prints the wasm file's path and its gzip size.
# wasm-bindgen-cli comes from scripts/install-web-tools.sh, pinned to the crate's version.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}
bindgen=${WASM_BINDGEN:-$HOME/.cache/adaptkit/tools/wasm-bindgen/bin/wasm-bindgen}
cargo build --release -p adaptkit-wasm --target wasm32-unknown-unknown --lib >&2
"$bindgen" --target web --remove-name-section --remove-producers-section --out-dir web/pkg "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/adaptkit_wasm.wasm"
wasm=web/pkg/adaptkit_wasm_bg.wasm
echo "web: $wasm $(stat -c %s "$wasm") bytes, $(gzip -9 -c "$wasm" | wc -c) gzipped" >&2
echo "$wasm"
