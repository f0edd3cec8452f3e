#!/usr/bin/env python3
"""Token ids llama.cpp gives a mixed text set (whitespace runs, digits, emoji, CJK, code) with the tokenizer
inside a GGUF file: the reference for teal's tokenizers rebuilt from GGUF metadata. Needs a running llama-server
on the GGUF, e.g.
  llama-server -m models/gemma3/gemma-3-270m-q4_k_m.gguf -t 2 --port 18090
Usage: python tests/reference/make_gguf_tokenizer_reference.py NAME [http://127.0.0.1:18090]
writes tests/fixtures/llamacpp_tokens_NAME.json"""
import json
import pathlib
import sys
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAME = sys.argv[1]
URL = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:18090"

TEXTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "Hello world",
    " leading space",
    "two  spaces,   three,    four and\ttab",
    "line one\nline two\n\n\nafter three newlines\r\nwindows",
    "    indented code\n        more",
    "Numbers: 0 7 42 123 1234 12345 3.14159 -17 1,000,000 2026-12-02",
    "Emoji: 🦀🎉👍🏽 👨‍👩‍👧 ✨",
    "日本語のテキストと中文文本，还有한국어",
    "Ünïcödé àccents: café naïve façade Zürich",
    "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}",
    "def f(a, b):\n\treturn a ** b  # power\n",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "URL https://example.org/a?b=c&d=e#f and e-mail a.b@c.de",
    "Mixed: abc123DEF_ghi-jkl.mno/pqr\\stu",
    "   ",
    "\n",
    "a",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the quick brown fox?",
    "Ω≈ç√∫˜µ≤≥÷ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽",
    "rare\u00a0nbsp and zero\u200bwidth",
]


def tokenize(text):
    body = {"content": text, "add_special": False, "parse_special": False}
    req = urllib.request.Request(URL + "/tokenize", json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))["tokens"]


props = json.load(urllib.request.urlopen(URL + "/props"))
out = {"llama_cpp": props.get("build_info", ""), "cases": [{"text": t, "ids": tokenize(t)} for t in TEXTS]}
path = ROOT / f"tests/fixtures/llamacpp_tokens_{NAME}.json"
path.write_text(json.dumps(out, ensure_ascii=False) + "\n")
print(f"wrote {path}")
