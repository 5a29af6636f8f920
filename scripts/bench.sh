#!/usr/bin/env bash
# adaptkit against its peers on the same GGUF, in one run, on the same 2 threads: llama.cpp (two
# builds: the pip build, and clang with -march=native and AMX, LLAMACPP_BUILD=clang in
# scripts/bench-llamacpp.sh) for prefill tok/s of a 128-token prompt, decode tok/s over 128
# greedy tokens (adaptkit with f32 and with i8 activations) and peak RSS;
# PyTorch + PEFT (fp32) for LoRA training tok/s (r=8, all projections, batch 4 x 128) and its
# peak RSS, against adaptkit with and without activation checkpointing; adaptkit's products on
# bf16 tiles (`--bf16-products`, where the CPU has AMX) for prefill and training, against
# PyTorch under bf16 autocast as well; then, with GPU=1,
# adaptkit on this machine's GPU (`bench --device gpu`, with GPU_ARGS, e.g. "--gen-tokens 16
# --repeats 1 --train-steps 1" on a software GPU, which is slow). Prints the JSON reports and
# Markdown tables with ratios (the README's tables).
# Usage: scripts/bench.sh [MODEL.gguf]    (THREADS=2 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"
threads="${THREADS:-2}"
# Mesa (lavapipe) wants a writable runtime directory, which containers often lack.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

cargo build --release --workspace --bins >&2
model="${1:-$(scripts/fetch-model.sh)}"
ours=$("$CARGO_TARGET_DIR/release/adaptkit" bench --model "$model" --threads "$threads" --json | tail -1)
# Training again with activation checkpointing (inference repeated briefly; its figures unused).
recompute=$("$CARGO_TARGET_DIR/release/adaptkit" bench --model "$model" --threads "$threads" \
  --checkpoint-activations --repeats 1 --gen-tokens 2 --json | tail -1)
# Decode again on integer activations (no training).
int8=$("$CARGO_TARGET_DIR/release/adaptkit" bench --model "$model" --threads "$threads" \
  --int8-activations --train-steps 0 --json | tail -1)
# Prefill and training on bf16 tiles (decode is unchanged by them).
bf16=$("$CARGO_TARGET_DIR/release/adaptkit" bench --model "$model" --threads "$threads" \
  --bf16-products --gen-tokens 2 --json | tail -1)
peer=$(scripts/bench-llamacpp.sh "$model" | tail -1)
clang=$(LLAMACPP_BUILD=clang scripts/bench-llamacpp.sh "$model" | tail -1)
torch=$("$(scripts/reference-env.sh)" scripts/bench_torch_peft.py "$model" 2>/dev/null | tail -1)
torch_bf16=$(AUTOCAST=bf16 "$(scripts/reference-env.sh)" scripts/bench_torch_peft.py "$model" 2>/dev/null | tail -1)
gpu='{}'
if [ "${GPU:-0}" = 1 ]; then
  # shellcheck disable=SC2086 # GPU_ARGS is a list of options
  gpu=$("$CARGO_TARGET_DIR/release/adaptkit" bench --model "$model" --threads "$threads" --device gpu \
    ${GPU_ARGS:-} --json | tail -1)
fi
echo "$ours"
echo "$recompute"
echo "$int8"
echo "$peer"
echo "$clang"
echo "$torch"
echo "$bf16"
echo "$torch_bf16"
echo "$gpu"
python3 - "$ours" "$peer" "$torch" "$recompute" "$gpu" "$int8" "$clang" "$bf16" "$torch_bf16" <<'PY'
import json, sys
ours, peer, torch, recompute, gpu, int8, clang, bf16, torch_bf16 = (json.loads(a) for a in sys.argv[1:])
print(f"\n{ours['threads']} threads, batch 1, {ours['prompt_tokens']}-token prompt, {ours['gen_tokens']} generated tokens\n")
print(f"llama.cpp builds: pip = {peer['build']}; clang = {clang['build']}\n")
print("| | adaptkit | llama.cpp (pip) | llama.cpp (clang) | vs pip | vs clang |")
print("|---|---|---|---|---|---|")
for run, key, label, unit in [(ours, "prefill_tok_s", "prefill", "tok/s"),
                              (bf16, "prefill_tok_s", f"prefill, --bf16-products ({bf16['product_kernel']})", "tok/s"),
                              (ours, "decode_tok_s", "decode, f32 activations", "tok/s"),
                              (int8, "decode_tok_s", "decode, i8 activations", "tok/s"),
                              (ours, "peak_rss_mb", "peak RSS", "MiB")]:
    a, b, c = run[key], peer[key], clang[key]
    print(f"| {label} ({unit}) | {a:.1f} | {b:.1f} | {c:.1f} | {a / b:.2f}x | {a / c:.2f}x |")
print(f"\nLoRA training: {ours['train_config']}\n")
print("| | adaptkit | PyTorch + PEFT (fp32) | ratio |")
print("|---|---|---|---|")
for label, run in [("", ours), (", activation checkpointing", recompute)]:
    for what, a, b in [("train (tok/s)", run["train_tok_s"], torch["train_tok_s"]),
                       ("train peak RSS (MiB)", run["train_peak_rss_mb"], torch["peak_rss_mb"])]:
        print(f"| {what}{label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
print(f"\nOn bf16 products: adaptkit --bf16-products ({bf16['product_kernel']}) against PyTorch + PEFT"
      f" in fp32 and under bf16 autocast\n")
print("| | adaptkit bf16 | PyTorch fp32 | PyTorch bf16 autocast | vs fp32 | vs bf16 autocast |")
print("|---|---|---|---|---|---|")
for what, key, theirs in [("train (tok/s)", "train_tok_s", "train_tok_s"),
                          ("train peak RSS (MiB)", "train_peak_rss_mb", "peak_rss_mb")]:
    a, b, c = bf16[key], torch[theirs], torch_bf16[theirs]
    print(f"| {what} | {a:.1f} | {b:.1f} | {c:.1f} | {a / b:.2f}x | {a / c:.2f}x |")
if gpu:
    print(f"\nGPU: {gpu['device']} (CPU columns: the runs above)\n")
    print("| | adaptkit GPU | adaptkit CPU | llama.cpp CPU | GPU / CPU | GPU / llama.cpp |")
    print("|---|---|---|---|---|---|")
    for key, label, theirs in [("prefill_tok_s", "prefill (tok/s)", peer["prefill_tok_s"]),
                               ("decode_tok_s", "decode (tok/s)", peer["decode_tok_s"]),
                               ("train_tok_s", "train (tok/s)", None)]:
        a, b = gpu[key], ours[key]
        vs_peer = f"{a / theirs:.2f}x" if theirs else "—"
        print(f"| {label} | {a:.1f} | {b:.1f} | {theirs or '—'} | {a / b:.2f}x | {vs_peer} |")
    print(f"| GPU memory held, inference / training (MiB) | {gpu['gpu_reserved_mb']:.0f} / {gpu['train_gpu_reserved_mb']:.0f} | | | | |")
else:
    print("\n(GPU=1 adds adaptkit on this machine's GPU)")
PY
