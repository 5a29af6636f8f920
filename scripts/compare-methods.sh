#!/usr/bin/env bash
# The README's comparison of adaptation methods: each method fine-tunes SmolLM2-135M on the
# LoRA defaults' corpus (data/sample/journal.txt, 10% of its windows held out; 60 steps of
# 4 x 128 tokens, the method's default learning rate and options), watching general English
# (tests/reference/ppl_text.txt). Prints one markdown row per method: trainable values, adapter
# bytes on disk, peak resident memory of the training process, training tokens/s, held-out
# perplexity at the start and after training (the start is the base model, except for soft
# prompts, whose initial prompt already acts) and general English perplexity as a ratio to the
# base model's.
#
#   scripts/compare-methods.sh [METHOD[:EXTRA ARGS] ...]   (default: all eight methods)
# shellcheck source=scripts/cli-prelude.sh
source "$(dirname "$0")/cli-prelude.sh"
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(lora dora ia3 prompt prefix dept peqa lofit)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "| method | trainable values | adapter bytes | peak training RSS (MiB) | train tok/s | held-out perplexity (start -> after) | general English (x base) |"
echo "|---|---|---|---|---|---|---|"
for run in "${runs[@]}"; do
  method=${run%%:*} extra=""
  [ "$run" = "$method" ] || extra=${run#*:}
  # shellcheck disable=SC2086 # EXTRA holds several arguments
  json=$("$adaptkit" train --model "$model" --method "$method" --data data/sample/journal.txt \
    --general-eval tests/reference/ppl_text.txt --out "$out/$method" \
    --steps 60 --batch 4 --seq 128 --eval-every 0 --checkpoint-every 0 --json $extra | tail -n 1)
  bytes=$(stat -c %s "$out/$method/adapter_model.safetensors")
  python3 - "$run" "$bytes" "$json" <<'PY'
import json, math, sys
run, size, r = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
h1 = math.exp(r["eval_loss"])
g = math.exp(r["general_loss"] - r["general_loss_base"])
print(f"| {run} | {r['trainable_parameters']:,} | {size:,} | {r['peak_rss_mb']:.0f} | {r['tokens_per_s']:.0f} "
      f"| {math.exp(r['eval_loss_before']):.2f} -> {h1:.2f} | {g:.3f}x |")
PY
done
