#!/usr/bin/env bash
# Installs what the browser lane needs on a fresh machine: the wasm32 target, wasm-bindgen-cli
# pinned `=` to the wasm-bindgen crate in Cargo.lock (cargo install; no wasm-pack, whose
# installers download from GitHub), Debian's chromium (driven over CDP by playwright-core, so
# chromium-driver is not needed) and the npm dependencies of the package and the demo from their
# lockfiles.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
tools="$HOME/.cache/adaptkit/tools/wasm-bindgen"
if [ "$("$tools/bin/wasm-bindgen" --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
  # Not --locked: the CLI's lockfile pins a crate the index no longer has.
  cargo install wasm-bindgen-cli --version "=$version" --root "$tools" --quiet
fi

if ! command -v chromium >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# playwright-core and TypeScript for the package, Vite for the demo, each from its lockfile.
[ -d web/node_modules/playwright-core ] || npm ci --prefix web --silent --no-audit --no-fund
[ -d web/demo/node_modules/vite ] || npm ci --prefix web/demo --silent --no-audit --no-fund
