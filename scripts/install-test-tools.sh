#!/usr/bin/env bash
# Installs what the test suites need beyond the Rust toolchain: the cross targets that the
# portability checks compile for (a browser, a phone's CPU, and a microcontroller without std),
# and Mesa's software Vulkan driver (lavapipe) so that the GPU path runs on any machine.
# Idempotent.
set -euo pipefail
targets="wasm32-unknown-unknown aarch64-unknown-linux-gnu thumbv7em-none-eabihf"
installed=$(rustup target list --installed)
for t in $targets; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

# lavapipe: the Vulkan ICD `lvp_icd` and the Vulkan loader. Without them wgpu has no Vulkan
# adapter and the GPU tests fail (they are required in CI, see scripts/test.sh).
if ! dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
