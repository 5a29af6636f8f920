#!/usr/bin/env bash
# The Kotlin face on the desktop JVM (what an Android app runs, minus Android): generates the
# Kotlin bindings, compiles them with dev.adaptkit (android/adaptkit) and the JVM suite
# (android/jvm-test) with kotlinc, then runs the suite and the README's Kotlin quick-start, as
# printed, against the real model. Tools come from scripts/install-test-tools.sh: kotlinc (npm
# kotlin-compiler), JNA 5.13 and kotlinx-coroutines 1.0.1 + atomicfu (Debian). Coroutines 1.0.1
# lacks Flow, so the suite adds a shim of the few newer names (android/jvm-test/*Shim.kt); apps
# use the real library (android/adaptkit/build.gradle.kts).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/jvm-test.sh MODEL.gguf}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}
kotlinc=${KOTLINC:-$HOME/.cache/adaptkit/tools/kotlin/node_modules/kotlin-compiler/bin/kotlinc}
kotlin_lib=$(dirname "$kotlinc")/../lib
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

lib=$(scripts/ffi-bindings.sh "$work/gen" | tail -1)
# The quick-start exactly as the README prints it: the block after "<!-- kotlin-quickstart -->".
awk '/<!-- kotlin-quickstart -->/ { on = 1; next } on && /^```kotlin/ { grab = 1; next } grab && /^```/ { exit } grab' \
  README.md > "$work/Quickstart.kt"
[ -s "$work/Quickstart.kt" ] || { echo "jvm: no Kotlin quick-start in README.md" >&2; exit 1; }

deps=/usr/share/java/jna.jar:/usr/share/java/kotlinx-coroutines-core.jar:/usr/share/java/atomicfu.jar
echo "== kotlinc: bindings, dev.adaptkit, the JVM suite, the README quick-start" >&2
"$kotlinc" -nowarn -cp "$deps" -d "$work/adaptkit.jar" \
  "$work"/gen/kotlin/dev/adaptkit/ffi/*.kt android/adaptkit/src/main/kotlin/dev/adaptkit/*.kt \
  android/sample/src/main/kotlin/dev/adaptkit/sample/Personalization.kt \
  android/jvm-test/*.kt "$work/Quickstart.kt" 2>&1 | grep -v "^warning: " >&2 || true
[ -f "$work/adaptkit.jar" ] || { echo "jvm: kotlinc failed" >&2; exit 1; }

classpath="$work/adaptkit.jar:$deps:$kotlin_lib/kotlin-stdlib.jar"
run() { java -Djna.library.path="$(dirname "$lib")" -cp "$classpath" "$@"; }
echo "== JVM suite" >&2
run dev.adaptkit.test.JvmTestKt "$model" "$work/suite" data/sample/notes.txt
echo "== README quick-start" >&2
(cd "$work" && mkdir -p files && cp -r "$OLDPWD/data" . && run QuickstartKt "$model" "$work/files")
