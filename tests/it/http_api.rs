//! The real server on 127.0.0.1:0, driven over HTTP with stories260K: chat, completions, streaming, stop
//! strings, seeds, logprobs, and every error case of the OpenAI API surface.

use crate::common;

use common::{sse_events, TestServer};
use serde_json::{json, Value};
use teal::config::ServeArgs;

async fn server() -> TestServer {
    TestServer::start(common::stories_dir(), ServeArgs { max_body_bytes: Some(64 * 1024), ..Default::default() }).await
}

#[tokio::test]
async fn completion_greedy_equals_the_transformers_reference() {
    let s = server().await;
    let path = format!("{}/tests/fixtures/reference_stories260k.json", env!("CARGO_MANIFEST_DIR"));
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let body = json!({"model": "stories260K", "prompt": prompt, "max_tokens": 32, "temperature": 0,
                          "ignore_eos": true});
        let r = s.post("/v1/completions", body).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "text_completion");
        // The text as transformers' tokenizer writes the continuation (tests/reference/add_reference_text.py),
        // not as teal's own tokenizer would decode teal's ids.
        assert_eq!(v["choices"][0]["text"], case["greedy_text"], "{prompt}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], case["input_ids"].as_array().unwrap().len(), "{prompt}");
        assert_eq!(v["usage"]["completion_tokens"], 32);
        assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"].as_u64().unwrap() + 32);
    }
}

#[tokio::test]
async fn chat_completion_has_the_openai_shape() {
    let s = server().await;
    let r = s.post("/v1/chat/completions", json!({"model": "stories260K", "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 12})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert!(!c["message"]["content"].as_str().unwrap().is_empty());
    assert!(matches!(c["finish_reason"].as_str().unwrap(), "stop" | "length"));
    // Content parts are accepted too.
    let r = s.post("/v1/chat/completions", json!({"model": "stories260K", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 3})).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn streaming_matches_non_streaming_and_reports_usage() {
    let s = server().await;
    let body = json!({"model": "stories260K", "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 24, "temperature": 0});
    let full: Value = s.post("/v1/chat/completions", body.clone()).await.json().await.unwrap();
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let r = s.post("/v1/chat/completions", sbody).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str()).collect();
    assert_eq!(text, full["choices"][0]["message"]["content"].as_str().unwrap());
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"], full["usage"]);
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], full["choices"][0]["finish_reason"]);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
}

#[tokio::test]
async fn completion_streaming_ends_with_done() {
    let s = server().await;
    let r = s.post("/v1/completions", json!({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0, "stream": true})).await;
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
}

#[tokio::test]
async fn stop_strings_cut_the_text_in_both_modes() {
    let s = server().await;
    let base = json!({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0, "ignore_eos": true});
    let full: Value = s.post("/v1/completions", base.clone()).await.json().await.unwrap();
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    // A stop string from the middle of the greedy text (spanning tokens).
    let cut = text.find("named").expect("greedy story names someone");
    let mut b = base.clone();
    b["stop"] = json!(["named", "zzz-not-there"]);
    let v: Value = s.post("/v1/completions", b.clone()).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), &text[..cut]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    b["stream"] = json!(true);
    let events = sse_events(s.post("/v1/completions", b).await).await;
    let streamed: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok()?["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(streamed, &text[..cut], "held-back text never leaks the stop string");
}

#[tokio::test]
async fn same_seed_same_output_and_logprobs_are_reported() {
    let s = server().await;
    let body = |seed: u64| json!({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0, "top_p": 0.95, "top_k": 50, "seed": seed});
    let text = |v: Value| v["choices"][0]["text"].as_str().unwrap().to_string();
    let a = text(s.post("/v1/completions", body(7)).await.json().await.unwrap());
    let b = text(s.post("/v1/completions", body(7)).await.json().await.unwrap());
    let c = text(s.post("/v1/completions", body(8)).await.json().await.unwrap());
    assert_eq!(a, b);
    assert_ne!(a, c);
    let v: Value = s.post("/v1/chat/completions", json!({"model": "stories260K", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 3})).await.json().await.unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), v["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy picks the most likely token, so its logprob is the best one.
        assert!((t["logprob"].as_f64().unwrap() - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }
    let v: Value = s
        .post(
            "/v1/completions",
            json!({"model": "stories260K", "prompt": "Hi", "max_tokens": 3, "logprobs": 2, "temperature": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), 3);
}

async fn expect_error(s: &TestServer, path: &str, body: reqwest::Body, status: u16, code_or_param: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e["code"] == code_or_param || e["param"] == code_or_param, "{v}");
    v
}

#[tokio::test]
async fn errors_have_the_openai_shape_and_status() {
    let s = server().await;
    let chat = "/v1/chat/completions";
    expect_error(&s, chat, "{not json".into(), 400, "invalid_json").await;
    expect_error(&s, chat, r#"{"model":"stories260K"}"#.into(), 400, "invalid_json").await;
    let msg =
        |extra: &str| format!(r#"{{"model":"stories260K","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
    expect_error(&s, chat, msg(r#","temperature":5"#).into(), 400, "temperature").await;
    expect_error(&s, chat, msg(r#","top_p":0"#).into(), 400, "top_p").await;
    expect_error(&s, chat, msg(r#","max_tokens":0"#).into(), 400, "max_tokens").await;
    expect_error(&s, chat, msg(r#","n":17"#).into(), 400, "n").await;
    expect_error(&s, chat, msg(r#","top_logprobs":3"#).into(), 400, "top_logprobs").await;
    let v = expect_error(&s, chat, msg(r#","max_tokens":100000"#).into(), 400, "context_length_exceeded").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("maximum context length is 512"));
    let long = "once ".repeat(600);
    expect_error(
        &s,
        "/v1/completions",
        format!(r#"{{"model":"stories260K","prompt":"{long}","max_tokens":1}}"#).into(),
        400,
        "context_length_exceeded",
    )
    .await;
    expect_error(&s, "/v1/completions", r#"{"model":"stories260K","prompt":[99999]}"#.into(), 400, "prompt").await;
    expect_error(
        &s,
        chat,
        r#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}"#.into(),
        404,
        "model_not_found",
    )
    .await;
    let huge = format!(r#"{{"model":"stories260K","prompt":"{}"}}"#, "a".repeat(100 * 1024));
    expect_error(&s, "/v1/completions", huge.into(), 413, "request_too_large").await;
    // The server still serves after all of that.
    let r = s
        .post(chat, json!({"model": "stories260K", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_full_queue_answers_429() {
    let s = TestServer::start(common::stories_dir(), ServeArgs { max_queue: Some(0), ..Default::default() }).await;
    let r = s.post("/v1/completions", json!({"model": "stories260K", "prompt": "hi", "max_tokens": 2})).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
}

#[tokio::test]
async fn models_health_and_metrics() {
    let s = server().await;
    let v: Value = s.get("/v1/models").await.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "stories260K");
    assert_eq!(s.get("/health/live").await.status(), 200);
    assert_eq!(s.get("/health/ready").await.status(), 200);
    let r = s.post("/v1/completions", json!({"model": "stories260K", "prompt": "hi", "max_tokens": 2})).await;
    assert_eq!(r.headers()["x-teal-slot"], "blue");
    assert_eq!(r.headers()["x-teal-model-version"].len(), 12, "the digest's first 12 hex digits by default");
    assert_eq!(s.get("/health/live").await.headers()["x-teal-slot"], "blue");
    assert_eq!(s.metric("teal_live_slot{slot=\"blue\"}").await, Some(1.0));
    assert_eq!(
        s.metric("teal_generation_tokens_total{model=\"stories260K\"}").await,
        Some(2.0),
        "warm-up and gate requests are not counted as client traffic"
    );
    let text = s.get("/metrics").await.text().await.unwrap();
    for name in [
        "teal_requests_total{endpoint=\"/v1/completions\",model=\"stories260K\",slot=\"blue\",status=\"200\"}",
        "teal_time_to_first_token_seconds_bucket",
        "teal_inter_token_latency_seconds_bucket",
        "teal_request_duration_seconds_bucket",
        "teal_queue_time_seconds_bucket",
        "teal_running_requests",
        "teal_kv_cache_usage_ratio",
        "teal_prompt_tokens_total",
        "teal_generation_tokens_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    assert_eq!(s.get("/nope").await.status(), 404);
}
