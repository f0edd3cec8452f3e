#!/usr/bin/env bash
# The whole GPU check in one call, on the GPU machine, from the repository root, with .gpu/bundle.tar.xz carried
# (scripts/gpu/prepare.sh made it; scripts/gpu/README.md says how to call it). Every step runs under its own time
# limit and a failure does not stop the next; nothing missing panics: it is named in summary.json instead.
#   1 kernels   tests/cuda_kernels.rs: teal's kernels vs their CPU reference; stories260K and SmolLM2 f32 vs CPU
#   2 serving   tests/cuda_serving.rs: quantized SmolLM2 vs CPU, two models at once, chunked prefill, park/wake
#   3 serve     teal serve (blue and green on cuda:0): bench serve at 1/8/32, flip under load, cold vs warm
#   4 peer      PyTorch transformers generate() on the same GPU (stories260K), same prompts
# Results: $OUT/summary.json (each step's status, seconds and numbers) and $OUT/gpu-check.tar.gz (logs, JSON).
# The limits add up to 520 s, inside the device tool's 600 s per call with the unpacking and inflation.
# Usage: scripts/gpu/check.sh [STEP...]   (default: all four)
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
RES=$(mktemp -d)/gpu-check
WORK=${TEAL_GPU_WORK:-/tmp/teal-gpu}
mkdir -p "$OUT" "$RES"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(kernels serving serve peer)
declare -A status seconds
missing=()

finish() {
  python3 - "$RES" "$OUT/summary.json" "${missing[@]+"${missing[@]}"}" <<'PY'
import json, os, sys
res, out, missing = sys.argv[1], sys.argv[2], sys.argv[3:]
summary = {"missing": missing, "steps": {}}
for line in open(os.path.join(res, "steps.txt")) if os.path.exists(os.path.join(res, "steps.txt")) else []:
    name, st, secs = line.split()
    summary["steps"][name] = {"status": st, "seconds": float(secs)}
for name in ("serve.json", "flip.json", "coldwarm.json", "peer.json", "slots.json", "timings.json"):
    p = os.path.join(res, name)
    if os.path.exists(p):
        try:
            summary[name[:-5]] = json.load(open(p))
        except ValueError as e:
            summary[name[:-5]] = {"unreadable": str(e)}
for name in ("commit", "gpu.txt"):
    p = os.path.join(res, name)
    if os.path.exists(p):
        summary[name.split(".")[0]] = open(p).read().strip()
json.dump(summary, open(out, "w"), indent=1)
print(json.dumps({k: v for k, v in summary.items() if k in ("missing", "steps")}, indent=1))
PY
  tar -C "$(dirname "$RES")" -czf "$OUT/gpu-check.tar.gz" gpu-check
}
trap finish EXIT

# Runs one step under a time limit, recording its status (ok, failed rc=N, timeout) and duration.
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local t0 rc
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >"$RES/$name.log" 2>&1
  rc=$?
  local st=ok
  [ $rc -eq 0 ] || st=failed-rc$rc
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && st=timeout
  local ms=$((($(date +%s%N) - t0) / 1000000))
  printf '%s %s %d.%03d\n' "$name" "$st" $((ms / 1000)) $((ms % 1000)) >>"$RES/steps.txt"
  tail -n 5 "$RES/$name.log"
}

if [ ! -f .gpu/bundle.tar.xz ]; then
  missing+=(".gpu/bundle.tar.xz: run scripts/gpu/prepare.sh on the build machine and carry .gpu")
  echo "${missing[0]}" >&2
  exit 2
fi
rm -rf "$WORK" && mkdir -p "$WORK" && tar -C "$WORK" -xJf .gpu/bundle.tar.xz
cp "$WORK/commit" "$RES/commit"
for f in bin/teal bin/cuda_kernels bin/cuda_serving models/stories260K/config.json models/smollm2-skeleton/header.bin; do
  [ -e "$WORK/$f" ] || missing+=("$f (not in the bundle)")
done
# The CUDA 13 user-space libraries: a toolkit's, or PyTorch's nvidia wheels'.
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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$RES/gpu.txt" 2>&1 ||
  missing+=("nvidia-smi failed: $(head -c 200 "$RES/gpu.txt")")
ldd "$WORK/bin/teal" | grep -E "cuda|cublas|curand" >"$RES/ldd.txt" 2>&1
grep -q "not found" "$RES/ldd.txt" && missing+=("CUDA libraries: $(grep 'not found' "$RES/ldd.txt" | tr '\n' ' ')")
SMOLLM=$WORK/models/smollm2.gguf
python3 scripts/gpu/gguf_skeleton.py inflate "$WORK/models/smollm2-skeleton" "$SMOLLM" >"$RES/inflate.log" 2>&1 ||
  missing+=("SmolLM2 could not be inflated: $(tail -n 1 "$RES/inflate.log")")
export TEAL_STORIES_DIR=$WORK/models/stories260K TEAL_SMOLLM_PATH=$SMOLLM
[ -f "$SMOLLM" ] || steps=("${steps[@]/serving/}")

for s in "${steps[@]}"; do
  case "$s" in
  kernels) step kernels 100 "$WORK/bin/cuda_kernels" --test-threads 1 --nocapture ;;
  serving) step serving 150 "$WORK/bin/cuda_serving" --test-threads 1 --nocapture ;;
  serve) [ -f "$SMOLLM" ] && step serve 210 scripts/gpu/serve_bench.sh "$WORK" "$SMOLLM" "$RES" ;;
  peer) step peer 60 env PYTHONUNBUFFERED=1 python3 scripts/gpu/torch_peer.py "$TEAL_STORIES_DIR" "$RES/peer.json" ;;
  "") ;;
  *) missing+=("unknown step $s") ;;
  esac
done
# The call's exit status says whether everything passed (summary.json says what did not).
[ ${#missing[@]} -eq 0 ] && ! grep -qv " ok " "$RES/steps.txt" 2>/dev/null
