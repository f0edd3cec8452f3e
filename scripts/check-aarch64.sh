#!/usr/bin/env bash
# Checks the aarch64 build from this x86-64 machine (`cargo check` of every target), and runs the NEON kernels
# against the scalar reference on an emulated aarch64 CPU (scripts/neon-check under qemu-user: a plain program,
# as Debian 12's qemu-user cannot run the threads that teal's test binaries start).
#
# rustup cannot fetch another target's standard library here, so this uses Debian's own Rust (`rustc-web`, a
# current release) with its arm64 standard library (multiarch), the aarch64 cross linker and qemu-user. It
# installs them when missing (root and apt needed) and builds in its own target folder (target/aarch64).
# `--no-run` skips qemu (check only).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -qE '^rustc 1\.(8[5-9]|9[0-9])' || need+=(rustc-web cargo-web)
[ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] || need+=(libstd-rust-web-dev:arm64)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR=${AARCH64_TARGET_DIR:-target/aarch64}
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
/usr/bin/cargo check --release --target aarch64-unknown-linux-gnu --all-targets
if [ "${1:-}" != "--no-run" ]; then
  /usr/bin/cargo run --release --manifest-path scripts/neon-check/Cargo.toml --target aarch64-unknown-linux-gnu
fi
echo "aarch64 build checked ($(/usr/bin/rustc --version))"
