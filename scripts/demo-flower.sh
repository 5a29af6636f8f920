#!/usr/bin/env bash
# adaptkit in a Flower federation, on loopback: a SuperLink from the pinned flwr, adaptkit's
# ServerApp (federated/flower/), and adaptkit nodes (`adaptkit flower-node`) that each fine-tune
# the real model on their own shard of the bundled journal; the global adapter's held-out
# perplexity is printed each round, and at the end against the base model.
#   scripts/demo-flower.sh [NODES] [ROUNDS]      (default 4 nodes, 3 rounds)
# Environment: RULE (fedavg, ffa, fedit), DENSITY (ComPEFT-code updates, e.g. 0.1), STEPS,
# TARGETS (the adapted projections, e.g. q_proj,v_proj; default all seven), RANK,
# FLOWER_WORK (keep everything in this directory), FLOWER_RECORD=1 (nodes keep what they sent),
# FLOWER_EXTRA_NODE_MODEL (one more node on another model: it must refuse every message),
# FLOWER_EXTRA_CONFIG (more run config, e.g. "dp-noise-multiplier=0.5 dp-clipping-norm=1.0").
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"
nodes=${1:-4}
rounds=${2:-3}
rule=${RULE:-fedavg}
# ADAPTKIT_BIN: an adaptkit already built (the tests pass theirs; no second build).
if [ -z "${ADAPTKIT_BIN:-}" ]; then
  cargo build --release --workspace --bins
fi
adaptkit="${ADAPTKIT_BIN:-$CARGO_TARGET_DIR/release/adaptkit}"
model=$(scripts/fetch-model.sh)
venv=$(scripts/flower-venv.sh)
work=${FLOWER_WORK:-$(mktemp -d)}
mkdir -p "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  [ -n "${FLOWER_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Flower offline and self-contained: its state, config and installed apps under $work.
export PATH="$venv/bin:$PATH" FLWR_HOME="$work/flwr-home" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
mkdir -p "$FLWR_HOME"
port=$(free_port)
setsid flower-superlink --insecure --host 127.0.0.1 --port "$port" --database "$work/superlink.db" \
  --disable-runtime-dependency-installation >"$work/superlink.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null && break; sleep 0.2; done
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local"

[superlink.local]
address = "127.0.0.1:$port"
insecure = true
TOML
echo "SuperLink (flwr $("$venv/bin/python" -c 'import flwr; print(flwr.__version__)')) on http://127.0.0.1:$port"

# The journal's entries in consecutive shards; each shard's last sixth is held out.
python3 scripts/make_shards.py "$work" "$nodes"

init_flags=()
[ "$rule" = ffa ] && init_flags+=(--freeze-a)
[ -n "${TARGETS:-}" ] && init_flags+=(--targets "$TARGETS")
[ -n "${RANK:-}" ] && init_flags+=(--rank "$RANK")
init=$("$adaptkit" flower-init --model "$model" --out "$work/initial" "${init_flags[@]}" --json | tail -1)
base=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["base"])' "$init")

record=()
[ "${FLOWER_RECORD:-0}" = 1 ] && record=(--record)
for d in $(seq 0 $((nodes - 1))); do
  setsid "$adaptkit" flower-node --superlink "http://127.0.0.1:$port" --model "$model" --threads 1 \
    --data "$work/shard-$d.txt" --eval "$work/held-out-$d.txt" --dir "$work/node-$d" "${record[@]}" \
    >"$work/node-$d.log" 2>&1 &
  pids+=($!)
done
if [ -n "${FLOWER_EXTRA_NODE_MODEL:-}" ]; then
  setsid "$adaptkit" flower-node --superlink "http://127.0.0.1:$port" --model "$FLOWER_EXTRA_NODE_MODEL" \
    --data "$work/shard-0.txt" --eval "$work/held-out-0.txt" --dir "$work/node-other" >"$work/node-other.log" 2>&1 &
  pids+=($!)
fi
echo "$nodes adaptkit nodes started, each on its own shard (logs in node-*.log)"

run_config="initial-adapter='$work/initial' base='$base' rule='$rule' num-server-rounds=$rounds min-nodes=$nodes"
run_config+=" steps=${STEPS:-8} batch=2 seq=64 lr=0.005 density=${DENSITY:-0.0} output-dir='$work/global'"
run_config+=" ${FLOWER_EXTRA_CONFIG:-}"
started=$(flwr run federated/flower local --run-config "$run_config" --format json)
run=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["run-id"])' "$started")
echo "run $run: $rounds rounds, rule $rule"
run_started=$(date +%s)
status=""
for _ in $(seq 1800); do
  status=$(flwr ls local --run-id "$run" --format json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["runs"][0]["status"])' 2>/dev/null || true)
  case "$status" in finished:*) break ;; esac
  sleep 1
done
flwr log "$run" local --show 2>/dev/null | grep '\[adaptkit\]' || true
if [ "$status" != "finished:completed" ]; then
  echo "run $run ended as '$status'; the ServerApp's log:" >&2
  flwr log "$run" local --show >&2 || true
  exit 1
fi
ppl() { "$adaptkit" eval --model "$model" --data "$work/held-out.txt" --seq 64 --json "$@" | tail -1 |
  python3 -c "import json, sys; print('%.3f' % json.load(sys.stdin)['perplexity'])"; }
base_ppl=$(ppl)
global_ppl=$(ppl --adapter "$work/global")
echo "the run took $(( $(date +%s) - run_started )) s"
echo "held-out perplexity on the union of the shards: base $base_ppl, global adapter after $rounds rounds $global_ppl"
printf '{"run": "%s", "base_perplexity": %s, "global_perplexity": %s, "work": "%s"}\n' "$run" "$base_ppl" "$global_ppl" "$work"
