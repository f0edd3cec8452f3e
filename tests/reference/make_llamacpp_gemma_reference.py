#!/usr/bin/env python3
"""Greedy continuations of Gemma 3 270M Q4_K_M from llama.cpp (the reference for teal's gemma3 path on the same
GGUF). Needs a running llama-server on the file, e.g.
  llama-server -m models/gemma3/gemma-3-270m-q4_k_m.gguf -t 2 --port 18090
Usage: python tests/reference/make_llamacpp_gemma_reference.py [http://127.0.0.1:18090]
writes tests/fixtures/llamacpp_gemma3_q4_k_m.json"""
import json
import pathlib
import sys
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18090"
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
out = {"llama_cpp": props.get("build_info", ""), "cases": cases}
path = ROOT / "tests/fixtures/llamacpp_gemma3_q4_k_m.json"
path.write_text(json.dumps(out) + "\n")
print(f"wrote {path}")
