"""An "updated release" of the base model for the PortLLM experiment: SmolLM2-135M-Instruct
continued-pretrained on other text than the patches were trained on, every weight trainable,
then written back in the original GGUF's own formats (Q4_1 projections, Q8_0 embedding, F32
norms), so it is the same kind of file with every tensor moved.

How: transformers loads the GGUF (dequantized to fp32); AdamW (lr 5e-5, no weight decay)
trains all parameters for 50 steps of 4 x 128-token windows of tests/reference/ppl_text.txt and
data/sample/general.txt (general English; the patches learn data/sample/journal.txt), seed 0.
Each tensor's change (in GGUF's row order: q/k rows permuted as llama.cpp's converter does) is
added to the dequantized original tensor, which is requantized in its own format and written
over the original's bytes in a copy of the file (same header, same offsets).

Usage: "$(scripts/reference-env.sh)" tests/reference/make_updated_base.py MODEL.gguf OUT.gguf
"""
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
STEPS, BATCH, SEQ, LR, SEED = 50, 4, 128, 5e-5, 0


def hf_name(name):
    """The transformers parameter behind a GGUF tensor name."""
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if name in fixed:
        return fixed[name]
    _, layer, part, _ = name.split(".")
    module = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }[part]
    return f"model.layers.{layer}.{module}.weight"


def to_gguf_rows(delta, heads):
    """llama.cpp's q/k permutation (rotate-half pairs -> interleaved pairs)."""
    return delta.reshape(heads, 2, delta.shape[0] // heads // 2, *delta.shape[1:]).swapaxes(1, 2).reshape(delta.shape)


def main(model_path, out_path):
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    path = Path(model_path)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    text = (ROOT / "tests/reference/ppl_text.txt").read_text() + "\n\n" + (ROOT / "data/sample/general.txt").read_text()
    ids = torch.tensor(tok(text)["input_ids"])
    windows = ids[: len(ids) // SEQ * SEQ].reshape(-1, SEQ)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    model.train()
    generator = torch.Generator().manual_seed(SEED)
    for step in range(STEPS):
        batch = windows[torch.randint(len(windows), (BATCH,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step + 1}/{STEPS}: loss {loss.item():.4f}", file=sys.stderr)
    after = model.state_dict()

    config = model.config
    reader = gguf.GGUFReader(model_path)
    shutil.copyfile(model_path, out_path)
    with open(out_path, "r+b") as out:
        for t in reader.tensors:
            name = hf_name(t.name)
            delta = (after[name] - before[name]).numpy().astype(np.float32)
            if ".attn_q." in t.name:
                delta = to_gguf_rows(delta, config.num_attention_heads)
            elif ".attn_k." in t.name:
                delta = to_gguf_rows(delta, config.num_key_value_heads)
            original = gguf.quants.dequantize(t.data, t.tensor_type).reshape(delta.shape)
            updated = gguf.quants.quantize(original + delta, t.tensor_type)
            assert updated.nbytes == t.n_bytes, t.name
            out.seek(t.data_offset)
            out.write(updated.tobytes())
    print(out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
