#!/usr/bin/env bash
# adaptkit against llama.cpp on the same GGUF, in one run, on the same threads: prefill tok/s of
# a 128-token prompt, decode tok/s over 128 greedy tokens, peak RSS. Prints both JSON reports
# and a Markdown table with adaptkit/llama.cpp ratios (the README's benchmark table).
# Usage: scripts/bench.sh [MODEL.gguf]    (THREADS=2 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"
threads="${THREADS:-2}"

cargo build --release -p adaptkit-cli >&2
model="${1:-$(scripts/fetch-model.sh)}"
ours=$("$CARGO_TARGET_DIR/release/adaptkit" bench --model "$model" --threads "$threads" --json | tail -1)
peer=$(scripts/bench-llamacpp.sh "$model" | tail -1)
echo "$ours"
echo "$peer"
python3 - "$ours" "$peer" <<'PY'
import json, sys
ours, peer = (json.loads(a) for a in sys.argv[1:])
print(f"\n{ours['threads']} threads, batch 1, {ours['prompt_tokens']}-token prompt, {ours['gen_tokens']} generated tokens\n")
print("| | adaptkit | llama.cpp | ratio |")
print("|---|---|---|---|")
for key, label, unit in [("prefill_tok_s", "prefill", "tok/s"), ("decode_tok_s", "decode", "tok/s"),
                         ("peak_rss_mb", "peak RSS", "MiB")]:
    a, b = ours[key], peer[key]
    print(f"| {label} ({unit}) | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
PY
