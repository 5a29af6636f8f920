#!/usr/bin/env bash
# What can be checked of the Swift face without a Swift toolchain: the committed bindings
# (ios/Sources) are what uniffi generates from the library today, the C header they use parses
# (clang), and every function it declares is exported by the library.
#   scripts/swift-check.sh          check
#   scripts/swift-check.sh --update regenerate the committed bindings
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
lib=$(scripts/ffi-bindings.sh "$work" | tail -1)
swift=ios/Sources/AdaptkitFFI
header=ios/Sources/adaptkit_ffiFFI/include
if [ "${1:-}" = --update ]; then
  mkdir -p "$swift" "$header"
  cp "$work/swift/AdaptkitFFI.swift" "$swift/"
  cp "$work/swift/adaptkit_ffiFFI.h" "$header/"
  cp "$work/swift/adaptkit_ffiFFI.modulemap" "$header/module.modulemap"
  echo "updated $swift and $header"
  exit 0
fi
for pair in "AdaptkitFFI.swift:$swift/AdaptkitFFI.swift" "adaptkit_ffiFFI.h:$header/adaptkit_ffiFFI.h" \
  "adaptkit_ffiFFI.modulemap:$header/module.modulemap"; do
  if ! diff -q "$work/swift/${pair%%:*}" "${pair#*:}" >/dev/null; then
    echo "swift: ${pair#*:} differs from what uniffi generates now; run scripts/swift-check.sh --update" >&2
    exit 1
  fi
done
clang -fsyntax-only -Werror -Wno-pragma-once-outside-header -x c "$header/adaptkit_ffiFFI.h"
declared=$(grep -oE '\b(uniffi|ffi)_adaptkit[A-Za-z0-9_]*\(' "$header/adaptkit_ffiFFI.h" | tr -d '(' | sort -u)
exported=$(nm -D --defined-only "$lib" | awk '{print $3}' | sort -u)
missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
if [ -n "$missing" ]; then
  echo "swift: declared in the header but not exported by $lib:" >&2
  echo "$missing" >&2
  exit 1
fi
echo "swift: bindings fresh, header parses, all $(echo "$declared" | wc -l) declared functions exported"
