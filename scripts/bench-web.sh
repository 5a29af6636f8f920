#!/usr/bin/env bash
# In-page speed against native, measured in one run with the same code (the runtime's benchmark:
# a 128-token prompt, 128 greedy tokens, median of 3 runs after a warm-up; LoRA r=8 on all seven
# projections, batch 4 x 128, 3 steps after a warm-up step): `adaptkit bench --threads 1` natively,
# then the wasm package in headless Chromium (one thread, SIMD128). Prints a table with ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}
model=${1:-$(scripts/fetch-model.sh)}
scripts/install-web-tools.sh
wasm=$(scripts/web-build.sh)
cargo build --release --workspace --bins >&2
native=$("$CARGO_TARGET_DIR/release/adaptkit" bench --model "$model" --threads 1 --json | tail -1)
page=$(node web/test/bench.mjs "$model" | tail -1)
node -e '
  const [native, page, gz] = [JSON.parse(process.argv[1]), JSON.parse(process.argv[2]), Number(process.argv[3])];
  const rows = [["prefill, 128-token prompt (tok/s)", native.prefill_tok_s, page.prefillTokS],
                ["decode, 128 tokens (tok/s)", native.decode_tok_s, page.decodeTokS],
                ["LoRA training, batch 4 x 128 (tok/s)", native.train_tok_s, page.trainTokS]];
  console.log("| SmolLM2-135M-Instruct Q4_1, one thread | native | in the page (Chromium, wasm SIMD128) | page / native |");
  console.log("|---|---|---|---|");
  for (const [name, n, p] of rows) console.log(`| ${name} | ${n.toFixed(1)} | ${p.toFixed(1)} | ${(p / n).toFixed(2)}x |`);
  console.log(`wasm bundle: ${(gz / 1048576).toFixed(2)} MiB gzipped (target: under 4 MB)`);
' "$native" "$page" "$(gzip -9 -c "$wasm" | wc -c)"
