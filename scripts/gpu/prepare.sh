#!/usr/bin/env bash
# On the build machine (no GPU needed): builds the CUDA binary and the GPU test binaries and packs everything the
# GPU check needs into ONE archive, .gpu/bundle.tar.xz (git-ignored), small enough for the device tool's carry
# (the whole travelling tree must stay under 64 MiB). Then one device call runs it all:
#   carry [".gpu"], command "scripts/gpu/check.sh"        (see scripts/gpu/README.md)
# The archive holds: bin/teal and the test binaries cuda_kernels and cuda_serving (stripped), stories260K (real
# weights), and SmolLM2's skeleton (its GGUF header, tokenizer and norms; check.sh regenerates the 98 MB of
# quantized blocks there with scripts/gpu/gguf_skeleton.py, since the real file cannot travel next to the binaries).
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT_MIB=${TEAL_GPU_BUNDLE_LIMIT_MIB:-56} # the tree's tracked files (~4 MiB) travel too
[ -f .cuda/env.sh ] || scripts/setup-cuda.sh .cuda
# shellcheck disable=SC1091
source .cuda/env.sh
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda}
scripts/fetch-models.sh >/dev/null
cargo build --release --features cuda --bin teal
# The test executables by target name (the JSON lists every artifact it built: never take "the last one").
mapfile -t tests < <(cargo test --release --features cuda --test cuda_kernels --test cuda_serving --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("name") in ("cuda_kernels", "cuda_serving"):
        print(m["target"]["name"] + " " + m["executable"])')
[ "${#tests[@]}" -eq 2 ] || { echo "expected the cuda_kernels and cuda_serving test binaries, got: ${tests[*]}" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/models"
strip -o "$stage/bin/teal" "$CARGO_TARGET_DIR/release/teal"
for t in "${tests[@]}"; do
  strip -o "$stage/bin/${t%% *}" "${t#* }"
done
cp -r ../shared/models/stories260K "$stage/models/"
python3 scripts/gpu/gguf_skeleton.py strip models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$stage/models/smollm2-skeleton"
git rev-parse --short=12 HEAD >"$stage/commit"
du -sh "$stage"/bin/* "$stage/models"
rm -rf .gpu && mkdir -p .gpu
tar -C "$stage" -cf - . | xz -T2 -6 >.gpu/bundle.tar.xz
size=$(stat -c %s .gpu/bundle.tar.xz)
echo "bundle: .gpu/bundle.tar.xz, $((size / 1048576)) MiB (limit $LIMIT_MIB MiB)"
if [ "$size" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "the bundle is over $LIMIT_MIB MiB: the device tool would refuse the tree" >&2
  exit 1
fi
