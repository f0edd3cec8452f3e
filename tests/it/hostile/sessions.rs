//! Sessions never lose or invent history silently: unknown ids are 404, a full store refuses new sessions
//! instead of evicting active ones, a retried turn is stored once, oversized histories are refused.

use super::battery::{fast_args, Battery};
use serde_json::{json, Value};
use teal::config::ServeArgs;

async fn turn(
    b: &Battery,
    session: &str,
    content: &str,
    request_id: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let body = json!({"model": "stories", "messages": [{"role": "user", "content": content}], "max_tokens": 6,
                      "temperature": 0, "session_id": session});
    let mut r = reqwest::Client::new().post(format!("{}/v1/chat/completions", b.s.url)).json(&body);
    if let Some(id) = request_id {
        r = r.header("x-request-id", id);
    }
    let resp = r.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

async fn create(b: &Battery, body: Option<Value>) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(format!("{}/v1/sessions", b.s.url));
    if let Some(body) = body {
        r = r.json(&body);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refuse_what_they_cannot_keep_honestly() {
    let args = ServeArgs { max_sessions: Some(2), max_session_bytes: Some(2000), ..fast_args() };
    let mut b = Battery::start(args).await;
    let (s, _, v) = turn(&b, "never-created", "Hi", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("session_not_found")), "{v}");
    b.check("a session id the store does not hold").await;
    let (s, v) = create(&b, Some(json!({"id": "s-1"}))).await;
    assert_eq!((s, v["id"].as_str()), (201, Some("s-1")), "{v}");
    let (s, v) = create(&b, Some(json!({"id": "s-1"}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("session_exists")), "{v}");
    b.check("creating a session twice").await;
    let (s, v) = create(&b, Some(json!({"id": "../../x"}))).await;
    assert_eq!(s, 400, "{v}");
    b.check("a session id with a path in it").await;
    // A retried turn (same x-request-id) is answered from the store and stored once.
    let (s, _, first) = turn(&b, "s-1", "Tell me a story.", Some("turn-1")).await;
    assert_eq!(s, 200, "{first}");
    let (s, headers, again) = turn(&b, "s-1", "Tell me a story.", Some("turn-1")).await;
    assert_eq!((s, headers.get("x-teal-session-replayed").map(|v| v.to_str().unwrap())), (200, Some("true")));
    assert_eq!(again["choices"][0]["message"]["content"], first["choices"][0]["message"]["content"]);
    let stored: Value = reqwest::get(format!("{}/v1/sessions/s-1", b.s.url)).await.unwrap().json().await.unwrap();
    assert_eq!(stored["messages"].as_array().map(Vec::len), Some(2), "one turn, stored once: {stored}");
    b.check("a retried turn").await;
    // The store is full and both sessions are in use: a new one is refused, neither is evicted.
    let (s, v) = create(&b, None).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = create(&b, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("session_store_full")), "{v}");
    let r = reqwest::get(format!("{}/v1/sessions/s-1", b.s.url)).await.unwrap();
    assert_eq!(r.status(), 200, "the active session was not evicted");
    b.check("a full session store").await;
    let (s, _, v) = turn(&b, "s-1", &"long ".repeat(500), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (413, Some("session_too_large")), "{v}");
    b.check("a history past its size limit").await;
    b.report("sessions");
}
