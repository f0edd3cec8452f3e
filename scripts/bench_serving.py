#!/usr/bin/env python3
"""Closed-loop serving benchmark for any OpenAI-compatible server (teal, llama-server, vLLM...), stdlib only.

For each concurrency level, C client threads each send streaming /v1/completions requests back to back
(output length fixed with ignore_eos) and the script reports time to first token, inter-token latency,
aggregate output tokens/s; plus a prefill measurement (one long prompt, max_tokens 1). Prints a table and
writes JSON with --json. A stand-in until `teal bench serve` exists.

Usage: bench_serving.py --url http://127.0.0.1:8080 --model smollm2 [--concurrency 1,4,8,16]
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

WORDS = ("river mountain lantern orbit violet copper garden harbor meadow signal quiet thunder "
         "marble candle forest planet silver window winter amber").split()


def prompt(i, n_words):
    return f"Story {i}: " + " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n_words))


def stream_request(url, model, text, max_tokens):
    """Returns (ttft_s, [inter-token gaps], tokens, total_s) for one streamed completion."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    stamps = []
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            stamps.append(time.perf_counter())
    total = time.perf_counter() - t0
    conn.close()
    if not stamps:
        raise RuntimeError("no tokens")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return stamps[0] - t0, gaps, len(stamps), total


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def run_level(url, model, conc, requests, out_len, in_words):
    results, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                r = stream_request(url, model, prompt(i + conc * 1000, in_words), out_len)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = [r[0] for r in results]
    gaps = [g for r in results for g in r[1]]
    tokens = sum(r[2] for r in results)
    return {"concurrency": conc, "requests": len(results), "errors": len(errors),
            "output_tokens_per_s": tokens / wall, "ttft_p50_ms": 1000 * pct(ttfts, 50),
            "ttft_p99_ms": 1000 * pct(ttfts, 99), "itl_p50_ms": 1000 * pct(gaps, 50),
            "itl_p99_ms": 1000 * pct(gaps, 99),
            "per_stream_tokens_per_s": 1000 / (1000 * statistics.mean(gaps)) if gaps else 0}


def prefill(url, model, words):
    ttfts = []
    for i in range(3):
        ttft, _, _, _ = stream_request(url, model, prompt(9000 + i, words), 1)
        ttfts.append(ttft)
    return statistics.median(ttfts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--input-words", type=int, default=24)
    ap.add_argument("--requests-per-stream", type=int, default=3)
    ap.add_argument("--prefill-words", type=int, default=400)
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    a = ap.parse_args()
    stream_request(a.url, a.model, "warm up", 4)
    pf = prefill(a.url, a.model, a.prefill_words)
    rows = [run_level(a.url, a.model, c, max(4, c * a.requests_per_stream), a.output_len, a.input_words)
            for c in map(int, a.concurrency.split(","))]
    print(f"\n{a.label} {a.url} model={a.model} output_len={a.output_len}")
    print(f"prefill: {a.prefill_words} words in {pf * 1000:.0f} ms (time to first token, median of 3)")
    print("conc  reqs err  tok/s  ttft_p50  ttft_p99  itl_p50  itl_p99")
    for r in rows:
        print(f"{r['concurrency']:4d} {r['requests']:5d} {r['errors']:3d} {r['output_tokens_per_s']:6.1f}"
              f" {r['ttft_p50_ms']:8.0f}ms {r['ttft_p99_ms']:7.0f}ms {r['itl_p50_ms']:6.1f}ms {r['itl_p99_ms']:6.1f}ms")
    if a.json:
        json.dump({"label": a.label, "url": a.url, "model": a.model, "prefill_ttft_s": pf,
                   "prefill_words": a.prefill_words, "levels": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
