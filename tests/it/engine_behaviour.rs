//! Continuous batching as a client sees it: batched greedy output equals solo output, preemption under a tiny
//! KV pool changes nothing, a disconnected client frees its sequence, and shutdown lets in-flight work finish.

use crate::common;

use common::{sse_events, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};
use teal::config::ServeArgs;

async fn complete(s: &TestServer, model: &str, prompt: &str, max_tokens: usize) -> String {
    let v: Value = s
        .post(
            "/v1/completions",
            json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    v["choices"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {v}")).to_string()
}

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Write a haiku about rain.",
    "List three primary colors:",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "The best way to learn a language is",
    "Translate to French: good morning",
    "Q: What is the boiling point of water?\nA:",
];

#[tokio::test]
async fn batching_changes_nothing_for_smollm2() {
    let s = TestServer::start(common::smollm_dir(), ServeArgs::default()).await;
    let mut solo = vec![];
    for p in PROMPTS {
        solo.push(complete(&s, "smollm2", p, 24).await);
    }
    let before = s.metric("teal_batch_size_bucket{model=\"smollm2\",le=\"4\"}").await.unwrap();
    let steps_before = s.metric("teal_batch_size_count{model=\"smollm2\"}").await.unwrap();
    let futs = PROMPTS.iter().map(|p| complete(&s, "smollm2", p, 24));
    let outs = futures::future::join_all(futs).await;
    for (i, (batched, alone)) in outs.iter().zip(&solo).enumerate() {
        assert_eq!(batched, alone, "prompt {i}: the same greedy request inside a batch of 8");
    }
    // Prove the 8 really ran together: some steps had more than 4 sequences.
    let small = s.metric("teal_batch_size_bucket{model=\"smollm2\",le=\"4\"}").await.unwrap() - before;
    let steps = s.metric("teal_batch_size_count{model=\"smollm2\"}").await.unwrap() - steps_before;
    assert!(steps > small, "no step ran more than 4 sequences ({steps} steps)");
}

#[tokio::test]
async fn preemption_under_a_tiny_kv_pool_keeps_outputs_identical() {
    // 96 tokens of cache for 6 requests of ~5 + 40 tokens: they cannot all fit, so some are preempted.
    let args = ServeArgs { max_total_tokens: Some(96), block_size: Some(8), ..Default::default() };
    let s = TestServer::start(common::stories_dir(), args).await;
    let prompts =
        ["Once upon a time", "The little dog", "Lily and Tom", "One day, a bird", "The sun was", "A big red ball"];
    let mut solo = vec![];
    for p in prompts {
        solo.push(complete(&s, "stories260K", p, 40).await);
    }
    let outs = futures::future::join_all(prompts.iter().map(|p| complete(&s, "stories260K", p, 40))).await;
    assert_eq!(outs, solo);
    let pre = s.metric("teal_preemptions_total{model=\"stories260K\"}").await.unwrap();
    assert!(pre >= 1.0, "the pool was meant to force preemption ({pre} preemptions)");
    assert!(s.wait_metric("teal_kv_cache_usage_ratio{model=\"stories260K\"}", 0.0).await, "all blocks freed");
}

#[tokio::test]
async fn a_disconnected_client_frees_its_sequence() {
    let s = TestServer::start(common::smollm_dir(), ServeArgs::default()).await;
    let r = s
        .post("/v1/completions", json!({"model": "smollm2", "prompt": "Tell me a long story.", "max_tokens": 4000, "ignore_eos": true, "stream": true}))
        .await;
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    assert!(s.wait_metric("teal_running_requests{model=\"smollm2\"}", 1.0).await);
    drop(body);
    assert!(s.wait_metric("teal_running_requests{model=\"smollm2\"}", 0.0).await, "sequence not dropped");
    assert!(s.wait_metric("teal_kv_cache_usage_ratio{model=\"smollm2\"}", 0.0).await, "blocks not freed");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let mut s = TestServer::start(common::stories_dir(), ServeArgs::default()).await;
    let url = s.url.clone();
    let inflight = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/completions"))
            .json(&json!({"model": "stories260K", "prompt": "Once", "max_tokens": 400, "ignore_eos": true, "stream": true}))
            .send()
            .await
            .unwrap();
        sse_events(r).await
    });
    // Let it start, then ask for shutdown while it streams.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    s.signal_stop();
    let events = inflight.await.unwrap();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let fin: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "length", "the request ran to its end");
    s.task.take().unwrap().await.unwrap().unwrap();
    assert!(reqwest::get(format!("{}/health/live", s.url)).await.is_err(), "the listener is closed");
}
