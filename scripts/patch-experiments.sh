#!/usr/bin/env bash
# The README's patch figures, on SmolLM2-135M-Instruct Q4_1:
#  1. ComPEFT: a LoRA (the `train` defaults: rank 8 on all seven projections, 60 steps of 4 x 128
#     tokens) on the first 90% of data/sample/journal.txt's documents; patches of it at several
#     densities (and `--density auto`) scored on the other 10% (held-out) and on general English
#     (tests/reference/ppl_text.txt).
#  2. PortLLM: the same patch ported to an "updated" base (tests/reference/make_updated_base.py:
#     every weight continued-pretrained on other text, written back as Q4_1), against the
#     updated base alone and a LoRA retrained on it with the same recipe.
# Prints markdown tables on stdout; progress on stderr.
#
#   scripts/patch-experiments.sh [compress|port|all]     (default: all)
# shellcheck source=scripts/cli-prelude.sh
source "$(dirname "$0")/cli-prelude.sh"
what=${1:-all}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'PY'
import sys
docs = [d for d in open("data/sample/journal.txt").read().split("\n\n") if d.strip()]
cut = len(docs) * 9 // 10
open(f"{sys.argv[1]}/train.txt", "w").write("\n\n".join(docs[:cut]) + "\n")
open(f"{sys.argv[1]}/heldout.txt", "w").write("\n\n".join(docs[cut:]) + "\n")
PY
general=tests/reference/ppl_text.txt

train() { # BASE OUT
  "$adaptkit" train --model "$1" --data "$work/train.txt" --eval "$work/heldout.txt" --out "$2" \
    --steps 60 --batch 4 --seq 128 --eval-every 0 --checkpoint-every 0 --json >/dev/null
}
ppl() { # BASE FILE [ADAPTER]
  "$adaptkit" eval --model "$1" --data "$2" --seq 128 ${3:+--adapter "$3"} --json | tail -n 1 |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["perplexity"])'
}
echo "training the LoRA on the original base" >&2
train "$model" "$work/lora"
base_h=$(ppl "$model" "$work/heldout.txt")
lora_h=$(ppl "$model" "$work/heldout.txt" "$work/lora")
f16=$("$adaptkit" patch compress "$work/lora" --model "$model" --out "$work/dense.akp" --density dense --json |
  tail -n 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["f16_bytes"])')

row() { # LABEL ADAPTER [FILE WHOSE SIZE COUNTS, default ADAPTER]
  local bytes h g
  bytes=$(stat -c %s "${3:-$2}")
  h=$(ppl "$model" "$work/heldout.txt" "$2")
  g=$(ppl "$model" "$general" "$2")
  python3 - "$1" "$bytes" "$h" "$g" "$f16" "$base_h" "$lora_h" <<'PY'
import math, sys
label, size, h, g, f16, base, lora = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
kept = (math.log(base) - math.log(h)) / (math.log(base) - math.log(lora))
print(f"| {label} | {size:,} | {f16 / size:.1f}x | {h:.2f} | {kept * 100:.0f}% | {g:.2f} |")
PY
}

if [ "$what" = compress ] || [ "$what" = all ]; then
  base_g=$(ppl "$model" "$general")
  echo "base model: held-out perplexity $(printf %.2f "$base_h"), general English $(printf %.2f "$base_g"); the adapter's tensors in f16: $f16 bytes"
  echo
  echo "| patch | file bytes | smaller than f16 | held-out perplexity | gain kept | general English perplexity |"
  echo "|---|---|---|---|---|---|"
  row "LoRA directory (f32 safetensors)" "$work/lora" "$work/lora/adapter_model.safetensors"
  row "dense f16 patch" "$work/dense.akp"
  for d in 0.02 0.05 0.1 0.2 0.3; do
    "$adaptkit" patch compress "$work/lora" --model "$model" --out "$work/d$d.akp" --density "$d" >/dev/null
    row "ComPEFT, density $d" "$work/d$d.akp"
  done
  "$adaptkit" patch compress "$work/lora" --model "$model" --out "$work/auto.akp" --density auto \
    --eval "$work/heldout.txt" --general-eval "$general" --json 2>"$work/auto.log" | tail -n 1 > "$work/auto.json"
  row "ComPEFT, --density auto (keep 95% of the gain, general English within 5%), chose $(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["compression"]; print(c["density"], "at x%.2f the fitted scale" % c["alpha_factor"])' "$work/auto.json")" "$work/auto.akp"
  echo
fi

if [ "$what" = port ] || [ "$what" = all ]; then
  updated="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}/models/SmolLM2-135M-Instruct.updated.Q4_1.gguf"
  if [ ! -f "$updated" ]; then
    echo "making the updated base (tests/reference/make_updated_base.py, a few minutes)" >&2
    "$(scripts/reference-env.sh)" tests/reference/make_updated_base.py "$model" "$updated.tmp" >/dev/null
    mv "$updated.tmp" "$updated"
  fi
  "$adaptkit" patch compress "$work/lora" --model "$model" --out "$work/d0.1.akp" --density 0.1 >/dev/null
  "$adaptkit" patch port "$work/dense.akp" --model "$updated" --from "$model" --out "$work/ported.akp" --json 2>/dev/null | tail -n 1 > "$work/port.json"
  "$adaptkit" patch port "$work/d0.1.akp" --model "$updated" --from "$model" --out "$work/ported-d0.1.akp" >/dev/null 2>&1
  echo "training the same LoRA recipe on the updated base (the reference PortLLM avoids)" >&2
  train "$updated" "$work/lora-updated"
  new_h=$(ppl "$updated" "$work/heldout.txt")
  python3 - "$work/port.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"drift from the original base to the updated one (relative Frobenius norm over the patch's {len(r['drift'])} matrices): "
      f"mean {r['mean_drift']:.4f}, max {r['max_drift']:.4f}")
PY
  echo
  echo "| model | held-out perplexity | gain over its base kept (vs the original pair) |"
  echo "|---|---|---|"
  line() { python3 - "$@" <<'PY'
import math, sys
label, h, base, full = sys.argv[1], *map(float, sys.argv[2:])
print(f"| {label} | {h:.2f} | {(math.log(base) - math.log(h)) / full * 100:.0f}% |")
PY
  }
  full=$(python3 -c "import math,sys; print(math.log($base_h) - math.log($lora_h))")
  line "original base" "$base_h" "$base_h" "$full"
  line "original base + patch (what it was made for)" "$lora_h" "$base_h" "$full"
  line "updated base" "$new_h" "$new_h" "$full"
  line "updated base + ported dense patch (λ = 1)" "$(ppl "$updated" "$work/heldout.txt" "$work/ported.akp")" "$new_h" "$full"
  line "updated base + ported ComPEFT patch (density 0.1)" "$(ppl "$updated" "$work/heldout.txt" "$work/ported-d0.1.akp")" "$new_h" "$full"
  for lambda in 0.75 1.25; do
    "$adaptkit" patch port "$work/dense.akp" --model "$updated" --from "$model" --lambda "$lambda" --out "$work/ported-$lambda.akp" >/dev/null 2>&1
    line "updated base + ported dense patch (λ = $lambda)" "$(ppl "$updated" "$work/heldout.txt" "$work/ported-$lambda.akp")" "$new_h" "$full"
  done
  line "updated base + LoRA retrained on it (same recipe)" "$(ppl "$updated" "$work/heldout.txt" "$work/lora-updated")" "$new_h" "$full"
  echo
  if "$adaptkit" eval --model "$updated" --data "$work/heldout.txt" --adapter "$work/dense.akp" >/dev/null 2>"$work/refused"; then
    echo "The unported patch was accepted on the updated base: that is a bug."
    exit 1
  fi
  echo "The unported patch on the updated base: \`$(cat "$work/refused")\`"
fi
