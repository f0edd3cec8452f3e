#!/usr/bin/env python3
"""Adds to each case of the committed reference fixtures the text of its greedy continuation as transformers'
tokenizer writes it: the prompt and the continuation decoded together, less the prompt's own text (so the
continuation's first space is kept, as an incremental detokenizer in a server produces it). Needs only
`transformers` and `tokenizers` (no torch): the ids are the committed ones. make_reference.py writes the same
field when it regenerates a fixture.

Usage: python tests/reference/add_reference_text.py [--stories DIR]
"""
import argparse
import json
import pathlib

from transformers import AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def continuation_text(tok, prompt_ids, greedy_ids):
    whole = tok.decode(prompt_ids + greedy_ids, skip_special_tokens=True)
    prompt = tok.decode(prompt_ids, skip_special_tokens=True)
    assert whole.startswith(prompt), (whole, prompt)
    return whole[len(prompt):]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stories", default=str(ROOT.parent / "shared/models/stories260K"))
    args = ap.parse_args()
    path = ROOT / "tests/fixtures/reference_stories260k.json"
    fx = json.loads(path.read_text())
    tok = AutoTokenizer.from_pretrained(args.stories)
    for case in fx["cases"]:
        case["greedy_text"] = continuation_text(tok, case["input_ids"], case["greedy_ids"])
    path.write_text(json.dumps(fx, separators=(",", ":"), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
