#!/usr/bin/env bash
# On the build machine (no GPU needed): builds the CUDA binary and the GPU test binary and stages what the GPU
# machine needs in .gpu/ (git-ignored), for the device tool's `carry`. Usage: scripts/gpu/prepare.sh
# The device tool carries at most 64 MiB per call: .gpu/bin (teal, ~40 MB stripped) and .gpu/test (the kernel
# tests) go in separate calls; SmolLM2's 98 MB GGUF goes as two halves (.gpu/smollm-a, .gpu/smollm-b), one per
# call, joined there by scripts/gpu/check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .cuda/env.sh ] || scripts/setup-cuda.sh .cuda
# shellcheck disable=SC1091
source .cuda/env.sh
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda}
scripts/fetch-models.sh >/dev/null
cargo build --release --features cuda --bin teal
test_bin=$(cargo test --release --features cuda --test cuda_kernels --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
rm -rf .gpu && mkdir -p .gpu/bin .gpu/test .gpu/smollm-a .gpu/smollm-b
strip -o .gpu/bin/teal "$CARGO_TARGET_DIR/release/teal"
strip -o .gpu/test/cuda_kernels "$test_bin"
cp -r ../shared/models/stories260K .gpu/test/
gguf=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
split -n 2 -d "$gguf" .gpu/smollm-x
mv .gpu/smollm-x00 .gpu/smollm-a/part && mv .gpu/smollm-x01 .gpu/smollm-b/part
sha256sum "$gguf" | cut -d' ' -f1 > .gpu/smollm-b/sha256
du -sh .gpu/*
