#!/usr/bin/env bash
# The main job, end to end on a fresh machine: build the CLI, fetch the demo model (verified,
# cached), show what it is, and chat with it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"

cargo build --release -p adaptkit-cli
adaptkit="$CARGO_TARGET_DIR/release/adaptkit"

model=$("$adaptkit" fetch)
"$adaptkit" info "$model"
prompt="Give me three tips for remembering people's names."
echo "> $prompt"
"$adaptkit" generate --model "$model" --chat --prompt "$prompt" --max-tokens 160 --temperature 0.6 --seed 1
