#!/usr/bin/env bash
# Drives a live teal server with the official `openai` Python SDK (installed into .venv-sdk from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-sdk
[ -x $VENV/bin/python ] || python3 -m venv $VENV
$VENV/bin/python -c "import openai" 2>/dev/null || $VENV/bin/pip install --quiet "openai>=1.40,<4"
cargo build --release --quiet
free_port() { $VENV/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
PORT=$(free_port)
ADMIN_PORT=$(free_port)
STATE=$(mktemp -d)
./target/release/teal serve --model ../shared/models/stories260K --port "$PORT" --admin-port "$ADMIN_PORT" \
  --state-dir "$STATE" > target/sdk-server.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$STATE"' EXIT
$VENV/bin/python tests/sdk/openai_sdk_check.py "http://127.0.0.1:$PORT/v1"
