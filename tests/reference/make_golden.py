#!/usr/bin/env python3
"""Writes tests/reference/golden/: reference logits, perplexity and greedy continuations for
SmolLM2-135M-Instruct (GGUF Q4_1), computed by Hugging Face transformers + PyTorch — an
implementation independent of adaptkit's. With --model gemma-3-270m-q4_k_m.gguf and
--out golden/gemma3 the same for Gemma 3 270M (see GEMMA below for its options).

Run inside the reference venv (scripts/reference-env.sh prints its python):

    "$(scripts/reference-env.sh)" tests/reference/make_golden.py [--model PATH] [--out DIR]
    "$(scripts/reference-env.sh)" tests/reference/make_golden.py --model ~/.cache/adaptkit/models/gemma-3-270m-q4_k_m.gguf \
        --out tests/reference/golden/gemma3 --ppl-seq 1024 --ppl-extra-seq 512 --full-logits capital,python,chat,window

A model with a sliding window gets one more prompt, "window": the start of ../ppl_text.txt, long
enough to pass the window by 150 tokens; logits.json records how far the logits of the same
model with the window turned off are from the reference there (no_window_max_abs_diff), which
is what a test that matches the reference proves it implements.

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

# Gemma's turns, as adaptkit's tokenizer::GEMMA_TEMPLATE (the base model ships no template).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' + (prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

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
    llama.cpp's conventions (Llama: RoPE on adjacent pairs of the stored, permuted q/k weights;
    Gemma 3: RoPE on halves, norms stored as 1 + w, √d embedding scale, GELU-tanh, sandwich and
    q/k norms, five sliding-window layers of base 10000 per global one; GQA; tied output). It
    shares only gguf-py's dequantization with the transformers path, and checks that
    transformers' GGUF conversion (q/k un-permutation, norm offsets, tying, eps, rope bases) is
    right. Returns forward(ids) -> logits [T, vocab] (float64)."""
    import gguf
    import numpy as np
    from gguf import dequantize

    r = gguf.GGUFReader(str(model_path))
    w = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    f = lambda k: r.fields[k].contents()  # noqa: E731
    arch = f("general.architecture")
    a = lambda k: f(f"{arch}.{k}")  # noqa: E731
    n_layer, n_head = a("block_count"), a("attention.head_count")
    n_kv, eps = a("attention.head_count_kv"), a("attention.layer_norm_rms_epsilon")
    base, dim = a("rope.freq_base"), a("embedding_length")
    gemma = arch == "gemma3"
    hd = a("attention.key_length") if gemma else dim // n_head
    window = a("attention.sliding_window") if gemma else None

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x, pos, theta):
        ang = pos[:, None] * theta ** (-2 * np.arange(hd // 2) / hd)[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = np.empty_like(x)
        if gemma:  # NeoX: the first half of a head rotates with the second
            x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
            out[..., : hd // 2], out[..., hd // 2:] = x1 * c - x2 * s, x2 * c + x1 * s
        else:
            out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
            out[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return out

    def act(g):
        if gemma:
            return 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        return g / (1 + np.exp(-g))

    def forward(ids):
        t = len(ids)
        x = w["token_embd.weight"][ids] * (np.sqrt(dim) if gemma else 1.0)
        pos = np.arange(t, dtype=np.float64)
        causal = np.triu(np.full((t, t), -np.inf), 1)
        for l in range(n_layer):
            p = f"blk.{l}."
            local = gemma and (l + 1) % 6 != 0
            mask = causal + (np.tril(np.full((t, t), -np.inf), -window) if local else 0)
            theta = 10000.0 if local else base
            h = rms(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(t, n_head, hd)
            k = (h @ w[p + "attn_k.weight"].T).reshape(t, n_kv, hd)
            if gemma:
                q, k = rms(q, w[p + "attn_q_norm.weight"]), rms(k, w[p + "attn_k_norm.weight"])
            q, k = rope(q, pos, theta), rope(k, pos, theta)
            v = (h @ w[p + "attn_v.weight"].T).reshape(t, n_kv, hd)
            o = np.empty((t, n_head, hd))
            for hh in range(n_head):
                kv = hh // (n_head // n_kv)
                s = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                o[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
            out = o.reshape(t, n_head * hd) @ w[p + "attn_output.weight"].T
            x = x + (rms(out, w[p + "post_attention_norm.weight"]) if gemma else out)
            h = rms(x, w[p + "ffn_norm.weight"])
            g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
            out = (act(g) * u) @ w[p + "ffn_down.weight"].T
            x = x + (rms(out, w[p + "post_ffw_norm.weight"]) if gemma else out)
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
    ap.add_argument("--ppl-seq", type=int, default=PPL_SEQ)
    ap.add_argument("--ppl-extra-seq", type=int, nargs="*", default=PPL_EXTRA_SEQ)
    ap.add_argument("--full-logits", default=None,
                    help="comma-separated prompt names whose full last-position logits are stored "
                         "(default: all; a 262k vocabulary makes each row 1 MB)")
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
    if tok.chat_template is None:
        # A base model without a template (Gemma 3 270M): the family's own, as adaptkit falls
        # back to it; the golden ids then check that both render the same text.
        tok.chat_template = GEMMA_TEMPLATE
    chat_text = tok.apply_chat_template(CHAT[1], tokenize=False, add_generation_prompt=True)
    chat_ids = tok(chat_text, add_special_tokens=False)["input_ids"]
    prompts.append({"name": CHAT[0], "text": chat_text, "chat": True, "messages": CHAT[1],
                    "add_generation_prompt": True, "ids": chat_ids if chat_ids[:1] == [bos_id] else encode(chat_text)})
    window = getattr(model.config, "sliding_window", None)
    if window:
        # Characters of the perplexity text, cut at a space, until it passes the window by 150.
        text = Path(args.ppl_text).read_text(encoding="utf-8")
        cut = next(i for i in range(0, len(text)) if text[i] == " " and len(encode(text[:i])) >= window + 150)
        prompts.append({"name": "window", "text": text[:cut], "chat": False, "ids": encode(text[:cut])})

    @torch.no_grad()
    def forward(ids):
        return model(torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0]

    # ---- logits -------------------------------------------------------------------------
    full = set(args.full_logits.split(",")) if args.full_logits else {p["name"] for p in prompts}
    rows = []
    entries = []
    t_logits = time.perf_counter()
    for p in prompts:
        t = time.perf_counter()
        logits = forward(p["ids"])
        dt = time.perf_counter() - t
        last = logits[-1].contiguous()
        if p["name"] in full:
            rows.append(last.numpy().astype("<f4"))
        top_v, top_i = logits.topk(TOPK_POSITIONS, dim=-1)
        entries.append({
            **p,
            "row": len(rows) - 1 if p["name"] in full else None,
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
    no_window_diff = None
    if window:
        # The same model seeing every position in every layer: how far it is from the reference
        # on the prompt that passes the window.
        p = next(p for p in prompts if p["name"] == "window")
        row = rows[next(e["row"] for e in entries if e["name"] == "window")]
        model.config.sliding_window = 10 ** 9
        no_window_diff = float((forward(p["ids"])[-1] - torch.from_numpy(row)).abs().max())
        model.config.sliding_window = window
        print(f"without the sliding window the window prompt's logits move by {no_window_diff:.3f}", file=sys.stderr)

    # Cross-check against the SDPA attention path (same weights), to bound implementation noise.
    sdpa_diff = None
    try:
        model.set_attn_implementation("sdpa")
        sdpa_diff = max(float((forward(p["ids"])[-1] - torch.from_numpy(r)).abs().max())
                        for p, r in zip([p for p, e in zip(prompts, entries) if e["row"] is not None], rows))
        model.set_attn_implementation("eager")
    except Exception as e:  # older/newer transformers without set_attn_implementation
        print(f"sdpa cross-check skipped: {e}", file=sys.stderr)
    # Cross-check against an independent float64 numpy forward pass (see numpy_reference): the
    # full last-position logits, and the top-5 logits recorded at every position.
    t = time.perf_counter()
    np_forward = numpy_reference(model_path)
    np_diff = {}
    for p, e in zip(prompts, entries):
        ref = np_forward(p["ids"])
        pos_diff = max(abs(ref[k, i] - v) for k, top in enumerate(e["top5_per_position"]) for i, v in top)
        last_diff = 0.0 if e["row"] is None else float(np.abs(ref[-1] - rows[e["row"]]).max())
        np_diff[p["name"]] = max(last_diff, float(pos_diff))
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
        "layout": "little-endian float32, shape [rows][vocab_size], row = prompts[i].row "
                  "(null: only the top-5 per position is stored)",
        "sliding_window": window,
        "no_window_max_abs_diff": no_window_diff,
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

    main_ppl = perplexity(args.ppl_seq)
    extra = [perplexity(s) for s in args.ppl_extra_seq]
    print(f"perplexity L={args.ppl_seq}: {main_ppl['perplexity']:.4f} over {main_ppl['windows']} windows, "
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
                    f"{eos_id}, {tok.decode([eos_id])}) — it always runs {GREEDY_TOKENS} steps",
        "near_tie_threshold": 0.5,
        "total_s": round(time.perf_counter() - t_greedy, 3),
        "generations": gens,
    })


if __name__ == "__main__":
    main()
