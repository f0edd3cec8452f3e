#!/usr/bin/env python3
"""Lints and renders the Helm chart deploy/helm/teal offline with Helm's own Go SDK (helm-python-sdk, no helm
binary), once per values file in deploy/helm/teal/ci/, into OUT_DIR/<values>/*.yaml for the schema validator.
Also checks that the chart refuses what it must: an unknown value, a missing admin token, a short token, an
external Redis without a URL.

Usage: scripts/render-helm.py OUT_DIR [KUBERNETES_VERSION]
"""
import pathlib
import sys

import helm_python as helm

CHART = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "helm" / "teal"


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    kube = "v" + (sys.argv[2] if len(sys.argv) > 2 else "1.32.0")
    chart = helm.Chart.load(CHART)
    failed = False
    for values_file in sorted((CHART / "ci").glob("*.yaml")):
        values = helm.values_from_yaml(values_file.read_text())
        report = helm.lint(CHART, values, strict=True, kube_version=kube)
        problems = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2] + (report.get("errors") or [])
        if problems:
            print(f"helm lint {values_file.name}: {problems}", file=sys.stderr)
            failed = True
        rendered = chart.render(values, name="teal", namespace="serving", is_install=True)
        dest = out / values_file.stem
        dest.mkdir(parents=True, exist_ok=True)
        for path, text in rendered.items():
            if path.endswith(".yaml") and text.strip():
                (dest / pathlib.Path(path).name).write_text(text)
        print(f"helm: {values_file.name} lints clean, {len(list(dest.iterdir()))} manifests rendered")
    refusals = {
        "an unknown value": {"adminToken": {"value": "x" * 20}, "replicas": 3},
        "no admin token": {},
        "a short admin token": {"adminToken": {"value": "short"}},
        "an external Redis without a URL": {"adminToken": {"value": "x" * 20}, "redis": {"enabled": False}},
    }
    for what, values in refusals.items():
        try:
            chart.render(values, name="teal", namespace="serving", is_install=True)
        except Exception as e:  # HelmValuesError, HelmRenderError
            print(f"helm: refuses {what}: {str(e).splitlines()[0][:120]}")
            continue
        print(f"helm: the chart rendered with {what}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
