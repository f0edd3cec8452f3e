#!/usr/bin/env bash
# Rehearses the one-call GPU check here, without a GPU, as far as it can go:
#   1. check.sh without the archive ends with exit 2 and a summary.json that names the missing archive;
#   2. the archive (scripts/gpu/prepare.sh, unless .gpu/bundle.tar.xz exists) is under its limit, unpacks, and
#      check.sh runs every step to an end (each fails for want of a GPU), names what is missing, and still writes
#      summary.json and gpu-check.tar.gz;
#   3. the inflated SmolLM2 has the real file's size and is served by the CPU build: a completion comes back.
# Usage: scripts/gpu/rehearse.sh   (needs target/release/teal for step 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "rehearsal FAILED: $*" >&2; exit 1; }

# 1. No archive.
mkdir -p "$tmp/empty/scripts" && cp -r scripts/gpu "$tmp/empty/scripts/"
rc=0
OUT=$tmp/out1 "$tmp/empty/scripts/gpu/check.sh" >"$tmp/log1" 2>&1 || rc=$?
[ $rc -eq 2 ] || fail "without the archive check.sh exited $rc, not 2"
grep -q "bundle.tar.xz: run scripts/gpu/prepare.sh" "$tmp/out1/summary.json" || fail "summary.json does not name the archive"
echo "1. no archive: exit 2, summary.json names it"

# 2. The archive, and every step without a GPU.
[ -f .gpu/bundle.tar.xz ] || scripts/gpu/prepare.sh
size=$(stat -c %s .gpu/bundle.tar.xz)
tree=$(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1)
[ $((size + tree)) -lt $((64 * 1048576)) ] || fail "archive $size + tracked files $tree bytes is over 64 MiB"
rc=0
OUT=$tmp/out2 TEAL_GPU_WORK=$tmp/work scripts/gpu/check.sh >"$tmp/log2" 2>&1 || rc=$?
python3 - "$tmp/out2/summary.json" <<'PY' || fail "summary.json after a run without a GPU: $(cat "$tmp/out2/summary.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["commit"], "no commit"
assert set(s["steps"]) >= {"kernels", "serving", "serve"}, s["steps"]
assert all(v["status"] != "ok" for k, v in s["steps"].items() if k != "peer"), "a GPU step passed without a GPU"
assert any("nvidia-smi" in m for m in s["missing"]), s["missing"]
PY
tar -xOzf "$tmp/out2/gpu-check.tar.gz" gpu-check/kernels.log | grep -q -i "cuda" ||
  fail "gpu-check.tar.gz lacks a kernel log that says CUDA is missing"
echo "2. archive $((size / 1048576)) MiB + tree $((tree / 1048576)) MiB; steps ran to an end without a GPU:"
python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["steps"]))' "$tmp/out2/summary.json"

# 3. The inflated SmolLM2 on the CPU build.
gguf=$tmp/work/models/smollm2.gguf
[ "$(stat -c %s "$gguf")" = "$(stat -c %s models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)" ] || fail "inflated size differs"
port=$((20000 + RANDOM % 20000))
TEAL_ADMIN_TOKEN=rehearsal-token-0123456789 TEAL_STATE_DIR=$tmp/state target/release/teal serve \
  --model "$gguf" --port "$port" --admin-port $((port + 1)) --threads 2 >"$tmp/serve.log" 2>&1 &
pid=$!
for _ in $(seq 120); do curl -fs "localhost:$port/health/ready" >/dev/null 2>&1 && break; sleep 1; done
answer=$(curl -fs "localhost:$port/v1/completions" -H 'content-type: application/json' \
  -d '{"model":"smollm2","prompt":"The capital of France is","max_tokens":8,"ignore_eos":true}' || true)
kill $pid; wait $pid 2>/dev/null || true
echo "$answer" | grep -q '"completion_tokens":8' || fail "the inflated model did not answer: $answer $(tail -n 5 "$tmp/serve.log")"
echo "3. inflated SmolLM2 ($(stat -c %s "$gguf") bytes) served on the CPU: 8 tokens"
echo "rehearsal passed"
