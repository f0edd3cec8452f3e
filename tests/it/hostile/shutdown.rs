//! Shutdown is bounded: the real binary, SIGTERM with a stream that will not finish in time or a gate that runs
//! long, exits within the shutdown timeout plus two seconds; the cut stream ends with an error event and
//! `[DONE]`, and an admin event follower is closed at once.

use crate::common;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(super) struct Proc {
    pub child: Child,
    pub url: String,
    admin_url: String,
    /// The server's model root.
    models: tempfile::TempDir,
    _state: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `teal serve` on `model` with a 2 s shutdown timeout, ready.
pub(super) async fn serve(model: std::path::PathBuf, extra: &[&str]) -> Proc {
    let state = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let models = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("serve")
        .args(extra)
        .env("TEAL_MODEL", model)
        .env("TEAL_MODELS_DIR", models.path())
        .env("TEAL_PORT", port.to_string())
        .env("TEAL_ADMIN_PORT", admin.to_string())
        .env("TEAL_STATE_DIR", state.path())
        .env("TEAL_ADMIN_TOKEN", common::ADMIN_TOKEN)
        .env("TEAL_SHUTDOWN_TIMEOUT", "2")
        .env("TEAL_SERVED_MODEL_NAME", "m")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
        admin_url: format!("http://127.0.0.1:{admin}"),
        models,
        _state: state,
    };
    for _ in 0..1200 {
        if let Ok(r) = reqwest::get(format!("{}/health/ready", p.url)).await {
            if r.status() == 200 {
                return p;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never ready");
}

/// Sends SIGTERM and returns how long the process took to exit.
async fn terminate(p: &mut Proc) -> Duration {
    let t0 = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().unwrap().success());
    loop {
        if p.child.try_wait().unwrap().is_some() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the process did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_with_a_stream_that_would_outlive_the_timeout_exits_in_time() {
    let mut p = serve(common::smollm_path(), &["--threads", "1"]).await;
    // A follower of the audit log: it never ends by itself.
    let follow = reqwest::Client::new()
        .get(format!("{}/admin/events?follow=true", p.admin_url))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let body = json!({"model": "m", "prompt": "Once", "max_tokens": 4000, "ignore_eos": true, "stream": true});
    let stream = reqwest::Client::new().post(format!("{}/v1/completions", p.url)).json(&body).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // And a second stream whose client never reads (a stalled stream): it must not hold the exit either.
    let addr: std::net::SocketAddr = p.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let body = json!({"model": "m", "prompt": "Twice", "max_tokens": 4000, "ignore_eos": true, "stream": true,
                      "logprobs": 5})
    .to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, format!("{head}{body}").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let follower = tokio::spawn(async move {
        let t0 = Instant::now();
        let _ = follow.text().await;
        t0.elapsed()
    });
    let reader = tokio::spawn(common::sse_events(stream));
    let took = terminate(&mut p).await;
    eprintln!("SIGTERM with a long stream: exited after {:.2} s (timeout 2 s)", took.as_secs_f64());
    assert!(took < Duration::from_secs(4), "exited after {took:?}, past the timeout plus 2 s");
    let events = reader.await.unwrap();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "the cut stream still ends with [DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["error"]["code"], "shutting_down", "{last}");
    drop(stalled);
    let follower_took = follower.await.unwrap();
    assert!(follower_took < Duration::from_secs(2), "the event follower closed at once ({follower_took:?})");
}

#[tokio::test]
async fn sigterm_while_a_gate_runs_long_exits_in_time() {
    let mut p = serve(common::stories_dir(), &[]).await;
    let copy = p.models.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    super::files::stories_copy(&copy);
    let gates = json!({"smoke": {"requests": 10000, "concurrency": 4, "max_tokens": 400}});
    let admin = |path: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::GET, format!("{}{path}", p.admin_url))
            .bearer_auth(common::ADMIN_TOKEN)
    };
    let r = reqwest::Client::new()
        .post(format!("{}/admin/slots/green/load", p.admin_url))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({"model": "copy", "gates": gates}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["operation"]["id"].as_str().unwrap().to_string();
    let mut gating = false;
    for _ in 0..600 {
        let op: Value = admin(&format!("/admin/operations/{id}")).send().await.unwrap().json().await.unwrap();
        if op["phase"] == "gating" {
            gating = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gating, "the load never reached its gates");
    let took = terminate(&mut p).await;
    eprintln!("SIGTERM during a long gate: exited after {:.2} s (timeout 2 s)", took.as_secs_f64());
    assert!(took < Duration::from_secs(4), "exited after {took:?}, past the timeout plus 2 s");
}
