#!/usr/bin/env bash
# Creates (idempotently) the Python reference environment that makes the golden data in
# tests/reference/: a venv at $ADAPTKIT_HOME/refenv (default ~/.cache/adaptkit/refenv) with
# pinned torch, transformers, gguf, numpy, tokenizers, peft and accelerate (transformers' GGUF
# loader refuses to run without accelerate). Prints the venv's python path on stdout; progress goes to
# stderr. A second run installs nothing.
#
# torch comes from PyPI (the only index reachable here). PyPI's Linux x86_64 torch wheel is the
# CUDA build: libtorch_cpu.so itself links libcudart/libcupti, and libtorch.so links
# libtorch_cuda.so (cuDNN, cuBLAS, NCCL, ...), so `--no-deps` leaves a torch that cannot be
# imported. We therefore install it with its nvidia-* dependencies; everything runs on the CPU.
# Measured here: ~3.5 GB downloaded, 5.6 GB on disk (3.0 GB nvidia libs, 1.2 GB torch,
# 1.0 GB triton), about 2 minutes with a warm network.
#
# Usage: scripts/reference-env.sh            -> /root/.cache/adaptkit/refenv/bin/python
#        "$(scripts/reference-env.sh)" tests/reference/make_golden.py
set -euo pipefail

home="${ADAPTKIT_HOME:-$HOME/.cache/adaptkit}"
venv="$home/refenv"
py="$venv/bin/python"

# Direct requirements.
REQS=(torch==2.15.0 transformers==5.24.0 gguf==0.19.0 numpy==2.4.6 tokenizers==0.23.3 accelerate==1.15.0 peft==0.21.2)

# Every transitive dependency, pinned (pip freeze of a working environment).
CONSTRAINTS=$(cat <<'PINS'
accelerate==1.15.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
certifi==2026.10.19.post1
charset-normalizer==3.5.3
click==8.5.1
cuda-bindings==13.5.0
cuda-pathfinder==1.9.1
cuda-toolkit==13.2.2
filelock==4.3.1
fsspec==2026.9.0
gguf==0.19.0
h11==0.16.0
hf-xet==1.8.0
httpcore2==2.16.2
httpx2==2.16.2
huggingface_hub==2.4.0
idna==3.20
Jinja2==3.1.6
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
mpmath==1.3.0
networkx==3.6.1
numpy==2.4.6
nvidia-cublas==13.4.1.3
nvidia-cuda-cccl==13.3.5.0.6
nvidia-cuda-cupti==13.2.86
nvidia-cuda-nvrtc==13.2.86
nvidia-cuda-runtime==13.2.86
nvidia-cudnn-cu13==9.26.0.51
nvidia-cufft==12.2.0.57
nvidia-cufile==1.17.1.22
nvidia-cusolver==12.2.0.11
nvidia-cusparse==12.7.10.12
nvidia-cusparselt-cu13==0.8.1
nvidia-nccl-cu13==2.30.7
nvidia-nvjitlink==13.5.37
nvidia-nvshmem-cu13==3.7.2
nvidia-nvtx==13.2.86
packaging==26.4
peft==0.21.2
psutil==7.2.2
pydantic==2.14.4
pydantic_core==2.50.5
Pygments==2.21.0
PyYAML==6.0.4
regex==2026.11.19
requests==2.34.2
rich==15.0.0
safetensors==0.8.0
setuptools==84.2.1
shellingham==1.5.4
sympy==1.14.0
tokenizers==0.23.3
torch==2.15.0
tqdm==4.70.1
transformers==5.24.0
triton==3.9.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
PINS
)

stamp=$(printf '%s\n' "${REQS[@]}" "$CONSTRAINTS" "$(python3 --version 2>&1)" | sha256sum | cut -d' ' -f1)
check='import torch, transformers, gguf, numpy, tokenizers, accelerate'

if [ -x "$py" ] && [ "$(cat "$venv/.adaptkit-stamp" 2>/dev/null)" = "$stamp" ] \
   && "$py" -c "$check" 2>/dev/null; then
  echo "$py"
  exit 0
fi

echo "creating reference environment in $venv (torch + CUDA runtime wheels: ~3.5 GB download)…" >&2
start=$(date +%s)
mkdir -p "$home"
rm -f "$venv/.adaptkit-stamp"
[ -x "$py" ] || python3 -m venv "$venv"
cfile=$(mktemp)
trap 'rm -f "$cfile"' EXIT
printf '%s\n' "$CONSTRAINTS" >"$cfile"
nice -n 10 "$py" -m pip install --disable-pip-version-check --quiet \
  --constraint "$cfile" "${REQS[@]}" >&2
"$py" -c "$check; print('torch', torch.__version__, 'transformers', transformers.__version__)" >&2
echo "$stamp" >"$venv/.adaptkit-stamp"
echo "reference environment ready in $(( $(date +%s) - start ))s, $(du -sh "$venv" | cut -f1)" >&2
echo "$py"
