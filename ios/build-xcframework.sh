#!/usr/bin/env bash
# Builds ios/AdaptkitFFI.xcframework: the static library for iPhones (aarch64-apple-ios) and the
# simulators (aarch64-apple-ios-sim + x86_64-apple-ios, one fat library), with the committed C
# header and module map. Needs macOS with Xcode; Metal compute comes through burn-wgpu.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}
targets="aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios"
rustup target add $targets >/dev/null
for t in $targets; do cargo build --release -p adaptkit-ffi --target "$t"; done
lib=libadaptkit_ffi.a
sim="$CARGO_TARGET_DIR/ios-sim-universal"
mkdir -p "$sim"
lipo -create "$CARGO_TARGET_DIR/aarch64-apple-ios-sim/release/$lib" \
  "$CARGO_TARGET_DIR/x86_64-apple-ios/release/$lib" -output "$sim/$lib"
rm -rf ios/AdaptkitFFI.xcframework
xcodebuild -create-xcframework \
  -library "$CARGO_TARGET_DIR/aarch64-apple-ios/release/$lib" -headers ios/Sources/adaptkit_ffiFFI/include \
  -library "$sim/$lib" -headers ios/Sources/adaptkit_ffiFFI/include \
  -output ios/AdaptkitFFI.xcframework
echo "ios/AdaptkitFFI.xcframework"
