#!/usr/bin/env bash
# Runs teal on the default demo model (SmolLM2), fetching it first when missing. Extra args go to `teal serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
exec cargo run --release -- serve "$@"
