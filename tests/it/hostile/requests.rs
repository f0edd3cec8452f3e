//! Public requests and admin calls an attacker (or a broken client) sends: each gets its precise 4xx in its
//! protocol's shape, bounded before the work, and changes nothing.

use super::battery::{fast_args, Battery};
use crate::common::{self, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use teal::config::ServeArgs;

const CHAT: &str = "/v1/chat/completions";

fn chat_body(content: &str) -> String {
    json!({"model": "stories", "messages": [{"role": "user", "content": content}], "max_tokens": 4}).to_string()
}

/// Resident set size of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    teal::memory::probe::parse_status_rss(&text).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_public_requests_get_their_status_and_change_nothing() {
    let mut b = Battery::start(fast_args()).await;
    let json_ct = Some("application/json");
    // Any web page can send text/plain cross-origin without a preflight: never parsed as JSON.
    let (s, v) = b.send(CHAT, Some("text/plain"), chat_body("hi")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{v}");
    b.check("chat with Content-Type text/plain").await;
    let (s, _) = b.send(CHAT, Some("application/x-www-form-urlencoded"), chat_body("hi")).await;
    assert_eq!(s, 415);
    b.check("chat as a form post").await;
    let (s, _) = b.send(CHAT, None, chat_body("hi")).await;
    assert_eq!(s, 415);
    b.check("chat without a content type").await;
    let (s, v) = b.send(CHAT, json_ct, "{\"model\": \"stories\", \"messages\": [").await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_json")), "{v}");
    b.check("malformed JSON").await;
    let (s, v) = b.send(CHAT, json_ct, vec![b'x'; (4 << 20) + 1]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (413, Some("request_too_large")), "{v}");
    b.check("a body over 4 MiB").await;
    let (s, v) = b.send(CHAT, json_ct, chat_body(&"word ".repeat(300_000))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("bytes of text"), "{v}");
    b.check("a 1.5 MB prompt refused before tokenizing").await;
    // 1.9 million stop ids in a 4 MiB body.
    let ids = vec!["1"; 1_900_000].join(",");
    let body = format!(r#"{{"model":"stories","prompt":"hi","max_tokens":2,"stop_token_ids":[{ids}]}}"#);
    let (s, v) = b.send("/v1/completions", json_ct, body).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("stop_token_ids")), "{v}");
    b.check("1.9M stop_token_ids").await;
    let body = r#"{"model":"stories","prompt":"hi","max_tokens":2,"stop_token_ids":[4000000000]}"#;
    let (s, v) = b.send("/v1/completions", json_ct, body).await;
    assert!(s == 400 && v["error"]["message"].as_str().unwrap().contains("outside the vocabulary"), "{v}");
    b.check("a stop token id outside the vocabulary").await;
    let r = reqwest::Client::new().get(format!("{}{CHAT}", b.s.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "method_not_allowed", "OpenAI's shape on /v1: {v}");
    b.check("GET on a POST route").await;
    let r = reqwest::Client::new().delete(format!("{}/v2/models/x/infer", b.s.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string(), "KServe's shape on /v2: {v}");
    b.check("DELETE on a KServe route").await;
    let r = reqwest::Client::new().get(format!("{}/v1/sessions/%FF%FE", b.s.url)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "an extractor's rejection in OpenAI's shape: {v}");
    b.check("a path that is not UTF-8").await;
    let big_messages: Vec<Value> = (0..5000).map(|_| json!({"role": "user", "content": "x"})).collect();
    let body = json!({"model": "stories", "messages": big_messages}).to_string();
    let (s, v) = b.send(CHAT, json_ct, body).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("messages")), "{v}");
    b.check("5000 messages in one request").await;
    // The request id is the client's when well-formed, else a new one; always echoed.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", b.s.url))
        .header("x-request-id", "client-id-1")
        .json(&json!({"model": "stories", "prompt": "hi", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    let r =
        reqwest::Client::new().get(format!("{}/health/live", b.s.url)).header("x-request-id", "bad id").send().await;
    let r = r.unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 32, "a malformed id is replaced");
    b.check("request ids").await;
    b.report("public requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_parallel_4mib_prompts_keep_memory_bounded() {
    // A real `teal serve` process, so its resident memory is the server's alone.
    let p = super::shutdown::serve(common::stories_dir(), &[]).await;
    let pid = p.child.id();
    let before = rss(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let prompt = "a".repeat((4 << 20) - 200);
    let body = json!({"model": "m", "prompt": prompt, "max_tokens": 4}).to_string();
    let client = reqwest::Client::new();
    let sends = (0..16).map(|_| {
        client
            .post(format!("{}/v1/completions", p.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{v}");
    }
    sampler.abort();
    let growth = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);
    eprintln!("16 parallel 4 MiB prompts: peak RSS growth of the server process {} MiB", growth >> 20);
    assert!(growth < 512 << 20, "RSS grew by {} MiB", growth >> 20);
    let live = client
        .post(format!("{}/v1/completions", p.url))
        .json(&json!({"model": "m", "prompt": "Once", "max_tokens": 4}));
    assert_eq!(live.send().await.unwrap().status(), 200, "the server still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_calls_get_their_status_and_change_nothing() {
    let mut b = Battery::start(ServeArgs { max_sessions: Some(3), ..fast_args() }).await;
    let admin = reqwest::Client::new();
    let base = b.s.admin_url.clone();
    let url = |p: &str| format!("{base}{p}");
    let r = admin.get(url("/admin/slots")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers().contains_key("www-authenticate")), (401, true));
    b.check("admin call without a token").await;
    let r = admin.get(url("/admin/slots")).bearer_auth("wrong-token-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 401);
    b.check("admin call with a wrong token").await;
    let r = admin.post(url("/admin/flip")).bearer_auth(ADMIN_TOKEN).header("content-type", "text/plain").body("{}");
    assert_eq!(r.send().await.unwrap().status(), 415);
    b.check("admin flip with a text/plain body").await;
    let r = admin.get(url("/admin/flip")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 405);
    b.check("GET on the flip route").await;
    let r = b.s.admin(Method::POST, "/admin/flip", Some(json!({}))).await;
    assert_eq!(r.status(), 409, "no standby is ready");
    b.check("flip without a ready standby").await;
    let r = b.s.admin(Method::DELETE, "/admin/slots/blue", None).await;
    assert_eq!(r.status(), 409, "the live slot cannot be unloaded");
    b.check("unload the live slot").await;
    let r = b.s.admin(Method::POST, "/admin/slots/purple/load", Some(json!({"model": "x"}))).await;
    assert_eq!(r.status(), 404);
    b.check("a slot that does not exist").await;
    let r = b.s.admin(Method::POST, "/admin/slots/green/load", Some(json!({"model": "x", "evil": 1}))).await;
    assert_eq!(r.status(), 400, "unknown fields are refused");
    b.check("a load with an unknown field").await;
    let big = json!({"model": "x", "version": "v".repeat(2 << 20)});
    let r = b.s.admin(Method::POST, "/admin/slots/green/load", Some(big)).await;
    assert_eq!(r.status(), 413);
    b.check("a 2 MiB admin body").await;
    let r = b.s.admin(Method::POST, "/admin/operations/op-999/cancel", None).await;
    assert_eq!(r.status(), 404);
    b.check("cancel an operation that does not exist").await;
    let flips = (0..2).map(|_| b.s.admin(Method::POST, "/admin/rollback", None));
    for r in futures::future::join_all(flips).await {
        assert_eq!(r.status(), 409, "nothing to roll back to");
    }
    b.check("two concurrent rollbacks").await;
    b.report("admin");
}
