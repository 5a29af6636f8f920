#!/usr/bin/env bash
# Builds the bindings library (bindings/ffi, host target) and generates its Kotlin and Swift
# sources with uniffi-bindgen (tools/uniffi-bindgen, pinned to the same uniffi).
#   scripts/ffi-bindings.sh OUT_DIR   -> OUT_DIR/kotlin/dev/adaptkit/ffi/adaptkit.kt,
#                                        OUT_DIR/swift/{AdaptkitFFI.swift,adaptkit_ffiFFI.h,…}
# Prints the path of the built library on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/ffi-bindings.sh OUT_DIR}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}
# With the whole workspace, so that burn is built with the features every other build uses
# (`-p adaptkit-ffi` alone would unify fewer and rebuild burn for ~15 min).
cargo build --release --workspace --lib >&2
cargo build --release --manifest-path tools/uniffi-bindgen/Cargo.toml >&2
lib="$CARGO_TARGET_DIR/release/libadaptkit_ffi.so"
[ "$(uname)" = Darwin ] && lib="$CARGO_TARGET_DIR/release/libadaptkit_ffi.dylib"
rm -rf "$out/kotlin" "$out/swift"
for language in kotlin swift; do
  "$CARGO_TARGET_DIR/release/uniffi-bindgen" generate --library "$lib" --language "$language" \
    --out-dir "$out/$language" --no-format >&2
done
echo "$lib"
