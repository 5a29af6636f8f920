#!/usr/bin/env bash
# How inference cost grows with the context: adaptkit (f32 and i8 activations) and llama.cpp
# (pip build, scripts/bench-llamacpp.sh) at prompts of 128, 512 and 2048 tokens, each followed by
# 128 greedy tokens, on the same GGUF and threads, one after another in one run. Prints a
# Markdown table with ratios (the README's scaling table). Run it on an idle machine.
# Usage: scripts/bench-scaling.sh [MODEL.gguf]    (THREADS=2, SIZES="128 512 2048" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"
threads="${THREADS:-2}"
sizes="${SIZES:-128 512 2048}"
cargo build --release --workspace --bins >&2
model="${1:-$(scripts/fetch-model.sh)}"
adaptkit="$CARGO_TARGET_DIR/release/adaptkit"
rows=()
for n in $sizes; do
  ours=$("$adaptkit" bench --model "$model" --threads "$threads" --prompt-tokens "$n" \
    --train-steps 0 --json | tail -1)
  int8=$("$adaptkit" bench --model "$model" --threads "$threads" --prompt-tokens "$n" \
    --train-steps 0 --int8-activations --json | tail -1)
  peer=$(scripts/bench-llamacpp.sh "$model" --prompt "$n" | tail -1)
  rows+=("$n" "$ours" "$int8" "$peer")
done
python3 - "${rows[@]}" <<'PY'
import json, sys
args = sys.argv[1:]
print("| context | prefill: adaptkit / llama.cpp (tok/s) | ratio | decode: adaptkit f32 / i8 / llama.cpp (tok/s) | i8 ratio |")
print("|---|---|---|---|---|")
for i in range(0, len(args), 4):
    n, ours, int8, peer = args[i], *(json.loads(a) for a in args[i + 1:i + 4])
    print(f"| {n} | {ours['prefill_tok_s']:.1f} / {peer['prefill_tok_s']:.1f} | "
          f"{ours['prefill_tok_s'] / peer['prefill_tok_s']:.2f}x | "
          f"{ours['decode_tok_s']:.1f} / {int8['decode_tok_s']:.1f} / {peer['decode_tok_s']:.1f} | "
          f"{int8['decode_tok_s'] / peer['decode_tok_s']:.2f}x |")
PY
