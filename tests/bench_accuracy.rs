//! `teal bench serve` (the real binary) against a fake OpenAI server with known injected delays: the measured
//! time to first token and inter-token latency must equal the injected ones within 5%. Its own test binary, so
//! no other test loads the CPU while it measures.

mod common;

use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use common::{bench, read_json, s};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;

const TTFT_MS: u64 = 200;
const ITL_MS: u64 = 40;
const TOKENS: usize = 8;

/// A streaming /v1/completions that waits TTFT_MS before the first token and ITL_MS between tokens.
async fn fake_completions(Json(_): Json<Value>) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let s = async_stream::stream! {
        tokio::time::sleep(Duration::from_millis(TTFT_MS)).await;
        for i in 0..TOKENS {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(ITL_MS)).await;
            }
            let chunk = json!({"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": format!(" t{i}"), "finish_reason": null}]});
            yield Ok(Event::default().data(chunk.to_string()));
        }
        let usage = json!({"id": "x", "object": "text_completion", "choices": [],
                           "usage": {"prompt_tokens": 16, "completion_tokens": TOKENS, "total_tokens": 16 + TOKENS}});
        yield Ok(Event::default().data(usage.to_string()));
        yield Ok(Event::default().data("[DONE]"));
    };
    Sse::new(s)
}

async fn fake_server() -> String {
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"object": "list", "data": [{"id": "fake", "object": "model"}]})) }),
        )
        .route("/v1/completions", post(fake_completions));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener.tap_io(|t| drop(t.set_nodelay(true))), app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_serve_measures_injected_delays_within_5_percent() {
    let url = fake_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("serve.json");
    let args = vec![
        s("serve"),
        s("--url"),
        url,
        s("--concurrency"),
        s("1,4"),
        s("--requests"),
        s("12"),
        s("--json"),
        out.display().to_string(),
        s("--output-len"),
        TOKENS.to_string(),
    ];
    let (ok, text) = bench(args).await;
    assert!(ok, "{text}");
    let v = read_json(&out);
    assert_eq!(v["benchmark"], "serve");
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1 && v["machine"]["cpu"].is_string());
    assert!(v["machine"]["git_commit"].is_string() && v["machine"]["teal_version"].is_string());
    for row in v["results"].as_array().unwrap() {
        let (ttft, itl) = (row["ttft_ms"]["p50"].as_f64().unwrap(), row["itl_ms"]["p50"].as_f64().unwrap());
        assert!((ttft - TTFT_MS as f64).abs() <= 0.05 * TTFT_MS as f64, "{}: TTFT p50 {ttft} ms", row["label"]);
        assert!((itl - ITL_MS as f64).abs() <= 0.05 * ITL_MS as f64, "{}: ITL p50 {itl} ms", row["label"]);
        let tpot = row["tpot_ms"]["p50"].as_f64().unwrap();
        assert!((tpot - ITL_MS as f64).abs() <= 0.05 * ITL_MS as f64, "{}: TPOT p50 {tpot} ms", row["label"]);
        assert_eq!((row["requests"].as_u64(), row["errors"].as_u64()), (Some(12), Some(0)));
        let tok_s = row["output_token_throughput"].as_f64().unwrap();
        assert!(tok_s > 0.0, "{row}");
    }
}
