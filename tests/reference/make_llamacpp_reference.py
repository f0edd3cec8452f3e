#!/usr/bin/env python3
"""Greedy tokens of the quantized SmolLM2 GGUF from llama.cpp (the reference for quantized inference), for the
same input ids as the transformers fixture. Needs a running llama-server on the same GGUF, e.g.
  llama-server -m models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -t 2 --port 18090
Usage: python tests/reference/make_llamacpp_reference.py [http://127.0.0.1:18090]"""
import json
import pathlib
import sys
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18090"
STEPS = 16


def greedy(ids):
    # One token per call: llama-server's ignore_eos masks the eos logit, which would change greedy decoding.
    out = []
    for _ in range(STEPS):
        body = {"prompt": ids + out, "n_predict": 1, "temperature": 0, "top_k": 1, "return_tokens": True,
                "cache_prompt": False}
        req = urllib.request.Request(URL + "/completion", json.dumps(body).encode(), {"content-type": "application/json"})
        out += json.load(urllib.request.urlopen(req))["tokens"][:1]
    return out


fx = json.loads((ROOT / "tests/fixtures/reference_smollm2.json").read_text())
cases = [{"input_ids": c["input_ids"], "greedy_ids": greedy(c["input_ids"])} for c in fx["cases"]]
cases.append({"input_ids": fx["chat"]["ids"], "greedy_ids": greedy(fx["chat"]["ids"])})
props = json.load(urllib.request.urlopen(URL + "/props"))
out = {"llama_cpp": props.get("build_info", ""), "cases": cases}
path = ROOT / "tests/fixtures/llamacpp_smollm2_q4_1.json"
path.write_text(json.dumps(out) + "\n")
print(f"wrote {path}")
