"""Hugging Face PEFT loads a LoRA adapter that adaptkit trained and saved, and scores the
perplexity of ppl_text.txt with it (the design's definition: one token stream, windows of 512,
last partial window dropped). adaptkit's test (core/tests/real_model.rs) compares its own
perplexity with the same adapter against golden/peft_loads_adaptkit.json.

The adapter (golden/adaptkit_lora/) was made with:
  adaptkit train --data data/sample/notes.txt --out tests/reference/golden/adaptkit_lora \\
    --rank 2 --alpha 4 --targets q,k,v,down --steps 10 --batch 2 --seq 64 --lr 2e-3 --seed 3

Usage: "$(scripts/reference-env.sh)" tests/reference/check_peft_loads_adaptkit.py [MODEL.gguf [GOLDEN_DIR]]

For Gemma 3 270M, GOLDEN_DIR is golden/gemma3 and its adaptkit_lora/ was made the same way with
--model gemma-3-270m-q4_k_m.gguf.
"""
import json
import math
import sys
from pathlib import Path

import peft
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = Path.home() / ".cache/adaptkit/models/SmolLM2-135M-Instruct.Q4_1.gguf"
SEQ = 512

model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL
GOLDEN = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "golden"
torch.set_num_threads(2)
kwargs = dict(gguf_file=model_path.name)
tokenizer = AutoTokenizer.from_pretrained(model_path.parent, **kwargs)
model = AutoModelForCausalLM.from_pretrained(model_path.parent, dtype=torch.float32, **kwargs).eval()
# One stream, with BOS first where the GGUF asks for it (Gemma), as adaptkit and make_golden.py.
import gguf  # noqa: E402

reader = gguf.GGUFReader(str(model_path))
bos = [int(reader.fields["tokenizer.ggml.bos_token_id"].contents())] if reader.fields.get(
    "tokenizer.ggml.add_bos_token") and reader.fields["tokenizer.ggml.add_bos_token"].contents() else []
ids = bos + tokenizer((HERE / "ppl_text.txt").read_text(), add_special_tokens=False).input_ids
windows = [ids[i : i + SEQ] for i in range(0, len(ids) - SEQ + 1, SEQ)]


def perplexity(m):
    with torch.no_grad():
        losses = [m(torch.tensor([w]), labels=torch.tensor([w])).loss.item() for w in windows]
    return math.exp(sum(losses) / len(losses))


base = perplexity(model)
adapted_model = PeftModel.from_pretrained(model, GOLDEN / "adaptkit_lora").eval()
adapted = perplexity(adapted_model)
(GOLDEN / "peft_loads_adaptkit.json").write_text(json.dumps({
    "model": model_path.name,
    "peft": peft.__version__,
    "adapter": "adaptkit_lora",
    "text_file": "tests/reference/ppl_text.txt",
    "seq_len": SEQ,
    "windows": len(windows),
    "perplexity_base": base,
    "perplexity_with_adapter": adapted,
}, indent=1) + "\n")
print(f"PEFT with adaptkit's adapter: perplexity {adapted:.5f} (base {base:.5f})")
