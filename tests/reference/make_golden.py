#!/usr/bin/env python3
"""Writes tests/reference/golden/: reference logits, perplexity and greedy continuations for
SmolLM2-135M-Instruct (GGUF Q4_1), computed by Hugging Face transformers + PyTorch — an
implementation independent of adaptkit's.

Run inside the reference venv (scripts/reference-env.sh prints its python):

    "$(scripts/reference-env.sh)" tests/reference/make_golden.py [--model PATH] [--out DIR]

How the numbers are made: transformers loads the GGUF through gguf-py, which dequantizes every
Q4_1 / Q8_0 block to float32 (so the weights are exactly d*q + m per block, no re-quantization);
the model runs in float32 on the CPU, eval mode, no grad, eager attention. The output head is
tied to the (Q8_0) token embedding, as the GGUF has no output.weight. As a check, the logits are
also recomputed by a small float64 numpy forward pass written here from the GGUF tensors with
llama.cpp's conventions; the script fails if the two differ by more than 1e-3 (they agree to
~1e-4; the differences are recorded in logits.json).

What to expect from other implementations: llama.cpp (which quantizes activations to 8 bits
inside its quantized matmuls) differs from these logits by up to ~0.9 (mean ~0.16), with the
same argmax; an implementation that keeps f32 activations should be within ~1e-3.

Files:
  logits.json + logits.f32   per prompt: token ids, the full last-position logits
                             (little-endian float32, row i at byte offset i*vocab*4), and the
                             top-5 (id, logit) at every prompt position
  perplexity.json            perplexity of ../ppl_text.txt by the design's `eval` definition
  greedy.json                32-token greedy continuations with the top-1/top-2 logit gap per step
"""
import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = Path(os.environ.get("ADAPTKIT_HOME", Path.home() / ".cache/adaptkit")) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# Plain-text prompts (no chat template), written for this file, plus one chat prompt below.
PROMPTS = [
    ("capital", "The capital of France is"),
    ("story", "Once upon a time, in a small village by the sea, there lived an old fisherman who"),
    ("python", "def is_prime(n: int) -> bool:\n    \"\"\"Return True if n is a prime number.\"\"\"\n"),
    ("rust", "fn main() {\n    let numbers = vec![3, 1, 4, 1, 5, 9, 2, 6];\n    let total: i32 ="),
    ("json", '{"name": "Alice", "age": 30, "languages": ["English", "French"], "city": '),
    ("fibonacci", "1, 1, 2, 3, 5, 8, 13, 21, 34,"),
    ("qa", "Q: At what temperature does water boil at sea level, in degrees Celsius?\nA:"),
    ("french", "La recette traditionnelle de la ratatouille commence par"),
    ("single", "Hello"),
    ("long", (
        "The museum's smallest room held a single object: a wooden chair, worn pale on the arms, "
        "that had belonged to the town's first schoolteacher. Visitors often asked why it deserved "
        "a room of its own. The guide would explain that for forty-one years every child in the "
        "valley had learned to read standing beside that chair, and that when the school finally "
        "closed, three generations of former pupils had signed a petition to keep it. Nobody had "
        "signed a petition for the desks, the blackboard or the brass bell. Then the guide would "
        "pause, and most visitors would look at the chair again, a little differently, before "
        "moving on to the next room, which was full of agricultural machinery. The guide said"
    )),
]
CHAT = ("chat", [{"role": "user", "content": "Give me three short tips for learning to cook."}])

PPL_SEQ = 512
PPL_EXTRA_SEQ = [128]
GREEDY_TOKENS = 32
TOPK_POSITIONS = 5


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def numpy_reference(model_path):
    """A second, from-scratch float64 forward pass in numpy, straight from the GGUF tensors with
    llama.cpp's conventions (RoPE on adjacent pairs of the stored, permuted q/k weights; GQA;
    tied output). It shares only gguf-py's dequantization with the transformers path, and
    checks that transformers' GGUF conversion (q/k un-permutation, tying, eps, rope base) is
    right. Returns forward(ids) -> logits [T, vocab] (float64)."""
    import gguf
    import numpy as np
    from gguf import dequantize

    r = gguf.GGUFReader(str(model_path))
    w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    f = lambda k: r.fields[k].contents()  # noqa: E731
    n_layer, n_head = f("llama.block_count"), f("llama.attention.head_count")
    n_kv, eps = f("llama.attention.head_count_kv"), f("llama.attention.layer_norm_rms_epsilon")
    base, dim = f("llama.rope.freq_base"), f("llama.embedding_length")
    hd = dim // n_head

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x, pos):
        ang = pos[:, None] * base ** (-2 * np.arange(hd // 2) / hd)[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
        out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return out

    def forward(ids):
        t = len(ids)
        x = w["token_embd.weight"][ids]
        pos = np.arange(t, dtype=np.float64)
        mask = np.triu(np.full((t, t), -np.inf), 1)
        for l in range(n_layer):
            p = f"blk.{l}."
            h = rms(x, w[p + "attn_norm.weight"])
            q = rope((h @ w[p + "attn_q.weight"].T).reshape(t, n_head, hd), pos)
            k = rope((h @ w[p + "attn_k.weight"].T).reshape(t, n_kv, hd), pos)
            v = (h @ w[p + "attn_v.weight"].T).reshape(t, n_kv, hd)
            o = np.empty((t, n_head, hd))
            for hh in range(n_head):
                kv = hh // (n_head // n_kv)
                a = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
                a = np.exp(a - a.max(-1, keepdims=True))
                o[:, hh] = (a / a.sum(-1, keepdims=True)) @ v[:, kv]
            x = x + o.reshape(t, dim) @ w[p + "attn_output.weight"].T
            h = rms(x, w[p + "ffn_norm.weight"])
            g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
        return rms(x, w["output_norm.weight"]) @ w["token_embd.weight"].T

    return forward


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--out", default=str(HERE / "golden"))
    ap.add_argument("--ppl-text", default=str(HERE / "ppl_text.txt"))
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gguf
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model_path = Path(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    reader = gguf.GGUFReader(str(model_path))
    add_bos = bool(reader.fields["tokenizer.ggml.add_bos_token"].contents())
    bos_id = int(reader.fields["tokenizer.ggml.bos_token_id"].contents())
    eos_id = int(reader.fields["tokenizer.ggml.eos_token_id"].contents())
    del reader

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32,
        attn_implementation="eager",
    )
    model.eval()
    load_s = time.perf_counter() - t0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    vocab = model.config.vocab_size

    common = {
        "model": model_path.name,
        "sha256": sha256(model_path),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": gguf.__version__ if hasattr(gguf, "__version__") else __import__("importlib.metadata").metadata.version("gguf"),
            "numpy": np.__version__,
            "tokenizers": __import__("tokenizers").__version__,
        },
        "dtype": "float32",
        "weights": "GGUF blocks dequantized to float32 by gguf-py (via transformers' GGUF loader)",
        "attn_implementation": "eager",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_s": round(load_s, 3),
        "add_bos_token": add_bos,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }

    def encode(text):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return ([bos_id] if add_bos else []) + ids

    prompts = [{"name": n, "text": t, "chat": False, "ids": encode(t)} for n, t in PROMPTS]
    chat_text = tok.apply_chat_template(CHAT[1], tokenize=False, add_generation_prompt=True)
    prompts.append({"name": CHAT[0], "text": chat_text, "chat": True, "messages": CHAT[1],
                    "add_generation_prompt": True, "ids": encode(chat_text)})

    @torch.no_grad()
    def forward(ids):
        return model(torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0]

    # ---- logits -------------------------------------------------------------------------
    rows = []
    entries = []
    t_logits = time.perf_counter()
    for i, p in enumerate(prompts):
        t = time.perf_counter()
        logits = forward(p["ids"])
        dt = time.perf_counter() - t
        last = logits[-1].contiguous()
        rows.append(last.numpy().astype("<f4"))
        top_v, top_i = logits.topk(TOPK_POSITIONS, dim=-1)
        entries.append({
            **p,
            "row": i,
            "n_tokens": len(p["ids"]),
            "argmax": int(last.argmax()),
            "top5_last": [[int(a), float(b)] for a, b in zip(top_i[-1], top_v[-1])],
            "top5_per_position": [
                [[int(a), round(float(b), 5)] for a, b in zip(ii, vv)] for ii, vv in zip(top_i, top_v)
            ],
            "forward_s": round(dt, 4),
        })
        print(f"logits {p['name']}: {len(p['ids'])} tokens, argmax {entries[-1]['argmax']} "
              f"{tok.decode([entries[-1]['argmax']])!r}", file=sys.stderr)
    logits_s = time.perf_counter() - t_logits
    np.stack(rows).astype("<f4").tofile(out / "logits.f32")

    # Cross-check against the SDPA attention path (same weights), to bound implementation noise.
    sdpa_diff = None
    try:
        model.set_attn_implementation("sdpa")
        sdpa_diff = max(float((forward(p["ids"])[-1] - torch.from_numpy(r)).abs().max())
                        for p, r in zip(prompts, rows))
        model.set_attn_implementation("eager")
    except Exception as e:  # older/newer transformers without set_attn_implementation
        print(f"sdpa cross-check skipped: {e}", file=sys.stderr)
    # Cross-check against an independent float64 numpy forward pass (see numpy_reference): the
    # full last-position logits, and the top-5 logits recorded at every position.
    t = time.perf_counter()
    np_forward = numpy_reference(model_path)
    np_diff = {}
    for p, r, e in zip(prompts, rows, entries):
        ref = np_forward(p["ids"])
        pos_diff = max(abs(ref[k, i] - v) for k, top in enumerate(e["top5_per_position"]) for i, v in top)
        np_diff[p["name"]] = max(float(np.abs(ref[-1] - r).max()), float(pos_diff))
        if np_diff[p["name"]] > 1e-3:
            sys.exit(f"transformers and the numpy float64 reference disagree on {p['name']}: "
                     f"{np_diff[p['name']]}")
    del np_forward
    print(f"numpy float64 cross-check: max |diff| {max(np_diff.values()):.2e} "
          f"({time.perf_counter() - t:.1f}s)", file=sys.stderr)
    write_json(out / "logits.json", {
        **common,
        "numpy_f64_max_abs_diff": np_diff,
        "vocab_size": vocab,
        "file": "logits.f32",
        "layout": "little-endian float32, shape [len(prompts)][vocab_size], row = prompts[i].row",
        "sdpa_vs_eager_max_abs_diff": sdpa_diff,
        "total_s": round(logits_s, 3),
        "prompts": entries,
    })

    # ---- perplexity ---------------------------------------------------------------------
    text = Path(args.ppl_text).read_text(encoding="utf-8")
    stream = encode(text)

    def perplexity(seq):
        n_windows = len(stream) // seq
        nll = []
        t = time.perf_counter()
        for w in range(n_windows):
            ids = torch.tensor([stream[w * seq:(w + 1) * seq]], dtype=torch.long)
            with torch.no_grad():
                loss = model(ids, labels=ids, use_cache=False).loss
            nll.append(float(loss))
        dt = time.perf_counter() - t
        mean = math.fsum(nll) / len(nll)
        return {
            "seq_len": seq,
            "windows": n_windows,
            "predicted_per_window": seq - 1,
            "tokens_used": n_windows * seq,
            "tokens_dropped": len(stream) - n_windows * seq,
            "mean_nll": mean,
            "perplexity": math.exp(mean),
            "window_mean_nll": nll,
            "seconds": round(dt, 3),
        }

    main_ppl = perplexity(PPL_SEQ)
    extra = [perplexity(s) for s in PPL_EXTRA_SEQ]
    print(f"perplexity L={PPL_SEQ}: {main_ppl['perplexity']:.4f} over {main_ppl['windows']} windows, "
          f"{len(stream)} tokens", file=sys.stderr)
    write_json(out / "perplexity.json", {
        **common,
        "text_file": "tests/reference/ppl_text.txt",
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "definition": "whole file tokenized as one stream (BOS only if add_bos_token), non-overlapping "
                      "windows of seq_len tokens, last partial window dropped; perplexity = exp(mean over "
                      "windows of transformers' model(ids, labels=ids).loss), i.e. exp of the mean "
                      "next-token NLL over all predicted positions (every window predicts seq_len-1)",
        "tokens": len(stream),
        **main_ppl,
        "other_seq_lens": extra,
    })

    # ---- greedy -------------------------------------------------------------------------
    gens = []
    t_greedy = time.perf_counter()
    for p in prompts:
        ids = list(p["ids"])
        steps = []
        t = time.perf_counter()
        for _ in range(GREEDY_TOKENS):
            last = forward(ids)[-1]
            v, i = last.topk(2)
            nxt = int(i[0])
            steps.append({"token": nxt, "top1": float(v[0]), "second": int(i[1]), "top2": float(v[1]),
                          "gap": float(v[0] - v[1])})
            ids.append(nxt)
        gen = [s["token"] for s in steps]
        gens.append({
            "name": p["name"],
            "chat": p["chat"],
            "prompt_ids": p["ids"],
            "tokens": gen,
            "text": tok.decode(gen, skip_special_tokens=False),
            "min_gap": min(s["gap"] for s in steps),
            "first_near_tie_step": next((k for k, s in enumerate(steps) if s["gap"] < 0.5), None),
            "hit_eos": eos_id in gen,
            "steps": steps,
            "seconds": round(time.perf_counter() - t, 3),
        })
        print(f"greedy {p['name']}: {gens[-1]['text']!r}", file=sys.stderr)
    write_json(out / "greedy.json", {
        **common,
        "max_new_tokens": GREEDY_TOKENS,
        "decoding": "argmax of the full-sequence fp32 logits at each step (no KV cache, no sampling, "
                    "no repetition penalty); generation does NOT stop at EOS (id "
                    f"{eos_id}, <|im_end|>) — it always runs {GREEDY_TOKENS} steps",
        "near_tie_threshold": 0.5,
        "total_s": round(time.perf_counter() - t_greedy, 3),
        "generations": gens,
    })


if __name__ == "__main__":
    main()
