#!/usr/bin/env bash
# Fetches the corpus the generator (`adaptkit train-generator`) trains on: the reStructuredText
# sources of Python's documentation as Debian ships them (package python3.11-doc, one .txt per
# page under html/_sources/), unpacked into $ADAPTKIT_HOME/corpus/python3.11-doc. apt checks the
# package against Debian's signed index; the version is recorded in VERSION beside the files.
# Prints the corpus directory on stdout. A second run downloads nothing.
set -euo pipefail

package=python3.11-doc
dir="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}/corpus/$package"
if [ -f "$dir/VERSION" ]; then
  echo "$dir"
  exit 0
fi

mkdir -p "$(dirname "$dir")"
work=$(mktemp -d "$(dirname "$dir")/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "downloading $package from Debian…" >&2
(cd "$work" && apt-get download "$package" >/dev/null 2>&1) || {
  echo "apt-get download $package failed (is this Debian 12 with its package index fetched?)" >&2
  exit 1
}
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/x"
sources=$(find "$work/x" -type d -path '*/html/_sources' | head -1)
[ -n "$sources" ] || { echo "$deb has no html/_sources" >&2; exit 1; }
mkdir -p "$work/corpus"
cp -r "$sources"/. "$work/corpus/"
dpkg-deb -f "$deb" Version > "$work/corpus/VERSION"
rm -rf "$dir"
mv "$work/corpus" "$dir"
echo "$dir"
