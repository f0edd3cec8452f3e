#!/usr/bin/env python3
"""The official OpenAI Python SDK against a live teal server, unchanged: chat, streaming with usage,
completions, logprobs, models, and error mapping. Prints 'N passed, N failed' and exits non-zero on failure."""
import sys
import time

import openai

BASE = sys.argv[1]
client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)  # a 5xx must fail the check, not be retried away
MODEL = "stories260K"
results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
        print(f"ok   {name}")
    except Exception as e:  # noqa: BLE001 - report every failure
        results.append((name, e))
        print(f"FAIL {name}: {e!r}")


def wait_ready():
    for _ in range(200):
        try:
            client.models.list()
            return
        except Exception:  # noqa: BLE001
            time.sleep(0.1)
    raise SystemExit("server never became ready")


def chat():
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def chat_stream():
    full = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=16, temperature=0)
    text, usage, finish = "", None, None
    for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=16,
                                                temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == full.choices[0].message.content, (text, full.choices[0].message.content)
    assert usage.completion_tokens == full.usage.completion_tokens
    assert finish == full.choices[0].finish_reason


def completion_and_logprobs():
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.choices[0].text
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2


def seed():
    a = client.completions.create(model=MODEL, prompt="Once", max_tokens=12, seed=5, temperature=1.0)
    b = client.completions.create(model=MODEL, prompt="Once", max_tokens=12, seed=5, temperature=1.0)
    assert a.choices[0].text == b.choices[0].text


def n_choices():
    msgs = [{"role": "user", "content": "Once upon a time"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=1.0, seed=3, n=3,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2], r.choices
    assert r.usage.completion_tokens == 24, r.usage
    assert len({c.message.content for c in r.choices}) > 1, "seeded choices differ from each other"
    texts, finishes = {}, {}
    for chunk in client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=1.0, seed=3, n=3,
                                                stream=True, extra_body={"ignore_eos": True}):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            finishes[c.index] = c.finish_reason or finishes.get(c.index)
    assert [texts[i] for i in range(3)] == [c.message.content for c in r.choices], (texts, r.choices)
    assert all(finishes[i] for i in range(3)), finishes
    c = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, n=2)
    assert [x.index for x in c.choices] == [0, 1] and c.choices[0].text == c.choices[1].text


def cached_tokens_bias_and_echo():
    prompt = "Once upon a time, there was a little girl named Lily. She liked to play outside in the sun."
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens >= 16, r.usage
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=0)
    biased = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=0,
                                       logit_bias={"300": 100})
    tokens = biased.choices[0].logprobs.tokens
    assert len(tokens) == 3 and len(set(tokens)) == 1, tokens
    assert plain.choices[0].logprobs.tokens != tokens, (plain.choices[0].logprobs.tokens, tokens)
    e = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True)
    assert e.choices[0].text.startswith(prompt), e.choices[0].text


def bad_fields_are_refused():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    named = {"type": "function", "function": {"name": "g"}}
    for kwargs, param in [({"functions": [{"name": "f"}]}, "functions"),
                          ({"tools": tools, "tool_choice": named}, "tool_choice"),
                          ({"response_format": {"type": "xml"}}, "response_format")]:
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, **kwargs)
            raise AssertionError(f"{param} was accepted")
        except openai.BadRequestError as e:
            assert e.body["param"] == param, e.body


def models():
    assert [m.id for m in client.models.list().data] == [MODEL]


def errors():
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=9)
        raise AssertionError("no error")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == "temperature", e.body
    try:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("no error")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found"


def slot_headers():
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert raw.headers.get("x-teal-slot") == "blue", dict(raw.headers)
    assert raw.headers.get("x-teal-model-version"), dict(raw.headers)
    assert raw.parse().choices[0].message.role == "assistant"


wait_ready()
for name, fn in [("slot_headers", slot_headers), ("chat", chat), ("chat_stream", chat_stream), ("completion_and_logprobs", completion_and_logprobs),
                 ("seed", seed), ("n_choices", n_choices), ("cached_tokens_bias_and_echo", cached_tokens_bias_and_echo),
                 ("bad_fields_are_refused", bad_fields_are_refused), ("models", models), ("errors", errors)]:
    check(name, fn)
failed = sum(1 for _, e in results if e)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
