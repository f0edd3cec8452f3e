#!/usr/bin/env bash
# Installs a build-only CUDA 13.0 toolchain (nvcc, headers, cudart) from PyPI wheels, so `--features cuda` builds
# on a machine with no GPU and no CUDA install. No GPU is needed to build; the binary runs where a driver >= 580
# (CUDA 13.0) and the CUDA 13 user-space libraries (cuBLAS, cuRAND, cudart) are installed.
#
#   usage: scripts/setup-cuda.sh [PREFIX]            (default PREFIX: .cuda, git-ignored)
#   then:  source PREFIX/env.sh && cargo build --release --features cuda
#
# - nvcc is pinned to 13.0.x: 13.1+ writes PTX ISA 9.1+, which a 13.0 driver (580) refuses to load.
# - candle's cudarc links the CUDA libraries dynamically (libcuda.so.1, libcublas.so.13, libcublasLt.so.13,
#   libcurand.so.10, libcudart.so.13). libcuda is the driver and is never on a build machine, and cuBLAS/cuRAND are
#   571 MB of wheels: the linker gets stub libraries with the same SONAMEs and versioned symbol names instead,
#   generated from cudarc's own bindings (the binary's dynamic section comes out as if linked against the real
#   ones). At run time the real libraries are found through the loader path (see README "Building with CUDA").
# - env.sh pins cudarc's bindings to CUDA 13.0 (CUDARC_CUDA_VERSION) and candle's kernels to sm_90
#   (CUDA_COMPUTE_CAP=90, H100/H200); set CUDA_COMPUTE_CAP before sourcing for another GPU (80 = A100, 89 = L4).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(realpath -m "${1:-.cuda}")
PY=${PYTHON:-python3}
CUDARC_VERSION=0.19.10 # the version Cargo.lock pins (candle-core's)
mkdir -p "$PREFIX"

if [ ! -x "$PREFIX/venv/bin/python" ]; then
  "$PY" -m venv "$PREFIX/venv"
fi
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
CU=$(ls -d "$PREFIX"/venv/lib/python3*/site-packages/nvidia/cu13)

# A CUDA_HOME layout: bin, include, nvvm, lib64 (+ lib64/stubs).
CUDA="$PREFIX/cuda"
mkdir -p "$CUDA/lib64/stubs"
ln -sfn "$CU/bin" "$CUDA/bin"
ln -sfn "$CU/include" "$CUDA/include"
ln -sfn "$CU/nvvm" "$CUDA/nvvm"
for f in "$CU"/lib/*; do ln -sfn "$f" "$CUDA/lib64/"; done
ln -sfn "$CU/lib/libcudart.so.13" "$CUDA/lib64/libcudart.so" # candle-kernels links -lcudart

# Stub libraries from cudarc's bindings: right SONAME, every function cudarc may reference, versioned like the
# real libraries (the driver's libcuda is unversioned).
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
cudarc_src() { ls -d "$CARGO_HOME"/registry/src/*/cudarc-$CUDARC_VERSION 2>/dev/null | head -1; }
if [ -z "$(cudarc_src)" ]; then
  cargo fetch --quiet
fi
SRC=$(cudarc_src)
[ -n "$SRC" ] || { echo "cudarc $CUDARC_VERSION sources not found under $CARGO_HOME/registry" >&2; exit 1; }
stub() { # name soname bindings versioned
  local name=$1 soname=$2 rs=$3 versioned=$4 dir="$CUDA/lib64/stubs"
  grep -oE '^pub unsafe fn [A-Za-z_][A-Za-z0-9_]*' "$SRC/src/$rs" | awk '{print $4}' | sort -u |
    awk '{print "int " $1 "(void) { return 999; }"}' > "$dir/lib$name.c"
  local flags=()
  if [ "$versioned" = 1 ]; then
    printf '%s { global: *; };\n' "$soname" > "$dir/lib$name.map"
    flags=(-Wl,--version-script="$dir/lib$name.map")
  fi
  gcc -shared -fPIC -O0 -Wl,-soname,"$soname" "${flags[@]}" -o "$dir/lib$name.so" "$dir/lib$name.c"
  rm -f "$dir/lib$name.c" "$dir/lib$name.map"
}
stub cuda libcuda.so.1 driver/sys/mod.rs 0
stub cublas libcublas.so.13 cublas/sys/mod.rs 1
stub cublasLt libcublasLt.so.13 cublaslt/sys/mod.rs 1
stub curand libcurand.so.10 curand/sys/mod.rs 1
stub nvrtc libnvrtc.so.13 nvrtc/sys/mod.rs 1

cat > "$PREFIX/env.sh" <<EOF
# Source before \`cargo build --features cuda\` (written by scripts/setup-cuda.sh).
export CUDA_HOME="$CUDA"
export PATH="$CUDA/bin:\$PATH"
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-\$(nproc)}
export LIBRARY_PATH="$CUDA/lib64/stubs:$CUDA/lib64\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
EOF
"$CUDA/bin/nvcc" --version | tail -2
echo "toolchain ready: source $PREFIX/env.sh"
