#!/usr/bin/env bash
# llama.cpp peer benchmark for `adaptkit bench`: builds llama-cpp-python (pinned) from PyPI into
# its own venv at $ADAPTKIT_HOME/llamacpp-env (default ~/.cache/adaptkit/llamacpp-env; idempotent,
# about 12 minutes on 2 cores the first time), then runs scripts/bench_llamacpp.py on the GGUF:
# n_threads=2, batch 1, prefill tok/s of a 128-token prompt, decode tok/s over 128 greedy tokens,
# peak RSS; medians of 3 runs after a warm-up. The last stdout line is one JSON object:
#   {"peer":"llama.cpp","version":…,"prefill_tok_s":…,"decode_tok_s":…,"peak_rss_mb":…,
#    "threads":2,"prompt_tokens":128,"gen_tokens":128, …}
#
# Usage: scripts/bench-llamacpp.sh [MODEL.gguf] [extra args for bench_llamacpp.py, e.g.
#        --check-golden tests/reference/golden/logits.json]
# MODEL defaults to the file scripts/fetch-model.sh caches.
#
# LLAMACPP_BUILD=clang builds the fastest llama.cpp this machine allows instead, into
# $ADAPTKIT_HOME/llamacpp-clang-env: Debian's clang (installed with apt-get when missing),
# -march=native with AMX where the CPU has it (gcc 12 miscompiles ggml's AMX tile config, clang
# does not), -O3. Its JSON says "build":"clang-native"; the default is "build":"pip".
set -euo pipefail

VERSION="0.3.36"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}"
build="${LLAMACPP_BUILD:-pip}"
case "$build" in
  pip)
    venv="$home/llamacpp-env"
    # ggml builds with -march=native; gcc 12 miscompiles its AMX path on some of our CPUs
    # (SIGILL), so AMX is switched off explicitly. Part of the stamp: changing flags rebuilds.
    NOAMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_ARGS_PIN="-DCMAKE_C_FLAGS='$NOAMX' -DCMAKE_CXX_FLAGS='$NOAMX'"
    compilers=(env)
    compiler_version="$(gcc --version | head -1)"
    label="pip: gcc, -march=native without AMX"
    ;;
  clang)
    venv="$home/llamacpp-clang-env"
    command -v clang >/dev/null || { apt-get update -qq >&2 && apt-get install -y -qq clang >&2; }
    amx=OFF
    grep -qw amx_int8 /proc/cpuinfo && amx=ON
    CMAKE_ARGS_PIN="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_AMX_TILE=$amx -DGGML_AMX_INT8=$amx -DGGML_AMX_BF16=$amx -DCMAKE_C_FLAGS=-O3 -DCMAKE_CXX_FLAGS=-O3"
    compilers=(env CC=clang CXX=clang++)
    compiler_version="$(clang --version | head -1)"
    label="clang: -march=native, -O3, AMX requested: $amx"
    ;;
  *) echo "LLAMACPP_BUILD is pip or clang, not $build" >&2; exit 2 ;;
esac
py="$venv/bin/python"
stamp=$(printf '%s\n' "llama-cpp-python==$VERSION" "$CMAKE_ARGS_PIN" "$(python3 --version 2>&1)" \
  "$compiler_version" | sha256sum | cut -d' ' -f1)
check="import llama_cpp; assert llama_cpp.__version__ == '$VERSION', llama_cpp.__version__"

if [ -x "$py" ] && [ "$(cat "$venv/.adaptkit-stamp" 2>/dev/null)" = "$stamp" ] \
   && "$py" -c "$check" 2>/dev/null; then
  :
else
  echo "building llama-cpp-python==$VERSION into $venv (about 12 minutes)…" >&2
  start=$(date +%s)
  mkdir -p "$home"
  rm -f "$venv/.adaptkit-stamp"
  [ -x "$py" ] || python3 -m venv "$venv"
  "${compilers[@]}" CMAKE_ARGS="$CMAKE_ARGS_PIN" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    nice -n 10 "$py" -m pip install --disable-pip-version-check --quiet --no-cache-dir \
    --force-reinstall --no-binary llama-cpp-python "llama-cpp-python==$VERSION" >&2
  "$py" -c "$check"
  echo "$stamp" >"$venv/.adaptkit-stamp"
  echo "llama-cpp-python built in $(( $(date +%s) - start ))s, $(du -sh "$venv" | cut -f1)" >&2
fi

model="${1:-}"
if [ -z "$model" ] || [ "${model#--}" != "$model" ]; then
  model="$("$here/fetch-model.sh")"
else
  shift
fi
exec "$py" "$here/bench_llamacpp.py" --model "$model" --threads 2 --runs 3 --build "$label" "$@"
