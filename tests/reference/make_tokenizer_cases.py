#!/usr/bin/env python3
"""Writes tests/reference/tokenizer_cases.json: golden token ids and chat renderings for
SmolLM2-135M-Instruct (GGUF Q4_1), made with Hugging Face transformers' own GGUF tokenizer
loader (an implementation independent of ours). With --model gemma-3-270m-q4_k_m.gguf --out
golden/gemma3/tokenizer_cases.json the same for Gemma 3's SentencePiece vocabulary, with a few
texts of its own (its turn markers, byte fallback) and Gemma's chat template (the base model
ships none; GEMMA_TEMPLATE in make_golden.py, as adaptkit's).

Run inside the reference venv (scripts/reference-env.sh prints its python):

    "$(scripts/reference-env.sh)" tests/reference/make_tokenizer_cases.py [--model PATH] [--out FILE]

Every text below was written for this file. Ids are produced with add_special_tokens=False
(the GGUF says tokenizer.ggml.add_bos_token = false anyway). Special-token strings inside a text
(e.g. "<|im_start|>") are matched as special tokens, as transformers does by default.

Note: HF's GPT-2 byte-level BPE splits "\n\nword" into two "\n" tokens; llama.cpp's "smollm"
pre-tokenizer gives one "\n\n" token there. The HF tokenizer is the reference.
"""
import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = Path(os.environ.get("ADAPTKIT_HOME", Path.home() / ".cache/adaptkit")) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

LONG_PARAGRAPH = (
    "The lighthouse keeper kept two logbooks. In the first she wrote what the rules required: "
    "wind direction, visibility in nautical miles, the hour the lamp was lit and the hour it was "
    "put out. In the second, which nobody had asked for, she wrote everything else — the gannets "
    "that came back every March, the fishing boat whose engine coughed twice before it caught, "
    "the winter the harbour froze so hard that children walked out to the breakwater and back. "
    "When the light was automated in 1987 the inspectors took the first logbook to an archive on "
    "the mainland. The second one stayed on the shelf above the stove, and visitors who asked "
    "politely were allowed to read a page or two, as long as they didn't lick their fingers to "
    "turn them."
)

TEXTS = [
    # plain prose and casing
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "HELLO world, MiXeD CaSe and don't, won't, it's, we'll, they're, I'd, you've.",
    # numbers
    "12345",
    "3.14159",
    "1,000,000",
    "Call 555-0199 before 09:30 on 2024-02-29; pay $4.99 or 1e-9 units (~0.5%).",
    "x = -42 + 7.0e+3 * 0x1F",
    # code
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "class Stack:\n\tdef __init__(self):\n\t\tself.items = []  # trailing comment\n",
    "fn main() {\n    let v: Vec<u32> = (1..=10).filter(|x| x % 2 == 0).collect();\n    println!(\"{:?}\", v);\n}\n",
    "impl<'a, T: Clone + Send> Iterator for Chunks<'a, T> { type Item = &'a [T]; }",
    '{"name": "adaptkit", "version": "0.1.0", "tags": ["rust", "llm"], "ok": true, "n": null}',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "<div class=\"card\"><a href=\"https://example.org/a?b=c&d=e\">link</a></div>",
    # emoji, including ZWJ sequences, skin tones and flags
    "I love pizza 🍕 and rockets 🚀!",
    "family: 👨‍👩‍👧‍👦, technologist: 🧑🏽‍💻, rainbow flag: 🏳️‍🌈",
    "flags: 🇫🇷 🇯🇵 🇧🇷 🇺🇦",
    "👍🏻👍🏿 ❤️ ✨",
    # CJK
    "我喜欢在早上喝茶。",
    "東京は日本の首都です。ひらがなとカタカナ。",
    "한국어 문장도 토큰화합니다.",
    # right-to-left scripts
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "שלום עולם, מה שלומך?",
    # accents and other Latin/Cyrillic/Greek
    "café naïve façade Ångström Øresund jalapeño über straße",
    "Привет, мир! Καλημέρα κόσμε.",
    "e\u0301 (combining acute) vs \u00e9 (precomposed)",
    # whitespace runs
    "two  spaces, three   spaces, eight        spaces",
    "tab\there\t\tand\t\t\tthere",
    "\n\n\n",
    "trailing spaces   ",
    "   leading spaces",
    "Paragraph one.\n\nParagraph two.",
    "line\r\nwindows line\r\n",
    " ",
    # chat markup and special tokens
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    # odd characters
    "zero\u200bwidth and non\u00a0breaking and soft\u00adhyphen",
    "math: ∀x ∈ ℝ, x² ≥ 0 ⇒ √(x²) = |x|",
    # empty and long
    "",
    LONG_PARAGRAPH,
]

# Gemma's own: turn markers, its user-defined whitespace pieces, characters only byte fallback
# spells, and unknown control tokens.
GEMMA_TEXTS = [
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a literal BOS",
    "ancient glyphs: \U00012000\U00012001 and \u0fff\u0378 unassigned",
    "tabs\t\t\tand      six spaces\n\n\n\nfour newlines",
    "<unused0> <mask> [multimodal]",
]

CHATS = [
    {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "You are a careful Rust reviewer."},
            {"role": "user", "content": "Is `let x = 5; x = 6;` valid?"},
            {"role": "assistant", "content": "No: `x` is immutable. Declare it with `let mut x = 5;`."},
            {"role": "user", "content": "Thanks! And shadowing?"},
        ],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "user", "content": "Say hi in Japanese."},
            {"role": "assistant", "content": "こんにちは (konnichiwa)!"},
        ],
        "add_generation_prompt": False,
    },
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dump_compact(obj):
    """JSON with one line per case / chat, so diffs of regenerated data stay readable."""
    lines = ["{"]
    items = list(obj.items())
    for i, (k, v) in enumerate(items):
        sep = "," if i + 1 < len(items) else ""
        if isinstance(v, list):
            inner = ",\n".join("  " + json.dumps(x, ensure_ascii=False) for x in v)
            lines.append(f" {json.dumps(k)}: [\n{inner}\n ]{sep}")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{sep}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--out", default=str(HERE / "tokenizer_cases.json"))
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gguf
    import transformers
    from transformers import AutoTokenizer

    model = Path(args.model)
    tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    reader = gguf.GGUFReader(str(model))
    byte_level = reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    texts = TEXTS if byte_level else TEXTS + GEMMA_TEXTS
    if tok.chat_template is None:
        sys.path.insert(0, str(HERE))
        from make_golden import GEMMA_TEMPLATE
        tok.chat_template = GEMMA_TEMPLATE

    cases = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        # Byte-level BPE is lossless except around special tokens; check the round trip.
        back = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if back != text:
            print(f"warning: decode(encode(x)) != x for {text!r}: {back!r}", file=sys.stderr)
        cases.append({"text": text, "ids": ids})

    # Cross-check: SmolLM2's upstream tokenizer.json splits digits individually before the
    # byte-level regex; the GGUF converter in transformers does not. They must agree here.
    from tokenizers import Tokenizer, pre_tokenizers
    upstream = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    upstream.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    for c in cases if byte_level else []:
        alt = upstream.encode(c["text"], add_special_tokens=False).ids
        if alt != c["ids"]:
            sys.exit(f"digit pre-tokenizer disagrees on {c['text']!r}: {c['ids']} vs {alt}")

    chats = []
    for chat in CHATS:
        rendered = tok.apply_chat_template(
            chat["messages"], tokenize=False, add_generation_prompt=chat["add_generation_prompt"]
        )
        chats.append({**chat, "rendered": rendered})

    out = {
        "model": model.name,
        "sha256": sha256(model),
        "transformers": transformers.__version__,
        "tokenizers": __import__("tokenizers").__version__,
        "add_special_tokens": False,
        "gguf_add_bos_token": bool(reader.fields["tokenizer.ggml.add_bos_token"].contents()),
        "cases": cases,
        "chat": chats,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(dump_compact(out))
    print(f"wrote {args.out}: {len(cases)} cases, {len(chats)} chats", file=sys.stderr)


if __name__ == "__main__":
    main()
