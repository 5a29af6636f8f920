#!/usr/bin/env bash
# Trains the generator `adaptkit personalize` uses for the demo model (SmolLM2-135M-Instruct) on
# the Python documentation's sources (scripts/fetch-corpus.sh), on the CPU, and writes it to
# models/ with its step log; prints the sha256 to put in scripts/model.env as GENERATOR_SHA256.
# Checkpointed every 25 steps in $ADAPTKIT_HOME/generator-run: run it again after an interruption
# and it resumes. Settings beyond these: `adaptkit train-generator --help`.
#   STEPS (400), RANK (128), WINDOW (128), LR (1e-3), DEVICE (cpu)
# shellcheck source=cli-prelude.sh
. "$(dirname "$0")/cli-prelude.sh"

corpus=$(scripts/fetch-corpus.sh)
name=$(sed -n 's/^GENERATOR=//p' scripts/model.env)
run="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}/generator-run"
mkdir -p "$run"
"$adaptkit" train-generator --model "$model" --device "${DEVICE:-cpu}" \
  --corpus "$corpus" --corpus-name "Debian python3.11-doc $(cat "$corpus/VERSION"), html/_sources" \
  --steps "${STEPS:-400}" --rank "${RANK:-128}" --window "${WINDOW:-128}" --lr "${LR:-1e-3}" \
  --checkpoint-dir "$run" --log "$run/steps.jsonl" --out "models/$name"
cp "$run/steps.jsonl" "models/${name%.safetensors}.steps.jsonl"
sha256sum "models/$name"
