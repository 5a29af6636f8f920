#!/usr/bin/env bash
# How training cost grows with the sequence: LoRA r=8 on all seven projections, batch 4 x SEQ,
# AdamW, for adaptkit (Q4_1 base, with and without activation checkpointing) and PyTorch + PEFT
# (fp32 base, scripts/bench_torch_peft.py in the reference environment) at SEQ = 128, 512 and
# 1024, on the same GGUF and 2 threads, one after another. Prints a Markdown table with ratios
# (the README's training scaling table). Run it on an idle machine.
# Usage: scripts/bench-train-scaling.sh [MODEL.gguf]    (SIZES="128 512 1024" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"
sizes="${SIZES:-128 512 1024}"
cargo build --release --workspace --bins >&2
model="${1:-$(scripts/fetch-model.sh)}"
torch_py="$(scripts/reference-env.sh)"
adaptkit="$CARGO_TARGET_DIR/release/adaptkit"
train() {
  "$adaptkit" bench --model "$model" --threads 2 --prompt-tokens 8 --gen-tokens 2 --repeats 1 \
    --train-seq "$1" "${@:2}" --json | tail -1
}
rows=()
for n in $sizes; do
  rows+=("$n" "$(train "$n")" "$(train "$n" --checkpoint-activations)" \
    "$("$torch_py" scripts/bench_torch_peft.py "$model" "$n" 2>/dev/null | tail -1)")
done
python3 - "${rows[@]}" <<'PY'
import json, sys
args = sys.argv[1:]
print("| batch 4 x seq | adaptkit / PyTorch + PEFT (tok/s) | ratio | peak RSS adaptkit / PyTorch (MiB) | ratio | with activation checkpointing: tok/s, MiB |")
print("|---|---|---|---|---|---|")
for i in range(0, len(args), 4):
    n, ours, ckpt, torch = args[i], *(json.loads(a) for a in args[i + 1:i + 4])
    print(f"| {n} | {ours['train_tok_s']:.1f} / {torch['train_tok_s']:.1f} | "
          f"{ours['train_tok_s'] / torch['train_tok_s']:.2f}x | "
          f"{ours['train_peak_rss_mb']:.0f} / {torch['peak_rss_mb']:.0f} | "
          f"{ours['train_peak_rss_mb'] / torch['peak_rss_mb']:.2f}x | "
          f"{ckpt['train_tok_s']:.1f}, {ckpt['train_peak_rss_mb']:.0f} |")
PY
