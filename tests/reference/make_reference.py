#!/usr/bin/env python3
"""Reference outputs from Hugging Face transformers (PyTorch, f32) for teal's correctness tests.

Writes tests/fixtures/reference_<model>.json with, per prompt: the input ids transformers' tokenizer produces,
the last-position logits, the first 32 greedy token ids (argmax, eos not stopping) and their text. CI only reads the
committed JSON; this script needs torch, transformers and gguf (see tests/reference/requirements.txt).

Usage: python tests/reference/make_reference.py [--stories DIR] [--smollm GGUF_FILE]
"""
import argparse
import json
import os
import pathlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
GREEDY_STEPS = 32
TOKENIZE_ONLY = [
    "Hello, world! How are you today?",
    "Line one\nLine two\n\n  indented   spaces",
    "Emoji and accents: café naïve 🙂",
    "Numbers 12345 and 3.14159",
]


def greedy(model, ids, steps):
    out = []
    cur = torch.tensor([ids])
    with torch.no_grad():
        past = None
        for _ in range(steps):
            res = model(input_ids=cur, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(torch.argmax(res.logits[0, -1]))
            out.append(nxt)
            cur = torch.tensor([[nxt]])
    return out


def reference(model, tok, prompts, chat=None):
    cases = []
    for prompt in prompts:
        ids = tok(prompt).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        greedy_ids = greedy(model, ids, GREEDY_STEPS)
        whole = tok.decode(ids + greedy_ids, skip_special_tokens=True)
        prompt_text = tok.decode(ids, skip_special_tokens=True)
        cases.append({
            "prompt": prompt,
            "input_ids": ids,
            "last_logits": [float(f"{x:.6g}") for x in logits.tolist()],
            "greedy_ids": greedy_ids,
            # The continuation as a server's incremental detokenizer writes it (its first space kept).
            "greedy_text": whole[len(prompt_text):],
        })
    out = {
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "cases": cases,
        "tokenize": [{"text": t, "ids": tok(t).input_ids} for t in TOKENIZE_ONLY],
    }
    if chat is not None:
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "input_ids"):
            ids = ids.input_ids
        elif isinstance(ids, dict):
            ids = ids["input_ids"]
        out["chat"] = {"messages": chat, "ids": list(ids)}
    return out


def write(name, data):
    path = ROOT / "tests" / "fixtures" / f"reference_{name}.json"
    path.write_text(json.dumps(data, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stories", default=str(ROOT.parent / "shared" / "models" / "stories260K"))
    ap.add_argument("--smollm", default=str(ROOT / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    torch.manual_seed(0)

    tok = AutoTokenizer.from_pretrained(args.stories)
    model = AutoModelForCausalLM.from_pretrained(args.stories, dtype=torch.float32).eval()
    write("stories260k", reference(model, tok, ["Once upon a time", "The little dog was very happy because"]))

    gguf = pathlib.Path(args.smollm)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    write("smollm2", reference(model, tok, ["The capital of France is", "Write a short poem about the sea."], chat))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
