"""A LoRA adapter made by Hugging Face PEFT, and the logits it gives, for adaptkit's PEFT tests.

transformers loads SmolLM2-135M-Instruct from the GGUF (dequantized to fp32), PEFT wraps it with
a LoRA (r=4, alpha=8, all seven projections of layers 0, 15 and 29, A and B random and non-zero
so the adapter really moves the logits), `save_pretrained` writes the adapter to
golden/peft_lora/, and golden/peft_lora.json + peft_lora.f32 hold the adapted and base
last-token logits of two prompts.

Usage: "$(scripts/reference-env.sh)" tests/reference/make_peft_lora.py [MODEL.gguf [OUT_DIR]]

For Gemma 3 270M (OUT_DIR golden/gemma3): layers 0, 9 and 17 (local, local, global), and only
the adapted rows are stored (each is 1 MB at its 262k vocabulary); the json keeps how far the
adapter moves the logits.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
OUT = HERE / "golden"
DEFAULT_MODEL = Path.home() / ".cache/adaptkit/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["The quick brown fox jumps over", "def fibonacci(n):\n    "]

model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else OUT
torch.manual_seed(0)
torch.set_num_threads(2)
kwargs = dict(gguf_file=model_path.name)
tokenizer = AutoTokenizer.from_pretrained(model_path.parent, **kwargs)
model = AutoModelForCausalLM.from_pretrained(model_path.parent, dtype=torch.float32, **kwargs).eval()


def last_logits(m, ids):
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0, -1].float().numpy()


ids = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
base = [last_logits(model, i) for i in ids]
config = LoraConfig(
    r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    layers_to_transform=[0, model.config.num_hidden_layers // 2, model.config.num_hidden_layers - 1],
    init_lora_weights=False,  # random B too: a zero B would leave the logits unchanged
)
adapted_model = get_peft_model(model, config).eval()
adapted = [last_logits(adapted_model, i) for i in ids]
adapted_model.save_pretrained(OUT / "peft_lora")
(OUT / "peft_lora" / "README.md").unlink(missing_ok=True)  # PEFT's generated model card

base_rows = model.config.vocab_size < 100_000
rows = np.stack(adapted + (base if base_rows else [])).astype("<f4")
rows.tofile(OUT / "peft_lora.f32")
(OUT / "peft_lora.json").write_text(json.dumps({
    "model": model_path.name,
    "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    "adapter": "peft_lora",
    "file": "peft_lora.f32",
    "layout": "little-endian float32 [2 * len(prompts)][vocab]: adapted logits of each prompt, then base logits"
              if base_rows else "little-endian float32 [len(prompts)][vocab]: adapted logits of each prompt",
    "vocab_size": int(rows.shape[1]),
    "prompts": [{"text": t, "ids": i} for t, i in zip(PROMPTS, ids)],
    "max_abs_adapted_minus_base": float(max(np.abs(a - b).max() for a, b in zip(adapted, base))),
}, indent=1) + "\n")
print("adapter moved the logits by up to", max(float(np.abs(a - b).max()) for a, b in zip(adapted, base)))
