#!/usr/bin/env python3
"""The peer for teal's GPU numbers: the same model through PyTorch transformers `generate()` on the same GPU.

usage: torch_peer.py MODEL_DIR OUT.json [--new-tokens 128] [--prompt-tokens 128]

Greedy decoding, f32 (as teal's reference runs), after a warm-up run. Reports, per batch size 1, 8 and 32, decode
tokens/s (generated tokens of the whole batch / time of generate minus the time to first token), and the time to
first token (generate with max_new_tokens=1). Medians of 3 runs. Needs torch and transformers (the GPU machine
has both); nothing here runs in CI.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).to("cuda").eval()
    load_s = time.perf_counter() - t_load
    vocab = model.config.vocab_size
    results = {"model": a.model, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "load_s": load_s,
               "new_tokens": a.new_tokens, "prompt_tokens": a.prompt_tokens, "batches": []}
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 8, 32):
        ids = torch.randint(3, vocab, (batch, a.prompt_tokens), generator=gen).to("cuda")
        mask = torch.ones_like(ids)
        kw = dict(attention_mask=mask, do_sample=False, pad_token_id=tok.eos_token_id or 0)
        with torch.no_grad():
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)  # warm-up
            ttft = statistics.median(timed(lambda: model.generate(ids, max_new_tokens=1, **kw)) for _ in range(3))
            full = statistics.median(
                timed(lambda: model.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, **kw))
                for _ in range(3))
        decode_tps = batch * (a.new_tokens - 1) / max(full - ttft, 1e-9)
        row = {"batch": batch, "ttft_ms": ttft * 1e3, "total_s": full, "decode_tokens_per_s": decode_tps}
        print(json.dumps(row))
        results["batches"].append(row)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
