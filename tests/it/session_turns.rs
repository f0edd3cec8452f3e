//! A session turn under stress: flips and a rollback while its reply streams, a client that leaves half-way, and
//! a Redis that is slow (paused, not dead). Real server, real SmolLM2, real redis-server.

use super::sessions::{args, chat, create, load_v2, turn, Redis};
use crate::common;

use common::TestServer;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

async fn with_green(redis: &Redis) -> TestServer {
    let s = TestServer::start_args(args(Some(redis))).await;
    load_v2(&s).await;
    s
}

fn long_turn(content: &str) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": content}], "max_tokens": 160,
           "ignore_eos": true, "temperature": 0, "stream": true})
}

/// The text of a chat stream's deltas, and whether it ended with [DONE].
fn streamed_text(events: &[String]) -> (String, bool) {
    let text = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(String::from))
        .collect();
    (text, events.last().is_some_and(|l| l == "[DONE]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flips_and_a_rollback_during_a_streamed_turn_leave_it_whole_on_its_slot() {
    let redis = Redis::start();
    let s = with_green(&redis).await;
    create(&s, "flippy").await;
    let r = chat(&s, Some("flippy"), long_turn("Tell me about the sea.")).await;
    assert_eq!((r.status().as_u16(), r.headers()["x-teal-slot"].to_str().unwrap()), (200, "blue"));
    let mut body = r.bytes_stream();
    let mut raw = body.next().await.unwrap().unwrap().to_vec();
    for (path, live) in [("/admin/flip", "green"), ("/admin/rollback", "blue"), ("/admin/flip", "green")] {
        let r = s.admin(Method::POST, path, Some(json!({}))).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(s.admin_json("/admin/slots").await["live"], live);
    }
    while let Some(chunk) = body.next().await {
        raw.extend_from_slice(&chunk.unwrap());
    }
    let events: Vec<String> =
        String::from_utf8(raw).unwrap().lines().filter_map(|l| l.strip_prefix("data: ").map(String::from)).collect();
    let (text, done) = streamed_text(&events);
    assert!(done, "the stream ended normally: {events:?}");
    let stored = redis.messages("flippy");
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1]["content"], text.as_str(), "the stored reply is the one streamed");
    assert_eq!(stored[1]["slot"], "blue", "the turn finished on the slot it started on");
    // The next turn goes to the slot live now, with the first turn as its history.
    let r = chat(&s, Some("flippy"), turn("And then?")).await;
    assert_eq!((r.status().as_u16(), r.headers()["x-teal-slot"].to_str().unwrap()), (200, "green"));
    let v: Value = r.json().await.unwrap();
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 160, "the history came along: {v}");
    assert_eq!(redis.messages("flippy").len(), 4);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_mid_turn_stores_nothing_and_the_session_goes_on() {
    let redis = Redis::start();
    let s = TestServer::start_args(args(Some(&redis))).await;
    create(&s, "leaver").await;
    assert_eq!(chat(&s, Some("leaver"), turn("Hello.")).await.status(), 200);
    assert_eq!(redis.messages("leaver").len(), 2);
    let mut long = long_turn("Tell me a long story.");
    long["max_tokens"] = json!(4000);
    let r = chat(&s, Some("leaver"), long).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    assert!(!body.next().await.unwrap().unwrap().is_empty());
    drop(body);
    assert!(s.wait_metric("teal_running_requests{model=\"smollm2\"}", 0.0).await, "the sequence was dropped");
    assert!(s.wait_metric("teal_kv_cache_usage_ratio{model=\"smollm2\"}", 0.0).await, "its blocks were freed");
    assert_eq!(redis.messages("leaver").len(), 2, "a turn nobody received is not part of the history");
    let r = chat(&s, Some("leaver"), turn("Are you there?")).await;
    assert_eq!(r.status(), 200);
    let stored = redis.messages("leaver");
    assert_eq!(stored.len(), 4);
    assert_eq!(stored[2]["content"], "Are you there?");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_redis_costs_session_turns_a_bounded_wait_and_nothing_else() {
    let redis = Redis::start();
    let s = TestServer::start_args(args(Some(&redis))).await;
    create(&s, "patient").await;
    // Redis is stopped, not dead (SIGSTOP: the process is up, its socket accepts, it answers nobody) until the
    // test lets it go on; both requests below must come back while it is stopped.
    redis.signal("STOP");
    // A request that waited on Redis would never come back: each gets 30 s, far past the store's 2 s limit.
    let limit = Duration::from_secs(30);
    let r = tokio::time::timeout(limit, chat(&s, Some("patient"), turn("Hello?"))).await.expect("bounded by the store");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "session_store_unavailable", "{v}");
    // Requests without a session do not wait on Redis at all.
    let r = tokio::time::timeout(limit, chat(&s, None, turn("No session."))).await.expect("not waiting on Redis");
    assert_eq!(r.status(), 200);
    assert_eq!(s.metric("teal_session_store_errors_total{op=\"get\"}").await, Some(1.0), "counted once");
    // Once Redis answers again, so does the session, with nothing half-written.
    redis.signal("CONT");
    let mut ok = false;
    for _ in 0..50 {
        if chat(&s, Some("patient"), turn("Hello again.")).await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "the session works again after the pause");
    let stored = redis.messages("patient");
    assert_eq!(stored.len(), 2, "only the turn that was answered: {stored:?}");
    assert_eq!(stored[0]["content"], "Hello again.");
    s.stop().await.unwrap();
}
