#!/usr/bin/env bash
# Checks that the CUDA build compiles and is lint-clean (no GPU needed): installs the build-only toolchain
# (scripts/setup-cuda.sh, into .cuda/) when missing, then clippy with `--features cuda` over every target, in its
# own target folder (target/cuda) so it does not rebuild the CPU build's dependencies. CI runs it after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .cuda/env.sh ] || scripts/setup-cuda.sh .cuda
# shellcheck disable=SC1091
source .cuda/env.sh
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-target/cuda}
cargo clippy --release --features cuda --all-targets -- -D warnings
echo "CUDA build checked (features: cuda; compute capability $CUDA_COMPUTE_CAP)"
