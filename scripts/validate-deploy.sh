#!/usr/bin/env bash
# Validates the deployment files against the Kubernetes API schemas, offline and strict (unknown fields are
# errors), with kubernetes-validate from PyPI (it carries the schemas): the manifests in deploy/k8s/, and the Helm
# chart deploy/helm/teal rendered with each values file in its ci/ folder (lint, render and the chart's refusals
# by scripts/render-helm.py, with Helm's Go SDK from the helm-python-sdk wheel: no helm binary). Both tools live
# in a venv of their own. Usage: scripts/validate-deploy.sh [KUBERNETES_VERSION]   (default 1.32.0)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-deploy
KUBE=${1:-1.32.0}
if [ ! -x "$VENV/bin/kubernetes-validate" ] || ! "$VENV/bin/python" -c 'import helm_python' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet kubernetes-validate==1.37.0 helm-python-sdk==0.2.2
fi
mapfile -t files < <(find deploy/k8s -name '*.yaml' | sort)
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBE" "${files[@]}"
echo "deploy/k8s: ${#files[@]} files valid against Kubernetes $KUBE"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
"$VENV/bin/python" scripts/render-helm.py "$rendered" "$KUBE"
mapfile -t charts < <(find "$rendered" -name '*.yaml' | sort)
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBE" "${charts[@]}"
echo "deploy/helm/teal: ${#charts[@]} rendered manifests valid against Kubernetes $KUBE"
