#!/usr/bin/env bash
# Every test suite: unit, property and tiny-model tests; the runtime API's user journey; the
# real-model golden tests on SmolLM2 and Gemma 3 (the models are fetched and verified first, and
# they fail rather than skip here); the CLI; adaptkit nodes in a Flower federation; the sync server on PostgreSQL and
# S3 and its OpenAPI document; the
# Kotlin face on the JVM and the Swift bindings' checks; the browser package and demo in
# headless Chromium; and the
# portability checks (the runtime and its journey test for wasm32, aarch64, and the no_std core
# for a target without std), with the quantized kernels' tests run on aarch64 (qemu) and wasm32
# (Node's WASI).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"

scripts/install-test-tools.sh
ADAPTKIT_TEST_MODEL=$(scripts/fetch-model.sh)
# The second family's golden tests (Gemma 3 270M).
ADAPTKIT_TEST_GEMMA=$(scripts/fetch-model.sh gemma3-270m)
export ADAPTKIT_TEST_MODEL ADAPTKIT_TEST_GEMMA ADAPTKIT_REQUIRE_MODEL=1
# The GPU parity tests run on lavapipe (installed above) and fail rather than skip here.
export ADAPTKIT_REQUIRE_GPU=1
# The Flower tests (protocol judged by flwr, a federation of adaptkit nodes on the real model,
# heartbeats and a restarting SuperLink) use the pinned flwr and fail rather than skip here.
ADAPTKIT_FLOWER_VENV=$(scripts/flower-venv.sh)
export ADAPTKIT_FLOWER_VENV ADAPTKIT_REQUIRE_FLOWER=1
# Mesa wants a writable runtime directory, which containers often lack.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

# One profile (release) for tests and the demo, so every dependency is compiled once.
cargo test --release --workspace

echo "== sync server: PostgreSQL with two processes, S3 (moto), the OpenAPI document (schemathesis)"
scripts/sync-test.sh

echo "== Kotlin on the JVM: the bindings, dev.adaptkit, the README quick-start (real model)"
scripts/jvm-test.sh "$ADAPTKIT_TEST_MODEL"
echo "== Swift: committed bindings fresh, C header, exported symbols"
scripts/swift-check.sh

echo "== browser: the wasm package in headless Chromium, its types, the demo page (real model)"
scripts/browser-test.sh "$ADAPTKIT_TEST_MODEL"

echo "== portability: wasm32 (with the user-journey test), aarch64, no_std core on thumbv7em, the bindings on iOS and Android"
cargo check --release -p adaptkit --target wasm32-unknown-unknown --lib --test runtime
cargo check --release -p adaptkit --target aarch64-unknown-linux-gnu
cargo check --release -p adaptkit --no-default-features --target thumbv7em-none-eabihf
echo "== the quantized kernels on aarch64 NEON (qemu) and wasm32 SIMD128 (Node's WASI)"
scripts/test-kernels-cross.sh
# The bindings for phones: an iPhone and an Android arm64 device (linking needs their SDKs).
cargo check --release -p adaptkit-ffi --target aarch64-apple-ios
cargo check --release -p adaptkit-ffi --target aarch64-linux-android
