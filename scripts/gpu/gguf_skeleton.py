#!/usr/bin/env python3
"""A GGUF file's skeleton, small enough to carry to the GPU machine, and its inflation there (numpy only).

  gguf_skeleton.py strip GGUF DIR     here: DIR/header.bin (metadata: tokenizer, template, hyper-parameters, and
                                      the tensor table, byte for byte), DIR/tensors.json (each tensor's offset,
                                      size and type) and DIR/f32.bin (the F32 tensors' real data: the norms)
  gguf_skeleton.py inflate DIR OUT    there: a GGUF of the same size, layout, types and tokenizer, the quantized
                                      tensors' blocks drawn from a fixed seed with weight-like scales

The real SmolLM2 file (98 MB) does not fit the device tool's 64 MiB next to the binaries; its inflated twin runs
exactly the same kernels on the same shapes, so it is what the one-call GPU check (scripts/gpu/check.sh) times
and compares CPU against GPU on. Its text is meaningless: correctness on real weights is stories260K's part.
"""
import json
import struct
import sys
from pathlib import Path

# ggml type -> (values per block, bytes per block)
BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
          10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210)}
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v[0]

    def string(self):
        n = self.take("Q")
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("utf-8", "replace")

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            inner, n = self.take("I"), self.take("Q")
            return [self.value(inner) for _ in range(n)]
        return self.take(SCALAR[t])


def parse(data):
    r = Reader(data)
    if data[:4] != b"GGUF":
        sys.exit("not a GGUF file")
    r.pos = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    if version < 2:
        sys.exit(f"GGUF version {version} is not supported")
    align = 32
    for _ in range(n_kv):
        key, t = r.string(), r.take("I")
        v = r.value(t)
        if key == "general.alignment":
            align = int(v)
    tensors = []
    for _ in range(n_tensors):
        name, nd = r.string(), r.take("I")
        dims = [r.take("Q") for _ in range(nd)]
        t, offset = r.take("I"), r.take("Q")
        if t not in BLOCKS:
            sys.exit(f"{name}: ggml type {t} is not handled here")
        count = 1
        for d in dims:
            count *= d
        per, size = BLOCKS[t]
        tensors.append({"name": name, "type": t, "offset": offset, "nbytes": count // per * size})
    start = (r.pos + align - 1) // align * align
    return start, tensors


def strip(src, out):
    data = Path(src).read_bytes()
    start, tensors = parse(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "header.bin").write_bytes(data[:start])
    kept = bytearray()
    for t in tensors:
        if t["type"] == 0:
            a = start + t["offset"]
            kept += data[a:a + t["nbytes"]]
    (out / "f32.bin").write_bytes(bytes(kept))
    size = max(t["offset"] + t["nbytes"] for t in tensors)
    (out / "tensors.json").write_text(json.dumps({"data_bytes": size, "file_bytes": len(data), "tensors": tensors}))
    print(f"{src}: {len(data)} bytes -> skeleton {start + len(kept)} bytes ({len(tensors)} tensors)")


def blocks(np, rng, t, nbytes):
    """Weight-like blocks of ggml type t: small f16 scales (values of about +-0.05), random quants."""
    per, size = BLOCKS[t]
    n = nbytes // size
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    if t == 1:
        return rng.normal(0, 0.02, nbytes // 2).astype(np.float16).tobytes()
    if t in (2, 3, 6, 7, 8):  # d (and m) in front
        d = rng.uniform(0.002, 0.006, n).astype(np.float16)
        raw[:, 0:2] = d.view(np.uint8).reshape(n, 2)
        if t in (3, 7):
            raw[:, 2:4] = (-7.5 * d).astype(np.float16).view(np.uint8).reshape(n, 2)
        if t == 8:
            raw[:, 2:] = rng.integers(-60, 61, size=(n, 32), dtype=np.int8).view(np.uint8)
    else:  # K-quants: the super-block's f16 d (and dmin) sit at the end (Q6_K: last 2 bytes)
        d = rng.uniform(0.0005, 0.001, n).astype(np.float16).view(np.uint8).reshape(n, 2)
        if t == 14:
            raw[:, size - 2:] = d
        else:
            raw[:, 0:2] = d
            raw[:, 2:4] = d
    return raw.tobytes()


def inflate(skel, out):
    import numpy as np

    skel = Path(skel)
    meta = json.loads((skel / "tensors.json").read_text())
    header = (skel / "header.bin").read_bytes()
    kept = memoryview((skel / "f32.bin").read_bytes())
    rng = np.random.default_rng(22)
    data = bytearray(meta["data_bytes"])
    k = 0
    for t in meta["tensors"]:
        a, n = t["offset"], t["nbytes"]
        if t["type"] == 0:
            data[a:a + n] = kept[k:k + n]
            k += n
        else:
            data[a:a + n] = blocks(np, rng, t["type"], n)
    with open(out, "wb") as f:
        f.write(header)
        f.write(data)
    size = Path(out).stat().st_size
    if size != meta["file_bytes"]:
        sys.exit(f"inflated {size} bytes, the original had {meta['file_bytes']}")
    print(f"inflated {out}: {size} bytes")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "strip":
        strip(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "inflate":
        inflate(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
