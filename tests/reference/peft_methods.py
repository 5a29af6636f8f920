"""Round trips of the PEFT methods beyond LoRA (prompt tuning, prefix tuning, IA3, DoRA) between
Hugging Face PEFT and adaptkit, on SmolLM2-135M-Instruct (transformers dequantizes the GGUF to
fp32).

`make`: PEFT makes one adapter per method with random, non-trivial weights (seed 0), saves it to
golden/peft_<method>/ and records the logits it gives: golden/peft_methods.json describes
golden/peft_methods.f32, which holds, per row of its index (the base model, then each adapter,
each on both prompts), the last position's logits of vocabulary ids 0..vocab_size. adaptkit's real-model test loads each
adapter and compares its own logits with these.

`check`: PEFT loads the adapters adaptkit trained and saved (golden/adaptkit_<method>/, made
with the commands below) and records its logits the same way, in golden/peft_loads_adaptkit_methods.*;
adaptkit's test compares its own logits with the same adapters against them.

  for m in prompt prefix ia3 dora; do
    adaptkit train --method $m --data data/sample/notes.txt --out tests/reference/golden/adaptkit_$m \\
      --steps 4 --batch 2 --seq 64 --seed 3 --checkpoint-every 0 --eval-every 0 \\
      $( [ $m = dora ] && echo --targets q,v --rank 2 --lr 2e-3 ) $( [ $m = prefix ] || [ $m = prompt ] && echo --virtual-tokens 4 )
  done

Usage: "$(scripts/reference-env.sh)" tests/reference/peft_methods.py make|check [MODEL.gguf]
"""
import json
import sys
from pathlib import Path

import numpy as np
import peft
import torch
from peft import IA3Config, LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
OUT = HERE / "golden"
DEFAULT_MODEL = Path.home() / ".cache/adaptkit/models/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["The quick brown fox jumps over", "def fibonacci(n):\n    "]
METHODS = ["prompt", "prefix", "ia3", "dora"]
SLICE = 4096

mode = sys.argv[1] if len(sys.argv) > 1 else "make"
model_path = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_MODEL
torch.set_num_threads(2)
kwargs = dict(gguf_file=model_path.name)
tokenizer = AutoTokenizer.from_pretrained(model_path.parent, **kwargs)


def base_model():
    return AutoModelForCausalLM.from_pretrained(model_path.parent, dtype=torch.float32, **kwargs).eval()


def last_logits(m, ids):
    with torch.no_grad():
        return m(input_ids=torch.tensor([ids])).logits[0, -1, :SLICE].float().numpy()


def config_of(method):
    if method == "prompt":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    if method == "prefix":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    if method == "ia3":
        return IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                         feedforward_modules=["down_proj"])
    return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, use_dora=True,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      layers_to_transform=[0, 15, 29])


def perturb(m, method):
    """Moves every trainable weight so that the adapter changes the model."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            if method in ("prompt", "prefix"):
                p.mul_(0.5)  # PEFT's N(0, 1) start, halved
            elif method == "ia3":
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif "magnitude" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
rows, index = [], []
base = base_model()
for p, ids in zip(PROMPTS, prompt_ids):
    rows.append(last_logits(base, ids))
    index.append({"adapter": None, "prompt": p})
for method in METHODS:
    if mode == "make":
        torch.manual_seed(0)
        model = get_peft_model(base_model(), config_of(method))
        perturb(model, method)
        model.save_pretrained(OUT / f"peft_{method}")
        name = f"peft_{method}"
    else:
        name = f"adaptkit_{method}"
        model = PeftModel.from_pretrained(base_model(), OUT / name)
    model.eval()
    for p, ids in zip(PROMPTS, prompt_ids):
        rows.append(last_logits(model, ids))
        index.append({"adapter": name, "prompt": p})
        moved = float(np.abs(rows[-1] - rows[len(index) % 2 == 0 and 1 or 0]).max())
        print(f"{name} {p!r}: logits moved by up to {moved:.3f}")

stem = "peft_methods" if mode == "make" else "peft_loads_adaptkit_methods"
np.stack(rows).astype("<f4").tofile(OUT / f"{stem}.f32")
(OUT / f"{stem}.json").write_text(json.dumps({
    "model": model_path.name,
    "peft": peft.__version__,
    "file": f"{stem}.f32",
    "vocab_size": SLICE,
    "rows": index,
    "prompt_ids": prompt_ids,
}, indent=1) + "\n")
