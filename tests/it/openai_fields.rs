//! The OpenAI fields that change an answer: `n` (choices share the prompt's KV blocks), `logit_bias`, `echo`,
//! and the refusals of what is malformed or not done (the legacy functions, bad tools and schemas): a 400
//! naming the field, never a silently ignored field.

use crate::common;

use common::TestServer;
use serde_json::{json, Value};
use teal::config::ServeArgs;

async fn post(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = s.post(path, body).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn refused(s: &TestServer, path: &str, body: Value, param: &str) -> String {
    let (status, v) = post(s, path, body).await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some(param)), "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

const PROMPT: &str = "Once upon a time, there was a little girl named Lily. She liked to play outside in the sun.";

#[tokio::test]
async fn n_choices_share_the_prompt_blocks_and_report_usage_once() {
    let s = TestServer::start(common::stories_dir(), ServeArgs { block_size: Some(8), ..Default::default() }).await;
    let body = json!({"model": "stories260K", "prompt": PROMPT, "max_tokens": 6, "temperature": 0.9, "seed": 11,
                      "n": 4, "ignore_eos": true});
    let (status, v) = post(&s, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 24, "{v}");
    assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(prompt_tokens + 24));
    // Choices 1 to 3 found choice 0's whole blocks in the cache: the prompt was prefilled once.
    let shared = (prompt_tokens - 1) / 8 * 8;
    let hits = s.metric("teal_prefix_cache_hit_tokens_total{model=\"stories260K\"}").await.unwrap();
    assert_eq!(hits as u64, 3 * shared, "{v}");
    // The same seed gives the same choices again, and different choices from each other.
    let (_, again) = post(&s, "/v1/completions", body).await;
    assert_eq!(again["choices"], v["choices"]);
    let texts: std::collections::HashSet<&str> = choices.iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert!(texts.len() > 1, "{v}");
}

#[tokio::test]
async fn n_choices_stream_with_their_index_and_one_usage_chunk() {
    let s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let body = json!({"model": "stories260K", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                      "temperature": 0, "n": 2, "ignore_eos": true, "stream": true,
                      "stream_options": {"include_usage": true}});
    let events = common::sse_events(s.post("/v1/chat/completions", body).await).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events.iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
    let mut text = [String::new(), String::new()];
    let mut finished = [0, 0];
    for c in &chunks {
        for ch in c["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            text[i] += ch["delta"]["content"].as_str().unwrap_or("");
            finished[i] += usize::from(ch["finish_reason"].is_string());
        }
    }
    assert_eq!(finished, [1, 1], "{events:?}");
    assert_eq!(text[0], text[1], "greedy choices are the same");
    let usage: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
    assert_eq!(usage.len(), 1, "{events:?}");
    assert_eq!(usage[0]["usage"]["completion_tokens"], 10);
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]), "one response id");
}

#[tokio::test]
async fn logit_bias_steers_and_bad_entries_are_refused() {
    let s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let ask = |bias: Value| {
        json!({"model": "stories260K", "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 0,
               "ignore_eos": true, "logit_bias": bias})
    };
    let (_, plain) = post(&s, "/v1/completions", ask(json!({}))).await;
    let (_, forced) = post(&s, "/v1/completions", ask(json!({"300": 100}))).await;
    let tokens = forced["choices"][0]["logprobs"]["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens.len(), 4);
    assert!(tokens.iter().all(|t| t == &tokens[0]), "+100 makes token 300 the greedy choice: {forced}");
    assert_ne!(plain["choices"][0]["logprobs"]["tokens"], forced["choices"][0]["logprobs"]["tokens"]);
    // -100 on every other token of the vocabulary (512) leaves token 300 the only choice too.
    let banned: serde_json::Map<String, Value> =
        (0..512).filter(|&i| i != 300).map(|i| (i.to_string(), json!(-100))).collect();
    let (_, only) = post(&s, "/v1/completions", ask(Value::Object(banned))).await;
    assert_eq!(only["choices"][0]["logprobs"]["tokens"], forced["choices"][0]["logprobs"]["tokens"], "{only}");
    for (bias, why) in [
        (json!({"x": 1}), "not a token id"),
        (json!({"512": 1}), "not a token id"),
        (json!({"-1": 1}), "not a token id"),
        (json!({"5": 101}), "from -100 to 100"),
        (json!({"5": "1"}), "from -100 to 100"),
    ] {
        let msg = refused(&s, "/v1/completions", ask(bias.clone()), "logit_bias").await;
        assert!(msg.contains(why), "{bias}: {msg}");
    }
    let many: serde_json::Map<String, Value> = (0..1025).map(|i| (i.to_string(), json!(1))).collect();
    refused(&s, "/v1/completions", ask(Value::Object(many)), "logit_bias").await;
}

#[tokio::test]
async fn echo_puts_the_prompt_before_the_completion() {
    let s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let body = json!({"model": "stories260K", "prompt": PROMPT, "max_tokens": 5, "temperature": 0});
    let (_, plain) = post(&s, "/v1/completions", body.clone()).await;
    let mut echo = body.clone();
    echo["echo"] = json!(true);
    let (_, v) = post(&s, "/v1/completions", echo.clone()).await;
    let completion = plain["choices"][0]["text"].as_str().unwrap();
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), format!("{PROMPT}{completion}"));
    echo["stream"] = json!(true);
    let events = common::sse_events(s.post("/v1/completions", echo.clone()).await).await;
    let streamed: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(streamed, format!("{PROMPT}{completion}"));
    echo["stream"] = json!(false);
    echo["logprobs"] = json!(1);
    refused(&s, "/v1/completions", echo, "echo").await;
}

#[tokio::test]
async fn legacy_functions_bad_tools_bad_formats_and_bad_n_are_refused_by_name() {
    let s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let chat = |extra: Value| {
        let mut b = json!({"model": "stories260K", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let path = "/v1/chat/completions";
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    refused(&s, path, chat(json!({"functions": [{"name": "f"}]})), "functions").await;
    refused(&s, path, chat(json!({"function_call": {"name": "f"}})), "function_call").await;
    refused(&s, path, chat(json!({"tool_choice": "required"})), "tool_choice").await;
    refused(&s, path, chat(json!({"tools": {"f": 1}})), "tools").await;
    refused(&s, path, chat(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})), "tools").await;
    refused(&s, path, chat(json!({"tools": [{"type": "code_interpreter"}]})), "tools").await;
    let named = |n: &str| json!({"type": "function", "function": {"name": n}});
    refused(&s, path, chat(json!({"tools": tool, "tool_choice": named("g")})), "tool_choice").await;
    let forced = json!({"tools": tool, "tool_choice": "required", "response_format": {"type": "json_object"}});
    refused(&s, path, chat(forced), "response_format").await;
    refused(&s, path, chat(json!({"response_format": {"type": "xml"}})), "response_format").await;
    let bad_schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
                            "properties": {"a": {"type": "no-such-type"}}}}});
    let msg = refused(&s, path, chat(json!({"response_format": bad_schema})), "response_format").await;
    assert!(msg.contains("grammar"), "{msg}");
    let bad_params = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]);
    refused(&s, path, chat(json!({"tools": bad_params, "tool_choice": named("f")})), "tool_choice").await;
    refused(&s, path, chat(json!({"n": 17})), "n").await;
    refused(&s, path, chat(json!({"n": 0})), "n").await;
    // What changes nothing is accepted: no tools, tool_choice none, a text response format, n = 1.
    let fine = chat(json!({"tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "n": 1}));
    let (status, v) = post(&s, path, fine).await;
    assert_eq!(status, 200, "{v}");
}
