#!/usr/bin/env bash
# Installs what the test suites need beyond the Rust toolchain: the cross targets that the
# portability checks compile for (a browser, a phone's CPU, and a microcontroller without std)
# and that the kernel tests run on (aarch64 under qemu-user, wasm32 under Node's WASI), and
# Mesa's software Vulkan driver (lavapipe) so that the GPU path runs on any machine.
# Idempotent.
set -euo pipefail
targets="wasm32-unknown-unknown wasm32-wasip1 aarch64-unknown-linux-gnu thumbv7em-none-eabihf aarch64-apple-ios
  aarch64-linux-android"
installed=$(rustup target list --installed)
for t in $targets; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

# Debian packages: lavapipe (the Vulkan ICD `lvp_icd` and the loader; without them wgpu has no
# Vulkan adapter and the GPU tests fail, and they are required in CI, see scripts/test.sh); for
# the Kotlin suite (scripts/jvm-test.sh) a JRE, JNA 5.13 and kotlinx-coroutines 1.0.1 + atomicfu
# (Maven Central is not reachable), npm for kotlinc; clang checks the Swift bindings' C header.
# PostgreSQL for the sync server's database lane (scripts/sync-test.sh). qemu-user and an aarch64
# linker and libc run the kernel tests for phones' CPUs (scripts/test-kernels-cross.sh).
packages="mesa-vulkan-drivers libvulkan1 openjdk-17-jre-headless libjna-java libkotlinx-coroutines-java
  libkotlinx-atomicfu-java clang postgresql qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
missing=""
command -v npm >/dev/null || missing=" npm"
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# kotlinc, from npm's kotlin-compiler (cached; scripts/jvm-test.sh finds it here).
kotlin_dir="$HOME/.cache/adaptkit/tools/kotlin"
if [ ! -x "$kotlin_dir/node_modules/kotlin-compiler/bin/kotlinc" ]; then
  mkdir -p "$kotlin_dir"
  npm install --prefix "$kotlin_dir" --silent --no-audit --no-fund kotlin-compiler@2.4.20 >/dev/null
fi

# The sync server's lane (scripts/sync-test.sh): an S3 API on loopback (moto) and the OpenAPI
# checker (schemathesis), pinned, in their own venv.
sync_venv="$HOME/.cache/adaptkit/tools/sync-venv"
if [ ! -x "$sync_venv/bin/moto_server" ] || [ ! -x "$sync_venv/bin/schemathesis" ]; then
  python3 -m venv "$sync_venv"
  "$sync_venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.1" "schemathesis==4.32.5" >&2
fi

# The Flower lane (scripts/flower-test.sh, scripts/demo-flower.sh): the pinned flwr.
scripts/flower-venv.sh >/dev/null
