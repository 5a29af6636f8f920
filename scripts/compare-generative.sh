#!/usr/bin/env bash
# GenerativeAdapter against its alternatives, in one run (README, "Personalize from a context").
# Contexts of about 1k, 4k and 16k tokens from the start of data/sample/journal.txt (text the
# generator never saw: it was trained on Python's documentation); held-out text: the journal's
# last entries. For each context: held-out perplexity with (a) the base model, (b) the context
# in the prompt before every window, (c) a LoRA trained on the context with `train`'s defaults,
# (d) the adapter the generator makes from it (`adaptkit personalize`), with the wall time and
# peak memory (max RSS) of what each needs beyond the base: (b) the scoring pass with the
# context, (c) training, (d) personalizing (and, beside it in the JSON, a plain perplexity pass
# over the same context). Results: markdown on stdout, JSON lines in $OUT/results.jsonl.
#   OUT (target/compare-generative), SIZES ("1000 4000 16000"), HELD_OUT_CHARS (7000),
#   GENERATOR (default: the one `adaptkit fetch` installs)
# shellcheck source=cli-prelude.sh
. "$(dirname "$0")/cli-prelude.sh"

out="${OUT:-target/compare-generative}"
rm -rf "$out" && mkdir -p "$out"
journal=data/sample/journal.txt
held_chars="${HELD_OUT_CHARS:-7000}"
seq=512
generator=(${GENERATOR:+--generator "$GENERATOR"})

# Held-out text: the journal's last entries (whole lines); the contexts come from before them.
python3 - "$journal" "$held_chars" "$out" <<'PY'
import sys
text, held, out = open(sys.argv[1]).read(), int(sys.argv[2]), sys.argv[3]
cut = text.index("\n\n", len(text) - held) + 2
open(f"{out}/held-out.txt", "w").write(text[cut:])
open(f"{out}/source.txt", "w").write(text[:cut])
PY

# Runs a command, recording its wall seconds and max RSS (MiB) in $out/cost; stdout kept.
measure() {
  /usr/bin/time -f "%e %M" -o "$out/cost" "$@"
}
cost() { awk '{ printf "%.1f s, %.0f MiB", $1, $2 / 1024 }' "$out/cost"; }
cost_json() { awk '{ printf "{\"seconds\": %s, \"max_rss_mib\": %.0f}", $1, $2 / 1024 }' "$out/cost"; }
# The perplexity of a `--json` run's last line; fails quietly when the run printed none.
ppl() { python3 -c 'import json,sys; lines=sys.stdin.read().strip().splitlines(); sys.exit(1) if not lines else print("%.3f" % json.loads(lines[-1])["perplexity"])'; }

eval_ppl() { "$adaptkit" eval --model "$model" --data "$out/held-out.txt" --seq $seq --json "$@" 2>/dev/null | ppl; }

base=$(eval_ppl)
echo "| context tokens | (a) base | (b) context in prompt | (c) LoRA on the context | (d) generated adapter | (d) keeps of (c)'s log-ppl gain |"
echo "|---|---|---|---|---|---|"

# Characters per token of this text, from the generator's own count of the whole source.
"$adaptkit" personalize --model "$model" "${generator[@]}" --context "$out/source.txt" --out "$out/probe" --json >"$out/probe.json" 2>/dev/null
chars_per_token=$(python3 -c 'import json,os,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(os.path.getsize(sys.argv[2]) / r["tokens"])' "$out/probe.json" "$out/source.txt")

for size in ${SIZES:-1000 4000 16000}; do
  ctx="$out/context-$size.txt"
  python3 - "$out/source.txt" "$size" "$chars_per_token" "$ctx" <<'PY'
import sys
text, size, cpt, out = open(sys.argv[1]).read(), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
want = int(size * cpt)
if want >= len(text):
    sys.exit(f"the source has about {len(text) / cpt:.0f} tokens, fewer than {size}")
open(out, "w").write(text[: text.index("\n", want) + 1])
PY
  # (d) the generated adapter.
  measure "$adaptkit" personalize --model "$model" "${generator[@]}" --context "$ctx" --out "$out/generated-$size" --json >"$out/personalize-$size.json" 2>/dev/null
  tokens=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["tokens"])' "$out/personalize-$size.json")
  generated_cost=$(cost); generated_json=$(cost_json)
  # One plain forward pass over the same context (a perplexity run), for the cost in passes.
  measure "$adaptkit" eval --model "$model" --data "$ctx" --seq $seq --json >/dev/null 2>&1
  pass_json=$(cost_json)
  generated=$(eval_ppl --adapter "$out/generated-$size")
  # (b) the context in the prompt (only while context + window fit the model's 8192 positions).
  if prompt=$(measure "$adaptkit" eval --model "$model" --data "$out/held-out.txt" --seq $seq --prefix "$ctx" --json 2>/dev/null | ppl); then
    prompt_cost=$(cost); prompt_json=$(cost_json)
  else
    prompt="does not fit"; prompt_cost="-"; prompt_json=null
  fi
  # (c) a LoRA trained on the context with `train`'s defaults.
  measure "$adaptkit" train --model "$model" --data "$ctx" --out "$out/lora-$size" --json >/dev/null 2>&1
  lora_cost=$(cost); lora_json=$(cost_json)
  lora=$(eval_ppl --adapter "$out/lora-$size")
  kept=$(python3 -c 'import math,sys; b,l,g=map(float,sys.argv[1:]); print("%.0f%%" % (100*math.log(b/g)/math.log(b/l)) if b>l else "-")' "$base" "$lora" "$generated")
  echo "| $tokens | $base | $prompt ($prompt_cost) | $lora ($lora_cost) | $generated ($generated_cost) | $kept |"
  echo "{\"context_tokens\": $tokens, \"base\": $base, \"prompt\": \"$prompt\", \"prompt_cost\": $prompt_json, \"lora\": $lora, \"lora_cost\": $lora_json, \"generated\": $generated, \"generated_cost\": $generated_json, \"forward_pass_cost\": $pass_json}" >>"$out/results.jsonl"
done
