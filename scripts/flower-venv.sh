#!/usr/bin/env bash
# The pinned Flower (SuperLink, `flwr` CLI, the ServerApp's imports) in its own venv, created
# once; prints the venv's path. Used by scripts/demo-flower.sh and the Flower tests.
set -euo pipefail
venv="${ADAPTKIT_FLOWER_VENV:-$HOME/.cache/adaptkit/tools/flower-venv}"
if [ ! -x "$venv/bin/flower-superlink" ] || ! "$venv/bin/python" -c 'import flwr, numpy; assert flwr.__version__ == "1.42.0"' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "flwr==1.42.0" "numpy>=1.26,<3" >&2
fi
echo "$venv"
