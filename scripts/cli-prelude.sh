# Sourced by the experiment scripts: run from the repository root, build the CLI into the shared
# target dir, and fetch the model: the demo model, or another catalogued one named by
# $ADAPTKIT_MODEL (e.g. gemma3-270m). Sets `adaptkit` (the binary) and `model` (its path).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"
cargo build --release --workspace --bins >&2
adaptkit="$CARGO_TARGET_DIR/release/adaptkit"
model=$("$adaptkit" fetch --model "${ADAPTKIT_MODEL:-smollm2-135m}")
