#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s/ against the Kubernetes API schemas, offline and strict
# (unknown fields are errors), with kubernetes-validate from PyPI (it carries the schemas) in a venv of its own.
# Usage: scripts/validate-deploy.sh [KUBERNETES_VERSION]   (default 1.32.0)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-deploy
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet kubernetes-validate==1.37.0
fi
mapfile -t files < <(find deploy/k8s -name '*.yaml' | sort)
"$VENV/bin/kubernetes-validate" --strict --quiet -k "${1:-1.32.0}" "${files[@]}"
echo "deploy/k8s: ${#files[@]} files valid against Kubernetes ${1:-1.32.0}"
