#!/usr/bin/env bash
# The serve step of scripts/gpu/check.sh: both slots on cuda:0 (SmolLM2 Q4_1, inflated), teal bench serve at
# 1/8/32, a flip every second under load, the first requests after a flip to a warmed and an unwarmed standby,
# and park/wake times. Usage: serve_bench.sh WORK SMOLLM_GGUF RESULTS
set -uo pipefail
WORK=$1 SMOLLM=$2 RES=$3
TEAL=$WORK/bin/teal
models=$WORK/serve-models
mkdir -p "$models" && ln -sfn "$SMOLLM" "$models/smollm2.gguf" && ln -sfn "$SMOLLM" "$models/smollm2-b.gguf"
export TEAL_ADMIN_TOKEN=gpu-check-token-0123456789 TEAL_STATE_DIR=$WORK/state
"$TEAL" serve --models-dir "$models" --blue smollm2.gguf --green smollm2.gguf --device cuda:0 \
  --served-model-name smollm2 >"$RES/serve-server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 180); do
  curl -fs localhost:8080/health/ready >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || break # the server exited: no point waiting
  sleep 1
done
curl -fs localhost:8080/health/ready >/dev/null || { echo "the server never became ready" >&2; tail "$RES/serve-server.log" >&2; exit 1; }
"$TEAL" admin status >"$RES/slots.json"
"$TEAL" bench serve --concurrency 1,8,32 --requests 48 --input-len 128 --output-len 128 --json "$RES/serve.json"
"$TEAL" bench flip --concurrency 8 --duration-s 20 --flip-every-ms 1000 --json "$RES/flip.json"
"$TEAL" bench cold-warm --standby-model smollm2-b.gguf --requests 32 --json "$RES/coldwarm.json"
t0=$(date +%s%N)
"$TEAL" admin park green && "$TEAL" admin wake green
ms=$((($(date +%s%N) - t0) / 1000000))
printf '{"park_then_wake_s": %d.%03d}\n' $((ms / 1000)) $((ms % 1000)) >"$RES/timings.json"
"$TEAL" admin status >"$RES/slots-after.json"
curl -s localhost:8080/metrics | grep -E "teal_kernel_module_loads_total|teal_gpu_" >"$RES/metrics.txt"
