#!/usr/bin/env bash
# The test suite: fetches the models the tests use, runs formatting and lint checks, every Rust test, and the
# official OpenAI Python SDK against a live server. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
[ -f ../shared/models/stories260K/config.json ] || { echo "../shared/models/stories260K is missing" >&2; exit 1; }
python3 scripts/module-graph.py --check
python3 scripts/size-check.py
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
scripts/sdk-check.sh
scripts/validate-deploy.sh
