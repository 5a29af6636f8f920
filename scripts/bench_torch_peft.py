"""PyTorch + transformers + PEFT peer for the training figure of `adaptkit bench`: the same model
(the GGUF dequantized to fp32 by transformers), LoRA r=8 alpha=16 on all seven projections,
batch 4 x SEQ tokens (128 by default), AdamW lr 1e-4, gradient clipping at 1.0, 2 threads; one warm-up step,
then the mean over 3 timed steps. Prints one JSON object as its last line.

With AUTOCAST=bf16 the steps run under `torch.autocast("cpu", torch.bfloat16)` (the linear
layers in bf16 through oneDNN, on AMX where the CPU has it): the peer of `adaptkit bench
--bf16-products`.

Usage: [AUTOCAST=bf16] "$(scripts/reference-env.sh)" scripts/bench_torch_peft.py [MODEL.gguf [SEQ]]
"""
import contextlib
import os
import json
import resource
import sys
import time
from pathlib import Path

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

MODEL = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/adaptkit/models/SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH, STEPS = 4, 3
SEQ = int(sys.argv[2]) if len(sys.argv) > 2 else 128
AUTOCAST = os.environ.get("AUTOCAST", "")
if AUTOCAST not in ("", "bf16"):
    sys.exit(f"AUTOCAST={AUTOCAST}: only bf16 is supported")

torch.set_num_threads(2)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(MODEL.parent, gguf_file=MODEL.name, dtype=torch.float32)
config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, config).train()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def step():
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if AUTOCAST else contextlib.nullcontext()
    with autocast:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad()


step()
start = time.perf_counter()
for _ in range(STEPS):
    step()
seconds = time.perf_counter() - start
print(json.dumps({
    "peer": "pytorch+peft",
    "versions": {"torch": torch.__version__, "peft": peft.__version__},
    "train_tok_s": STEPS * BATCH * SEQ / seconds,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "threads": 2, "batch": BATCH, "seq": SEQ, "precision": "bf16 autocast" if AUTOCAST else "fp32",
}))
