#!/usr/bin/env bash
# Federated adaptation in one command: a sync server on loopback, 8 simulated devices that each
# fine-tune the real model on their own shard of the bundled journal (consecutive months: each
# device sees different things), one round closed when the eighth update arrives (FedAvg of the
# true weight changes B·A), and the shared adapter's held-out perplexity on the union of the
# shards against the base model and against each device's own adapter.
#   scripts/demo-federated.sh [DEVICES]   (default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"
devices=${1:-8}
cargo build --release --workspace --bins
adaptkit="$CARGO_TARGET_DIR/release/adaptkit"
model=$(scripts/fetch-model.sh)
work=$(mktemp -d)
server_pid=""
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT

export ADAPTKIT_OPERATOR_TOKEN="akt_demo_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
"$adaptkit" serve --listen 127.0.0.1:0 --dir "$work/server" --json >"$work/serve.json" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 50); do [ -s "$work/serve.json" ] && break; sleep 0.2; done
url=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' "$work/serve.json")
echo "sync server on $url"

# The journal's entries in consecutive shards; each shard's last sixth is held out.
python3 scripts/make_shards.py "$work" "$devices"

created=$("$adaptkit" sync task create --server "$url" --model "$model" --name journal --rule fedavg \
  --min-clients "$devices" --max-clients "$devices" --steps 8 --batch 2 --seq 64 --lr 5e-3 --json | tail -1)
task=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["task"])' "$created")
token=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["enrol_token"])' "$created")
echo "task $task: $devices devices, each trains 8 steps on its shard and uploads its update"
for d in $(seq 0 $((devices - 1))); do
  "$adaptkit" sync enrol --server "$url" --task "$task" --token "$token" --dir "$work/device-$d" --name "device $d" >/dev/null
  "$adaptkit" sync push --model "$model" --data "$work/shard-$d.txt" --dir "$work/device-$d" \
    --out-dir "$work/device-$d/own"
done
# The eighth update closed the round; wait for its aggregate (round 2 opens with it).
for _ in $(seq 240); do
  round=$("$adaptkit" sync status --dir "$work/device-0" --json | tail -1 |
    python3 -c 'import json, sys; print((json.load(sys.stdin)["round"] or {}).get("round", 0))')
  [ "$round" -ge 2 ] && break
  sleep 0.5
done
"$adaptkit" sync status --dir "$work/device-0"
"$adaptkit" sync pull --model "$model" --dir "$work/device-0" --out-dir "$work/shared"

ppl() { "$adaptkit" eval --model "$model" --data "$work/held-out.txt" --seq 64 --json "$@" | tail -1 |
  python3 -c "import json, sys; print('%.2f' % json.load(sys.stdin)['perplexity'])"; }
echo
echo "held-out perplexity on the union of the $devices shards:"
echo "  base model:              $(ppl)"
echo "  shared adapter (round 1): $(ppl --adapter "$work/shared")"
for d in $(seq 0 $((devices - 1))); do
  echo "  device $d alone:          $(ppl --adapter "$work/device-$d/own")"
done
