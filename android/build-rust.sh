#!/usr/bin/env bash
# Builds libadaptkit_ffi.so for Android's ABIs with cargo-ndk (needs ANDROID_NDK_HOME and
# `cargo install cargo-ndk`) and generates the Kotlin bindings from the host library.
#   android/build-rust.sh BUILD_DIR -> BUILD_DIR/generated/{jniLibs/<abi>/libadaptkit_ffi.so,uniffi/…}
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: android/build-rust.sh BUILD_DIR}
rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android >/dev/null
cargo ndk -t arm64-v8a -t armeabi-v7a -t x86_64 -o "$build/generated/jniLibs" \
  build --release -p adaptkit-ffi
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
scripts/ffi-bindings.sh "$gen" >/dev/null
rm -rf "$build/generated/uniffi"
mkdir -p "$build/generated/uniffi"
cp -r "$gen/kotlin/." "$build/generated/uniffi/"
