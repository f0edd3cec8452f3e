//! The `teal` binary as an operator runs it: configured through TEAL_* environment variables, 503 until the
//! model is ready, and SIGTERM lets an in-flight streaming request finish before the process exits 0.

mod common;

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("serve")
        .env("TEAL_MODEL", common::stories_dir())
        .env("TEAL_PORT", port.to_string())
        .env("TEAL_SHUTDOWN_TIMEOUT", "20")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{url}/health/ready")).send().await {
            ready |= r.status() == 200;
            if ready {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "never ready");
    let body = json!({"model": "stories260K", "prompt": "Once", "max_tokens": 450, "ignore_eos": true, "stream": true});
    let resp = client.post(format!("{url}/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let events = common::sse_events(resp).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let fin: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "length", "the request ran to its end after SIGTERM");
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn before_the_model_is_ready_generation_gets_503() {
    // The API with no engine loaded yet, as during start-up.
    let state = teal::api::AppState {
        engine: Default::default(),
        metrics: teal::telemetry::Metrics::new(),
        served_model_name: None,
        max_body_bytes: 1 << 20,
        log_prompts: false,
        started_at: 0,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, teal::api::router(state)).await });
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_ready");
    assert_eq!(client.get(format!("{url}/health/ready")).send().await.unwrap().status(), 503);
    assert_eq!(client.get(format!("{url}/health/live")).send().await.unwrap().status(), 200);
}

#[test]
fn a_model_that_fails_to_load_exits_non_zero_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["serve", "--model", "/nonexistent/model", "--port", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model not found: /nonexistent/model"), "{err}");
}
