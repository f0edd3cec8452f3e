//! Structured output and tool calls over HTTP on stories260K (a model far too small to write JSON by itself,
//! so every valid answer is the grammar's doing): answers parse and follow the schema on both endpoints,
//! streamed and not, and stay complete within max_tokens; tool calls are forced, parsed and streamed as
//! OpenAI shapes them; a free request batched with constrained ones answers exactly as it does alone; and a
//! hostile schema is a 400 that leaves the server serving.

use crate::common;

use common::TestServer;
use serde_json::{json, Value};
use teal::config::ServeArgs;

async fn post(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = s.post(path, body).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

fn person() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["name", "age", "pets"],
           "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                          "pets": {"type": "array", "items": {"type": "object", "required": ["kind"],
                                   "additionalProperties": false,
                                   "properties": {"kind": {"enum": ["cat", "dog"]}}}}}})
}

/// Checks `v` against `person()` by hand (the test suite has no JSON-schema validator; the SDK check uses one).
fn is_person(v: &Value) -> bool {
    let o = v.as_object().unwrap();
    let keys: std::collections::BTreeSet<&str> = o.keys().map(String::as_str).collect();
    keys == ["age", "name", "pets"].into_iter().collect()
        && o["name"].is_string()
        && o["age"].as_u64().is_some_and(|a| a <= 120)
        && o["pets"].as_array().unwrap().iter().all(|p| p == &json!({"kind": "cat"}) || p == &json!({"kind": "dog"}))
}

#[tokio::test]
async fn schema_answers_parse_on_both_endpoints_streamed_or_not_and_end_within_max_tokens() {
    let s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let format = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": person(), "strict": true}});
    for (i, max_tokens) in [(0, 400), (1, 120), (2, 60), (3, 45), (4, 200), (5, 90)] {
        let body = json!({"model": "stories260K", "messages": [{"role": "user", "content": format!("Person {i}")}],
                          "response_format": format, "max_tokens": max_tokens, "temperature": 1.0, "seed": i});
        let (status, v) = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, 200, "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("#{i} {text:?}: {e}"));
        assert!(is_person(&parsed), "#{i}: {text}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "#{i}: {v}");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= max_tokens);
        // Streamed, the same seed writes the same answer.
        let mut stream = body.clone();
        stream["stream"] = json!(true);
        let events = common::sse_events(s.post("/v1/chat/completions", stream).await).await;
        let streamed: String = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(String::from))
            .collect();
        assert_eq!(streamed, text);
    }
    let body = json!({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 80, "seed": 9,
                      "temperature": 1.0, "response_format": {"type": "json_object"}});
    let (status, v) = post(&s, "/v1/completions", body).await;
    assert_eq!(status, 200, "{v}");
    let parsed: Value = serde_json::from_str(v["choices"][0]["text"].as_str().unwrap()).unwrap();
    assert!(parsed.is_object(), "{v}");
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "required": ["city", "unit"], "additionalProperties": false,
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}}}}])
}

fn chat_with_tools(choice: Value, extra: Value) -> Value {
    let mut b = json!({"model": "stories260K", "messages": [{"role": "user", "content": "Weather in Paris?"}],
                       "tools": weather_tools(), "tool_choice": choice, "max_tokens": 120, "temperature": 0});
    b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    b
}

#[tokio::test]
async fn forced_tool_calls_come_back_as_tool_calls_streamed_or_not_and_the_result_goes_back_in() {
    let s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let (status, v) = post(&s, "/v1/chat/completions", chat_with_tools(named.clone(), json!({}))).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!((call["type"].as_str(), call["function"]["name"].as_str()), (Some("function"), Some("get_weather")));
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string() && (args["unit"] == "C" || args["unit"] == "F"), "{args}");

    let events =
        common::sse_events(s.post("/v1/chat/completions", chat_with_tools(named, json!({"stream": true}))).await).await;
    let chunks: Vec<Value> = events.iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "", "a forced call streams no text");
    let calls: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(
        (calls[0]["index"].as_u64(), calls[0]["function"]["arguments"].as_str()),
        (Some(0), call["function"]["arguments"].as_str())
    );
    assert_eq!(
        chunks.iter().filter_map(|c| c["choices"][0]["finish_reason"].as_str()).collect::<Vec<_>>(),
        ["tool_calls"]
    );

    // The call and its result go back into the history; the model answers in text.
    let history = json!({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": call["id"], "type": "function",
            "function": {"name": "get_weather", "arguments": call["function"]["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}], "max_tokens": 20});
    let (status, v) = post(&s, "/v1/chat/completions", chat_with_tools(json!("auto"), history)).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
}

#[tokio::test]
async fn a_free_request_batched_with_constrained_ones_answers_as_it_does_alone() {
    let s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let free = json!({"model": "stories260K", "prompt": "Once upon a time, there was a", "max_tokens": 48,
                      "temperature": 0, "ignore_eos": true});
    let (_, alone) = post(&s, "/v1/completions", free.clone()).await;
    let format = json!({"type": "json_schema", "json_schema": {"name": "p", "schema": person()}});
    let constrained = |i: u64| {
        json!({"model": "stories260K", "messages": [{"role": "user", "content": format!("P{i}")}], "max_tokens": 150,
               "response_format": format, "temperature": 1.0, "seed": i})
    };
    let mut jobs = vec![];
    for i in 0..4 {
        let (url, b) = (format!("{}/v1/chat/completions", s.url), constrained(i));
        jobs.push(tokio::spawn(async move {
            let r = reqwest::Client::new().post(url).json(&b).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let (_, batched) = post(&s, "/v1/completions", free).await;
    for j in jobs {
        let (status, v) = j.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert!(is_person(&serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap()));
    }
    assert_eq!(batched["choices"][0]["text"], alone["choices"][0]["text"]);
}

#[tokio::test]
async fn hostile_schemas_are_refused_and_the_server_keeps_serving() {
    let s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let chat = |format: Value| {
        json!({"model": "stories260K", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
               "response_format": format})
    };
    // Nested past what a request body may nest: refused while parsing the body.
    let mut deep = json!({"type": "string"});
    for _ in 0..200 {
        deep = json!({"type": "array", "items": deep});
    }
    let (status, _) =
        post(&s, "/v1/chat/completions", chat(json!({"type": "json_schema", "json_schema": {"schema": deep}}))).await;
    assert_eq!(status, 400);
    // A pattern whose automaton explodes, an unsatisfiable schema: refused by the grammar engine's limits.
    for schema in [
        json!({"type": "string", "pattern": "(a|b)*a(a|b){40}"}),
        json!({"allOf": [{"type": "string"}, {"type": "integer"}]}),
    ] {
        let (status, v) =
            post(&s, "/v1/chat/completions", chat(json!({"type": "json_schema", "json_schema": {"schema": schema}})))
                .await;
        assert!(status == 400 || status == 200, "{v}");
        if status == 400 {
            assert_eq!(v["error"]["param"], "response_format", "{v}");
        }
    }
    let (status, v) = post(&s, "/v1/chat/completions", chat(json!({"type": "text"}))).await;
    assert_eq!(status, 200, "{v}");
}
