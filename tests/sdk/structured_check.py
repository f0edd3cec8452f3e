#!/usr/bin/env python3
"""Structured output and tool calling through the official OpenAI Python SDK, unchanged, against a live teal
server: json_schema (strict) and json_object answers on 50 varied prompts each must parse and validate
(jsonschema); a named tool_choice must give arguments that validate against the function's schema on 50 of 50;
and a tool round trip (the model calls a function, the client sends the result back, the model answers) must
work streaming and not. Usage: structured_check.py BASE_URL MODEL [N]. Exits non-zero on any failure."""
import json
import sys
import time

import jsonschema
import openai

BASE, MODEL = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 50
client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)
failures = []

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city", "pets", "member"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
                         "city": {"type": "string"}, "member": {"type": "boolean"},
                         "pets": {"type": "array", "items": {"type": "string", "enum": ["cat", "dog", "fish"]}}}}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit", "days"],
           "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 14}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather forecast for a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Adds two numbers",
                                           "parameters": {"type": "object", "required": ["a", "b"],
                                                          "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]
# stories260K reads 512 tokens at most (about 2 characters each): it gets the weather tool alone.
SMALL = MODEL == "stories260K"
if SMALL:
    WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
               "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}}
    TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
TOPICS = ["a baker", "a sailor", "a child who likes trains", "an old teacher", "a cat owner", "a runner", "a painter",
          "a farmer", "a pilot", "a student", "a doctor", "a musician", "a chef", "a poet", "a gardener", "a fisher",
          "a climber", "a driver", "a nurse", "a writer", "a dancer", "a singer", "a tailor", "a judge", "a miner"]


def prompt(i):
    return f"Describe {TOPICS[i % len(TOPICS)]} number {i} as JSON."


def wait_ready():
    for _ in range(1200):
        try:
            if any(m.id == MODEL for m in client.models.list().data):
                return
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.1)
    raise SystemExit("server never became ready")


def count(name, ok_count, total):
    line = f"{name}: {ok_count}/{total}"
    print(("ok   " if ok_count == total else "FAIL ") + line)
    if ok_count != total:
        failures.append(line)


def schema_outputs(fmt, schema):
    good, truncated = 0, []
    for i in range(N):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt(i)}],
                                           response_format=fmt, max_tokens=200, temperature=1.0, seed=i)
        text = r.choices[0].message.content
        try:
            jsonschema.validate(json.loads(text), schema)
            good += 1
        except Exception as e:  # noqa: BLE001
            print(f"     #{i} {r.choices[0].finish_reason}: {text!r}: {e}")
            # A sampled answer cut off by max_tokens (finish_reason "length") is what the API promises, not a
            # broken constraint; at most 2 of N may end so, and every answer that stopped must validate.
            if r.choices[0].finish_reason == "length":
                truncated.append(i)
    if len(truncated) <= 2:
        good += len(truncated)
    return good


def named_tool():
    good = 0
    for i in range(N):
        city = TOPICS[i % len(TOPICS)]
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"What is the weather where {city} lives, day {i}?"}],
            tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=100, temperature=1.0, seed=i)
        calls = r.choices[0].message.tool_calls or []
        try:
            assert len(calls) == 1 and calls[0].function.name == "get_weather", calls
            assert calls[0].id and calls[0].type == "function"
            jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
            assert r.choices[0].finish_reason == "tool_calls", r.choices[0].finish_reason
            good += 1
        except Exception as e:  # noqa: BLE001
            print(f"     #{i}: {calls!r}: {e}")
    return good


def round_trip(stream):
    msgs = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]
    kw = dict(model=MODEL, tools=TOOLS, max_tokens=100, temperature=0)
    forced = {"type": "function", "function": {"name": "get_weather"}}
    if stream:
        calls, finish = {}, None
        for chunk in client.chat.completions.create(messages=msgs, tool_choice=forced, stream=True, **kw):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for tc in c.delta.tool_calls or []:
                    entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] += tc.id or ""
                    entry["name"] += (tc.function.name or "") if tc.function else ""
                    entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
        assert finish == "tool_calls" and len(calls) == 1, (finish, calls)
        call = calls[0]
    else:
        r = client.chat.completions.create(messages=msgs, tool_choice=forced, **kw)
        assert r.choices[0].finish_reason == "tool_calls"
        tc = r.choices[0].message.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
    args = json.loads(call["arguments"])
    jsonschema.validate(args, WEATHER)
    msgs.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]})
    msgs.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"forecast": "sunny", "high": 21})})
    r = client.chat.completions.create(messages=msgs, tool_choice="none", **{**kw, "max_tokens": 30})
    answer = r.choices[0].message
    assert answer.content and not answer.tool_calls, answer
    print(f"     round trip ({'stream' if stream else 'plain'}): {call['name']}({call['arguments']}) -> {answer.content[:60]!r}")


def main():
    wait_ready()
    count("json_schema strict", schema_outputs(
        {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}, PERSON), N)
    count("json_object", schema_outputs({"type": "json_object"}, {"type": "object"}), N)
    count("named tool_choice", named_tool(), N)
    for stream in (False, True):
        try:
            round_trip(stream)
            print(f"ok   tool round trip stream={stream}")
        except Exception as e:  # noqa: BLE001
            print(f"FAIL tool round trip stream={stream}: {e!r}")
            failures.append(f"round trip stream={stream}")
    print(f"{len(failures)} failed")
    sys.exit(1 if failures else 0)


main()
