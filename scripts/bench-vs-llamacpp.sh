#!/usr/bin/env bash
# Measures teal beside llama.cpp's llama-server in one run on this machine: SmolLM2 Q4_1 through teal, the same
# GGUF dequantized to f32 through teal, and the same GGUF through llama-server; then the latency teal's HTTP
# layer adds. Results go to bench-out/. Needs LLAMA_SERVER=/path/to/llama-server (built from the llama.cpp
# sources inside the llama-cpp-python sdist; see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
GGUF=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p bench-out
cargo build --release --quiet

wait_ready() { for _ in $(seq 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done; echo "not ready: $1" >&2; return 1; }

# The same client for both servers: `teal bench serve`, a different seeded prompt per request (no prefix cache
# helps either server), pooled connections that the peer closed retried once on a fresh one and counted.
run_bench() { # label url
  ./target/release/teal bench serve --url "$2" --model smollm2 --concurrency 1,8 --requests 64 \
    --input-len 128 --output-len 128 --json "bench-out/$1.json"
  ./target/release/teal bench serve --url "$2" --model smollm2 --concurrency 1 --requests 16 \
    --input-len 512 --output-len 1 --json "bench-out/$1-prefill.json"
}

run_teal() { # label dtype
  ./target/release/teal serve --model models/smollm2 --port 18181 --dtype "$2" --threads "$THREADS" > "bench-out/$1.log" 2>&1 &
  local pid=$!
  wait_ready http://127.0.0.1:18181/health/ready
  run_bench "$1" http://127.0.0.1:18181
  kill $pid; wait $pid 2>/dev/null || true
}

run_teal teal-q4_1 auto
run_teal teal-f32 f32
if [ -n "${LLAMA_SERVER:-}" ]; then
  "$LLAMA_SERVER" -m "$GGUF" -t "$THREADS" --port 18182 -c 16384 -np 16 --alias smollm2 > bench-out/llama-server.log 2>&1 &
  pid=$!
  wait_ready http://127.0.0.1:18182/health
  run_bench llama-server-q4_1 http://127.0.0.1:18182
  kill $pid; wait $pid 2>/dev/null || true
fi

# HTTP layer: client round trip of a 1-token completion on stories260K minus the engine's own request time.
./target/release/teal serve --model ../shared/models/stories260K --port 18183 > bench-out/overhead.log 2>&1 &
pid=$!
wait_ready http://127.0.0.1:18183/health/ready
python3 - <<'PY'
import http.client, json, statistics, time
def call(stream):
    c = http.client.HTTPConnection("127.0.0.1", 18183)
    body = json.dumps({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 1, "stream": stream})
    t = time.perf_counter(); c.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    c.getresponse().read(); return time.perf_counter() - t
for _ in range(20): call(False)
def engine_mean():
    c = http.client.HTTPConnection("127.0.0.1", 18183); c.request("GET", "/metrics"); text = c.getresponse().read().decode()
    get = lambda n: float([l for l in text.splitlines() if l.startswith(n)][0].split()[-1])
    return get('teal_request_duration_seconds_sum{model="stories260K"}'), get('teal_request_duration_seconds_count{model="stories260K"}')
s0, n0 = engine_mean()
rt = [call(False) for _ in range(200)]
s1, n1 = engine_mean()
st = [call(True) for _ in range(200)]
eng = (s1 - s0) / (n1 - n0)
out = {"http_p50_ms": 1000 * statistics.median(rt), "http_stream_p50_ms": 1000 * statistics.median(st), "engine_mean_ms": 1000 * eng}
out["http_overhead_ms"] = out["http_p50_ms"] - out["engine_mean_ms"]
print(json.dumps(out)); json.dump(out, open("bench-out/http-overhead.json", "w"))
PY
kill $pid; wait $pid 2>/dev/null || true
