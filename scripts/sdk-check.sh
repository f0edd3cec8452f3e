#!/usr/bin/env bash
# Drives a live teal server with the official `openai` Python SDK (installed into .venv-sdk from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-sdk
[ -x $VENV/bin/python ] || python3 -m venv $VENV
$VENV/bin/python -c "import openai, jsonschema" 2>/dev/null || $VENV/bin/pip install --quiet "openai>=1.40,<4" "jsonschema>=4,<5"
# With the tests, as `cargo test --release` built them: the test-only dependencies (the browser test's WebDriver
# client) switch on features of shared crates, and a plain build would compile teal a second time without them.
cargo build --release --bins --tests --quiet
free_port() { $VENV/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
PORT=$(free_port)
ADMIN_PORT=$(free_port)
STATE=$(mktemp -d)
./target/release/teal serve --model ../shared/models/stories260K --port "$PORT" --admin-port "$ADMIN_PORT" \
  --state-dir "$STATE" > target/sdk-server.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$STATE"' EXIT
$VENV/bin/python tests/sdk/openai_sdk_check.py "http://127.0.0.1:$PORT/v1"
# Structured output and tools: 50 of 50 on stories260K, then on SmolLM2 (its GGUF from scripts/fetch-models.sh).
$VENV/bin/python tests/sdk/structured_check.py "http://127.0.0.1:$PORT/v1" stories260K
kill $PID; wait $PID 2>/dev/null || true
SMOL=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
./target/release/teal serve --model "$SMOL" --port "$PORT" --admin-port "$ADMIN_PORT" --state-dir "$STATE" \
  > target/sdk-server-smollm2.log 2>&1 &
PID=$!
$VENV/bin/python tests/sdk/structured_check.py "http://127.0.0.1:$PORT/v1" SmolLM2-135M-Instruct.Q4_1
