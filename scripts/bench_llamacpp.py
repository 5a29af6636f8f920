#!/usr/bin/env python3
"""llama.cpp peer benchmark (through llama-cpp-python), driven by scripts/bench-llamacpp.sh.

Measures, on one GGUF, with n_threads=2 and a single sequence (batch 1):
  prefill_tok_s  tokens/s of one llama_decode over a PROMPT_TOKENS-token prompt (--prompt N)
  decode_tok_s   tokens/s over GEN_TOKENS greedy steps (argmax over the logits, one token each)
  peak_rss_mb    peak resident set size (MiB, ru_maxrss) of the process that loaded the model
                 and ran both phases
Each run is a fresh subprocess; one warm-up run is discarded, then the median of RUNS runs is
reported. Inside every run the model is warmed up once (a short prefill + decode) before timing.
The last stdout line is one JSON object; everything else goes to stderr.

    python bench_llamacpp.py --model M [--runs 3] [--threads 2] [--check-golden logits.json]

--check-golden also evaluates the prompts of tests/reference/golden/logits.json with llama.cpp
and reports (stderr and a "golden_check" key) how far its last-token logits are from the
transformers reference: a cross-check of the two independent implementations.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT_TOKENS = 128
GEN_TOKENS = 128

# Text the benchmark prompt is cut from (written for this file; tokenized by llama.cpp itself).
PROMPT_TEXT = (
    "The harbour master kept a ledger of every boat that entered the bay, and in the margin of "
    "each page she drew the weather: a small sun, a cloud, three slanting lines for rain. Over "
    "thirty years the drawings became a record that nobody had planned. Scientists from the "
    "university later used them to reconstruct the storms of a whole generation, comparing the "
    "number of rainy days in each decade with the catch of herring and the price of coal. They "
    "found that the harbour had grown wetter, that the boats had grown larger, and that the "
    "harbour master had never once missed a day. When asked why she had drawn the weather at "
    "all, she said that a ledger without weather was only half a story, and that numbers alone "
    "never told you whether the men had come home cold."
)


def last_logits(llm):
    """The logits of the last token of the last llm.eval() batch (a view, not a copy).

    llama-cpp-python 0.3.x no longer copies logits into Llama.scores unless logits_all=True,
    so they are read straight from the context."""
    import ctypes

    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(llm.n_vocab(),))


def child(args):
    import numpy as np
    from llama_cpp import Llama

    # The context holds the prompt and the generated tokens; one batch takes the whole prompt.
    n_ctx = max(512, args.prompt + args.gen)
    llm = Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    ids = llm.tokenize(PROMPT_TEXT.encode(), add_bos=False, special=False)
    while len(ids) < args.prompt:
        ids = ids + ids
    prompt = ids[:args.prompt]

    def run():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        out = []
        for _ in range(args.gen):
            nxt = int(np.argmax(last_logits(llm)))
            out.append(nxt)
            llm.eval([nxt])
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out

    # In-process warm-up: page in the weights, let the thread pool spin up.
    llm.reset()
    llm.eval(prompt[:16])
    for _ in range(4):
        llm.eval([int(np.argmax(last_logits(llm)))])

    prefill_s, decode_s, out = run()
    print(json.dumps({
        "prefill_tok_s": args.prompt / prefill_s,
        "decode_tok_s": args.gen / decode_s,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "generated": out,
    }))


def check_golden(model, path, threads):
    import numpy as np
    from llama_cpp import Llama

    meta = json.load(open(path, encoding="utf-8"))
    rows = np.fromfile(os.path.join(os.path.dirname(path), meta["file"]), dtype="<f4")
    rows = rows.reshape(len(meta["prompts"]), meta["vocab_size"])
    llm = Llama(model_path=model, n_ctx=1024, n_batch=1024, n_ubatch=1024,
                n_threads=threads, n_threads_batch=threads, verbose=False)
    report = []
    for p in meta["prompts"]:
        llm.reset()
        llm.eval(p["ids"])
        got = np.array(last_logits(llm), dtype=np.float32)
        ref = rows[p["row"]]
        report.append({
            "name": p["name"],
            "max_abs_diff": float(np.abs(got - ref).max()),
            "mean_abs_diff": float(np.abs(got - ref).mean()),
            "argmax_ref": int(ref.argmax()),
            "argmax_llamacpp": int(got.argmax()),
        })
        print(f"golden {p['name']}: max|diff| {report[-1]['max_abs_diff']:.4f} "
              f"mean {report[-1]['mean_abs_diff']:.4f} argmax {report[-1]['argmax_ref']} vs "
              f"{report[-1]['argmax_llamacpp']}", file=sys.stderr)
    return {
        "prompts": len(report),
        "argmax_agree": sum(r["argmax_ref"] == r["argmax_llamacpp"] for r in report),
        "max_abs_diff": max(r["max_abs_diff"] for r in report),
        "mean_abs_diff": statistics.mean(r["mean_abs_diff"] for r in report),
        "per_prompt": report,
    }


def one_run(args):
    """Run the child in a fresh process; return its result and its peak RSS in MiB."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model,
           "--threads", str(args.threads), "--gen", str(args.gen), "--prompt", str(args.prompt)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"benchmark child failed with status {proc.returncode}")
    res = json.loads(out.decode().strip().splitlines()[-1])
    res["peak_rss_mb"] = rusage.ru_maxrss / 1024.0  # Linux: KiB
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gen", type=int, default=GEN_TOKENS)
    ap.add_argument("--prompt", type=int, default=PROMPT_TOKENS, help="prompt tokens")
    ap.add_argument("--check-golden", metavar="LOGITS_JSON")
    ap.add_argument("--build", default="unknown", help="how llama.cpp was built (reported)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import llama_cpp

    # ggml's worker threads spin while they wait for each other; with n_threads equal to the
    # core count, any other busy process (a compiler, a test run) makes the numbers collapse
    # (seen here: decode 111 tok/s idle, ~1 tok/s beside a cargo build). Say so.
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: 1-minute load average is {load_before:.2f}; other processes will "
              "distort this benchmark, run it on an idle machine", file=sys.stderr)
    print("warm-up run…", file=sys.stderr)
    one_run(args)
    runs = []
    for i in range(args.runs):
        r = one_run(args)
        print(f"run {i + 1}/{args.runs}: prefill {r['prefill_tok_s']:.1f} tok/s, decode "
              f"{r['decode_tok_s']:.1f} tok/s, peak RSS {r['peak_rss_mb']:.1f} MiB", file=sys.stderr)
        runs.append(r)
    result = {
        "peer": "llama.cpp",
        "version": f"llama-cpp-python {llama_cpp.__version__}",
        "build": args.build,
        "prefill_tok_s": round(statistics.median(r["prefill_tok_s"] for r in runs), 2),
        "decode_tok_s": round(statistics.median(r["decode_tok_s"] for r in runs), 2),
        "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
        "threads": args.threads,
        "prompt_tokens": args.prompt,
        "gen_tokens": args.gen,
        "runs": args.runs,
        "model": os.path.basename(args.model),
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "all_runs": [{k: round(r[k], 2) for k in ("prefill_tok_s", "decode_tok_s", "peak_rss_mb")}
                     for r in runs],
    }
    if args.check_golden:
        result["golden_check"] = check_golden(args.model, args.check_golden, args.threads)
        result["golden_check"].pop("per_prompt")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
