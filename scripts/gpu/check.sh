#!/usr/bin/env bash
# On the GPU machine, from the repository root, after scripts/gpu/prepare.sh staged .gpu/ here (see there):
#   scripts/gpu/check.sh kernels   kernel tests vs the CPU reference, stories260K + SmolLM2 on cuda:0 vs CPU
#   scripts/gpu/check.sh serve     both slots on cuda:0: teal bench serve (1, 8, 32), flip under load, cold/warm
#   scripts/gpu/check.sh peer      PyTorch transformers generate() on the same GPU (stories260K), same prompts
# Results go to $OUT (the device tool's output folder) or ./gpu-out.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
# The CUDA 13 user-space libraries: a toolkit, or PyTorch's nvidia wheels.
libs=$(python3 - <<'PY' 2>/dev/null || true
import glob, site
seen = []
for r in site.getsitepackages():
    for p in glob.glob(r + "/nvidia/**/lib*.so.1[03]", recursive=True):
        d = p.rsplit("/", 1)[0]
        if d not in seen: seen.append(d)
print(":".join(seen))
PY
)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
smollm=.gpu/smollm2.gguf
if [ ! -f $smollm ] && [ -f .gpu/smollm-a/part ] && [ -f .gpu/smollm-b/part ]; then
  cat .gpu/smollm-a/part .gpu/smollm-b/part > $smollm
  [ "$(sha256sum $smollm | cut -d' ' -f1)" = "$(cat .gpu/smollm-b/sha256)" ] || { echo "SmolLM2 halves do not match" >&2; rm $smollm; }
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

case "${1:-}" in
kernels)
  TEAL_STORIES_DIR=.gpu/test/stories260K TEAL_SMOLLM_PATH=$smollm \
    .gpu/test/cuda_kernels --test-threads 1 --nocapture 2>&1 | tee "$OUT/kernels.log"
  ;;
serve)
  mkdir -p /tmp/teal-models && ln -sfn "$PWD/$smollm" /tmp/teal-models/smollm2.gguf
  ln -sfn "$PWD/.gpu/test/stories260K" /tmp/teal-models/stories260K
  export TEAL_ADMIN_TOKEN=gpu-check-token-0123456789 TEAL_STATE_DIR=/tmp/teal-state
  .gpu/bin/teal serve --models-dir /tmp/teal-models --blue smollm2.gguf --green smollm2.gguf --device cuda:0 \
    --served-model-name smollm2 > "$OUT/serve.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 120); do curl -fs localhost:8080/health/ready >/dev/null 2>&1 && break; sleep 1; done
  .gpu/bin/teal admin status > "$OUT/slots.json" || true
  .gpu/bin/teal bench serve --concurrency 1,8,32 --requests 96 --input-len 128 --output-len 128 \
    --json "$OUT/serve.json" 2>&1 | tee "$OUT/bench-serve.txt"
  .gpu/bin/teal bench flip --concurrency 8 --duration-s 20 --flip-every-ms 1000 \
    --json "$OUT/flip.json" 2>&1 | tee "$OUT/bench-flip.txt"
  curl -s localhost:8080/metrics | grep -E "teal_kernel_module_loads_total|teal_gpu_" > "$OUT/metrics.txt" || true
  ;;
peer)
  PYTHONUNBUFFERED=1 python3 scripts/gpu/torch_peer.py .gpu/test/stories260K "$OUT/peer.json" 2>&1 | tee "$OUT/peer.txt"
  ;;
*)
  echo "usage: scripts/gpu/check.sh kernels|serve|peer" >&2
  exit 2
  ;;
esac
