#!/usr/bin/env bash
# Installs what the test suites need beyond the Rust toolchain: the cross targets that the
# portability checks compile for. Idempotent.
set -euo pipefail
targets="wasm32-unknown-unknown aarch64-unknown-linux-gnu"
installed=$(rustup target list --installed)
for t in $targets; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
