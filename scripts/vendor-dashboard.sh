#!/usr/bin/env bash
# Vendors the dashboard's one third-party library, uPlot (a small time-series chart library, MIT), from the npm
# registry into assets/dashboard/vendor/ with its licence. The files are committed and embedded in the teal
# binary, so nothing is fetched at run time or in CI; run this only to change the version.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-1.6.32}"
out=assets/dashboard/vendor
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$VERSION" >/dev/null && tar xzf "uplot-$VERSION.tgz")
mkdir -p "$out"
cp "$tmp/package/dist/uPlot.iife.min.js" "$out/uPlot.iife.min.js"
cp "$tmp/package/dist/uPlot.min.css" "$out/uPlot.min.css"
cp "$tmp/package/LICENSE" "$out/uPlot.LICENSE"
echo "uPlot $VERSION (MIT), from npm: uplot@$VERSION" > "$out/README"
sha256sum "$out"/uPlot.* >> "$out/README"
echo "vendored uPlot $VERSION into $out"
