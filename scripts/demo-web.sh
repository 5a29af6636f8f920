#!/usr/bin/env bash
# The browser demo in one command: fetches and verifies the model, builds the wasm package and
# the demo page, and serves them with the model on http://127.0.0.1:${PORT:-8080}/ (with the
# cross-origin isolation headers that let Cancel stop a running fine-tune). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(scripts/fetch-model.sh)
scripts/install-web-tools.sh
scripts/web-build.sh >/dev/null
(cd web/demo && node_modules/.bin/vite build --logLevel warn)
exec node web/serve.mjs web/demo/dist "${PORT:-8080}" "/model.gguf=$model"
