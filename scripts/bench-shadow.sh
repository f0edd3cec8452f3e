#!/usr/bin/env bash
# What shadow traffic costs the live slot: one teal server with SmolLM2 in both slots; `teal bench serve` runs
# alternately with no rollout and with a rollout held at 0.01% whose shadow rate is RATE (default 0.05), PAIRS
# times (default 3); prints the live slot's ITL and TTFT p50 of each run. Usage: scripts/bench-shadow.sh [RATE] [PAIRS]
# Needs target/release/teal and models/ (scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-0.05}
PAIRS=${2:-3}
MODEL=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
TOKEN=bench-shadow-token
STATE=$(mktemp -d)
PORT=${PORT:-18480}
ADMIN=${ADMIN_PORT:-18481}
./target/release/teal serve --blue "$MODEL" --green "$MODEL" --models-dir models --port "$PORT" --admin-port "$ADMIN" \
  --admin-token "$TOKEN" --state-dir "$STATE" > "$STATE/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$STATE"' EXIT
admin() { curl -sf -H "Authorization: Bearer $TOKEN" "$@"; }
for _ in $(seq 600); do
  if admin "http://127.0.0.1:$ADMIN/admin/slots" 2>/dev/null | grep -q '"state":"ready"'; then break; fi
  sleep 0.5
done
run() { # label
  ./target/release/teal bench serve --url "http://127.0.0.1:$PORT" --concurrency 4 --requests 96 --input-len 128 \
    --output-len 64 --json "$STATE/$1.json" > /dev/null
  python3 - "$STATE/$1.json" "$1" <<'PY'
import json, sys
def find(v):
    if isinstance(v, dict):
        if "itl_ms" in v:
            return v
        v = list(v.values())
    if isinstance(v, list):
        for x in v:
            f = find(x)
            if f:
                return f
s = find(json.load(open(sys.argv[1]))["results"])
print(f"{sys.argv[2]:>10}: ITL p50 {s['itl_ms']['p50']:.2f} ms, TTFT p50 {s['ttft_ms']['p50']:.1f} ms, "
      f"{s['output_token_throughput']:.1f} tok/s, errors {s['errors']}")
PY
}
for i in $(seq "$PAIRS"); do
  run "off-$i"
  ID=$(admin -X POST "http://127.0.0.1:$ADMIN/admin/rollouts" -H 'content-type: application/json' \
    -d "{\"steps\": [0.01, 100], \"step_interval_s\": 86400, \"shadow_rate\": $RATE}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  run "shadow-$i"
  admin "http://127.0.0.1:$ADMIN/admin/rollouts/$ID" | python3 -c '
import json, sys
v = json.load(sys.stdin)["shadow"]
print("            shadow: %s vs canary, %s A/A, %s shed; agreement %s" % (v["compared"], v["aa_compared"], v["shed"], v["agreement"]))'
  admin -X POST "http://127.0.0.1:$ADMIN/admin/rollouts/$ID/abort" > /dev/null
  sleep 1
done
