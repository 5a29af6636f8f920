#!/usr/bin/env bash
# The browser lane: builds the wasm package (scripts/web-build.sh), type-checks its declarations
# with tsc, builds the demo with Vite, and runs the browser suite (web/test) and the demo in
# headless Chromium against the real model. Screenshots and the adapter the page trained go to
# ARTIFACT_DIR (default: browser-artifacts in the cargo target directory); the adapter is then
# scored by the CLI, which must give the page's perplexity.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/browser-test.sh MODEL.gguf [ARTIFACT_DIR]}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}
artifacts=${2:-$CARGO_TARGET_DIR/browser-artifacts}
scripts/install-web-tools.sh
scripts/web-build.sh >/dev/null
echo "== tsc: the package's type declarations" >&2
(cd web && node_modules/.bin/tsc -p test/tsconfig.json)
echo "== vite: the demo" >&2
(cd web/demo && node_modules/.bin/vite build --logLevel warn)
echo "== Chromium: the browser suite and the demo" >&2
rm -rf "$artifacts"
# A tiny random model and the native runtime's logits for it (the test binary is built by the
# workspace's `cargo test --release`, so this compiles nothing new).
ADAPTKIT_BROWSER_FIXTURE="$artifacts/fixture" cargo test --release --workspace --test tiny_model -- \
  --ignored --exact write_the_browser_fixture --quiet >&2
node web/test/run.mjs "$model" "$artifacts"

echo "== the CLI scores the page's adapter as the page did" >&2
cargo build --release --workspace --bins >&2
cli=$("$CARGO_TARGET_DIR/release/adaptkit" eval --model "$model" --data data/sample/notes.txt --seq 64 \
  --adapter "$artifacts/adapter" --threads 2 --json | tail -1)
node -e '
  const [page, cli] = [require(process.argv[1]).perplexity, JSON.parse(process.argv[2]).perplexity];
  const rel = Math.abs(page - cli) / cli;
  console.log(`perplexity with the page'"'"'s adapter: page ${page.toFixed(5)}, CLI ${cli.toFixed(5)} (${(rel * 100).toFixed(4)}%)`);
  process.exit(rel < 1e-3 ? 0 : 1);
' "$artifacts/adapter/page-perplexity.json" "$cli"
