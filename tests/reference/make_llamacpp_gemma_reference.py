#!/usr/bin/env python3
"""Greedy continuations of Gemma 3 270M Q4_K_M from llama.cpp (the reference for teal's gemma3 path on the same
GGUF). Needs a running llama-server on the file, e.g.
  llama-server -m models/gemma3/gemma-3-270m-q4_k_m.gguf -t 2 --port 18090
Usage: python tests/reference/make_llamacpp_gemma_reference.py [URL] [OUT] [BUILD] [TEAL_KERNEL]
  URL          the server (default http://127.0.0.1:18090)
  OUT          the fixture to write (default tests/fixtures/llamacpp_gemma3_q4_k_m.json)
  BUILD        what ggml was compiled for, recorded as `ggml_isa`: llama.cpp's greedy tokens depend on it (ggml
               picks its kernels, and so its summation orders, when it is compiled), e.g. "native, Intel Xeon
               (AVX-512 VNNI, AMX off)" or "AVX2, FMA, F16C (GGML_NATIVE=OFF)"
  TEAL_KERNEL  the teal kernel (`Isa` as Debug prints it: Avx512Vnni, Avx2) whose greedy run tests/it/gemma3.rs
               holds to this reference, recorded as `teal_kernel`; none if omitted"""
import json
import pathlib
import sys
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18090"
OUT = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "tests/fixtures/llamacpp_gemma3_q4_k_m.json"
BUILD = sys.argv[3] if len(sys.argv) > 3 else ""
TEAL_KERNEL = sys.argv[4] if len(sys.argv) > 4 else None
STEPS = 16
PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
           "The three primary colors are"]


def post(path, body):
    req = urllib.request.Request(URL + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def greedy(ids):
    # One token per call: llama-server's ignore_eos masks the eos logit, which would change greedy decoding.
    # Each step also keeps llama.cpp's five most likely tokens with their log-probabilities.
    out, tops = [], []
    for _ in range(STEPS):
        body = {"prompt": ids + out, "n_predict": 1, "temperature": 0, "top_k": 1, "return_tokens": True,
                "cache_prompt": False, "n_probs": 5}
        r = post("/completion", body)
        out += r["tokens"][:1]
        tops.append([[t["id"], round(t["logprob"], 5)] for t in r["completion_probabilities"][0]["top_logprobs"]])
    return out, tops


cases = []
for p in PROMPTS:
    ids = post("/tokenize", {"content": p, "add_special": True})["tokens"]
    out, tops = greedy(ids)
    cases.append({"prompt": p, "input_ids": ids, "greedy_ids": out, "top_logprobs": tops})
props = json.load(urllib.request.urlopen(URL + "/props"))
out = {"llama_cpp": props.get("build_info", ""), "ggml_isa": BUILD, "teal_kernel": TEAL_KERNEL, "cases": cases}
OUT.write_text(json.dumps(out) + "\n")
print(f"wrote {OUT}")
