#!/usr/bin/env bash
# The fine-tuning experiment behind `adaptkit train`'s defaults: LoRA r=8 on all seven
# projections of SmolLM2-135M, batch 4 x 128 tokens, on the narrow bundled corpus
# data/sample/journal.txt (10% of its windows held out), watching general English
# (tests/reference/ppl_text.txt) for forgetting. Prints one markdown row per run:
# held-out and general-text perplexity after training, as ratios to before.
#
#   scripts/experiment-defaults.sh [LR:STEPS ...]     (default: the grid in the README)
#   ADAPTKIT_MODEL=gemma3-270m scripts/experiment-defaults.sh ...   (the same on Gemma 3 270M)
# Extra `train` options go in $TRAIN_OPTIONS (e.g. --bf16-products).
# shellcheck source=scripts/cli-prelude.sh
source "$(dirname "$0")/cli-prelude.sh"
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(1e-4:30 3e-4:30 1e-3:30 3e-4:150 1e-3:60)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "| lr | steps | held-out ppl before -> after (ratio) | general ppl before -> after (ratio) | train tok/s |"
echo "|---|---|---|---|---|"
for run in "${runs[@]}"; do
  lr=${run%%:*} steps=${run##*:}
  json=$("$adaptkit" train --model "$model" --data data/sample/journal.txt \
    --general-eval tests/reference/ppl_text.txt --out "$out/$lr-$steps" \
    --lr "$lr" --steps "$steps" --batch 4 --seq 128 --eval-every 0 --checkpoint-every 0 ${TRAIN_OPTIONS:-} --json | tail -n 1)
  python3 - "$lr" "$steps" "$json" <<'PY'
import json, math, sys
lr, steps, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
h0, h1 = math.exp(r["eval_loss_before"]), math.exp(r["eval_loss"])
g0, g1 = math.exp(r["general_loss_base"]), math.exp(r["general_loss"])
print(f"| {lr} | {steps} | {h0:.2f} -> {h1:.2f} ({h1 / h0:.3f}x) | {g0:.2f} -> {g1:.2f} ({g1 / g0:.3f}x) | {r['tokens_per_s']:.0f} |")
PY
done
