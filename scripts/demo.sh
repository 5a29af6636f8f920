#!/usr/bin/env bash
# The main job, end to end on a fresh machine: build the CLI, fetch the demo model (verified,
# cached), show what it is, chat with it, then fine-tune a LoRA adapter on the bundled sample
# notes (progress bar, a forgetting watch on general English, the loss curve as SVG), ask it
# what the notes say, save it as a PEFT directory, and compress it into a patch (ComPEFT, ~25x
# smaller than the adapter in f16) that answers the same; last, generate an adapter from the
# same notes in one pass of the model, with no training (personalize).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"

# The whole workspace's binaries, not `-p adaptkit-cli`: resolver 2 unifies proc-macro
# dependencies per build, and the CLI alone gives indexmap (under burn's cubecl) other host
# features than the tests do, which would compile burn a second time (12 minutes).
cargo build --release --workspace --bins
adaptkit="$CARGO_TARGET_DIR/release/adaptkit"

model=$("$adaptkit" fetch)
"$adaptkit" info "$model"
prompt="Give me three tips for remembering people's names."
echo "> $prompt"
"$adaptkit" generate --model "$model" --chat --prompt "$prompt" --max-tokens 160 --temperature 0.6 --seed 1

prompt="Saturday is bread day. I feed my sourdough starter, which I call"
out="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}/adapters/sample-notes"
echo
echo "> before fine-tuning: $prompt"
"$adaptkit" generate --model "$model" --prompt "$prompt" --max-tokens 40 --temperature 0
# The recipe (measured: README, "The demo's recipe"): every note whole in its windows, none held
# out, PiSSA's start at the weights' principal directions, 40 steps at 3.5e-4.
"$adaptkit" train --model "$model" --data data/sample/notes.txt --out "$out" \
  --general-eval data/sample/general.txt --pack documents --held-out 0 --init pissa \
  --steps 40 --batch 2 --seq 128 --lr 3.5e-4 --plot "$out/loss.svg"
echo "> after fine-tuning on data/sample/notes.txt: $prompt"
"$adaptkit" generate --model "$model" --adapter "$out" --prompt "$prompt" --max-tokens 40 --temperature 0
echo "adapter saved in $out (Hugging Face PEFT format); loss curve in $out/loss.svg"
echo
"$adaptkit" patch compress "$out" --model "$model" --out "$out.akp" --density 0.1
"$adaptkit" patch inspect "$out.akp"
echo "> with the patch $out.akp: $prompt"
"$adaptkit" generate --model "$model" --adapter "$out.akp" --prompt "$prompt" --max-tokens 40 --temperature 0
echo
# No training at all: an adapter generated from the notes in one pass of the model (README,
# "Personalize from a context").
echo "> with an adapter generated from data/sample/notes.txt (personalize, no training): $prompt"
"$adaptkit" personalize --model "$model" --context data/sample/notes.txt --out "$out-generated"
"$adaptkit" generate --model "$model" --adapter "$out-generated" --prompt "$prompt" --max-tokens 40 --temperature 0
