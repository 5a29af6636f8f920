#!/usr/bin/env bash
# The sync server's lane: its process tests (SIGKILL during uploads and aggregation, two server
# processes, 200 devices at once) against a real PostgreSQL (scripts/postgres.sh) and a real S3
# API (moto on loopback), then its OpenAPI document checked against the running server by
# schemathesis. The same tests ran on SQLite and a local directory in `cargo test`; this
# compiles nothing new. Tools come from scripts/install-test-tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/adaptkit-target}"
venv="$HOME/.cache/adaptkit/tools/sync-venv"
work=$(mktemp -d)
# PostgreSQL runs as `postgres` when we are root: it must be able to reach its directory.
chmod 755 "$work"
moto_pid=""
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null
  scripts/postgres.sh stop "$work/pg" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

ADAPTKIT_TEST_POSTGRES=$(scripts/postgres.sh start "$work/pg")
moto_port=$(free_port)
"$venv/bin/moto_server" -p "$moto_port" >"$work/moto.log" 2>&1 &
moto_pid=$!
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT="http://127.0.0.1:$moto_port" AWS_ALLOW_HTTP=true
for _ in $(seq 50); do curl -sf -o /dev/null "$AWS_ENDPOINT/" && break; sleep 0.2; done
curl -sf -X PUT -o /dev/null "$AWS_ENDPOINT/adaptkit-ci"
export ADAPTKIT_TEST_POSTGRES ADAPTKIT_TEST_S3=s3://adaptkit-ci
# The real-model test needs neither; it ran in the main suite.
cargo test --release --workspace --test sync -- --skip eight_devices

echo "== the OpenAPI document against the running server (schemathesis)"
"$CARGO_TARGET_DIR/release/adaptkit" serve --listen 127.0.0.1:0 --dir "$work/server" --rate 0 --json \
  >"$work/serve.json" &
server_pid=$!
for _ in $(seq 50); do [ -s "$work/serve.json" ] && break; sleep 0.2; done
url=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' "$work/serve.json")
# Every check but "schema-valid requests are accepted": a random body cannot be a valid patch,
# and a task's settings have rules across fields that a schema cannot say.
"$venv/bin/schemathesis" run "$url/openapi.json" --checks all --exclude-checks positive_data_acceptance \
  -H "Authorization: Bearer $(cat "$work/server/operator.token")" --max-examples 50 --seed 1
