//! The `teal` binary as an operator runs it: configured through TEAL_* environment variables, 503 until the
//! model is ready, and SIGTERM lets an in-flight streaming request finish before the process exits 0.

use crate::common;

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = common::Reaped::spawn(
        Command::new(env!("CARGO_BIN_EXE_teal"))
            .arg("serve")
            .env("TEAL_MODEL", common::stories_dir())
            .env("TEAL_PORT", port.to_string())
            .env("TEAL_ADMIN_PORT", free_port().to_string())
            .env("TEAL_STATE_DIR", state.path())
            .env("TEAL_SHUTDOWN_TIMEOUT", "20")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
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
    let status = child.wait().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn before_the_model_is_ready_generation_gets_503() {
    // The API with no engine loaded yet, as during start-up.
    let state = teal::api::AppState {
        router: std::sync::Arc::new(teal::router::LiveRouter::new(None)),
        metrics: teal::telemetry::Metrics::new(),
        rollouts: None,
        sessions: std::sync::Arc::new(teal::sessions::memory::MemoryStore::new(std::time::Duration::from_secs(60), 10)),
        session_fail_open: false,
        max_session_bytes: 1 << 20,
        limits: Default::default(),
        cpu: teal::api::limits::CpuPool::new(1, 8),
        control: Default::default(),
        shutdown: teal::net::shutdown::ShutdownSignal::never(),
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
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["serve", "--model", "/nonexistent/model", "--port", &free_port().to_string()])
        .args(["--admin-port", &free_port().to_string()])
        .env("TEAL_STATE_DIR", state.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model not found: /nonexistent/model"), "{err}");
}

fn teal_admin(admin_port: u16, state: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("admin")
        .args(["--url", &format!("http://127.0.0.1:{admin_port}")])
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("TEAL_ADMIN_TOKEN")
        .output()
        .unwrap()
}

#[tokio::test]
async fn teal_admin_drives_a_running_server_with_its_generated_token() {
    let state = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let child = common::Reaped::spawn(
        Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(["serve", "--port", &port.to_string(), "--admin-port", &admin_port.to_string()])
            .arg("--blue")
            .arg(common::stories_dir())
            .arg("--green")
            .arg(common::stories_dir())
            .arg("--state-dir")
            .arg(state.path())
            .env_remove("TEAL_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if client.get(format!("http://127.0.0.1:{port}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.path().join("admin.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the generated token is readable by its owner only");
    let p = state.path();
    let out = teal_admin(admin_port, p, &["wait", "--slot", "green", "--state", "ready", "--timeout-s", "60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = teal_admin(admin_port, p, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["live"].as_str(), v["slots"]["green"]["state"].as_str()), (Some("blue"), Some("ready")));
    let table = String::from_utf8(teal_admin(admin_port, p, &["status"]).stdout).unwrap();
    assert!(table.starts_with("SLOT") && table.contains("stories260K") && table.contains("passed"), "{table}");
    let out = teal_admin(admin_port, p, &["flip", "--expect-live", "blue", "--reason", "from the CLI, ✓"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("live: green"), "{out:?}");
    let out = teal_admin(admin_port, p, &["rollback"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("live: blue"), "{out:?}");
    let events = String::from_utf8(teal_admin(admin_port, p, &["events"]).stdout).unwrap();
    assert!(events.contains(" flip ") && events.contains(" rollback "), "{events}");
    assert!(events.contains("operator_action") && events.contains("from the CLI, ✓"), "{events}");
    let out = teal_admin(admin_port, p, &["unload", "blue"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"), "{out:?}");
    let out = teal_admin(admin_port, p, &["--token", "wrong", "status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().await.success(), "SIGTERM ends the server cleanly");
}

#[test]
fn an_admin_api_on_a_public_address_needs_an_explicit_token() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["serve", "--port", &free_port().to_string(), "--admin-port", &free_port().to_string()])
        .args(["--admin-host", "0.0.0.0"])
        .arg("--model")
        .arg(common::stories_dir())
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("TEAL_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve the admin API on 0.0.0.0"), "{err}");
}

#[test]
fn admin_tokens_must_be_long_and_logs_are_plain_or_json() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["serve", "--admin-token", "short", "--model", "/nonexistent/model"])
        .args(["--port", &free_port().to_string(), "--admin-port", &free_port().to_string()])
        .env("TEAL_STATE_DIR", state.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shorter than 16 characters"), "{err}");
    assert!(err.contains("visible to every user"), "a token on the command line is warned about: {err}");
    assert!(!err.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {err}");
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["serve", "--log-format", "json", "--model", "/nonexistent/model"])
        .args(["--port", &free_port().to_string(), "--admin-port", &free_port().to_string()])
        .env("TEAL_STATE_DIR", state.path())
        .env("TEAL_ADMIN_TOKEN", "0123456789abcdef0123")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<Value> =
        err.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(logs.iter().any(|l| l["level"] == "ERROR" && l["fields"]["error"].is_string()), "{err}");
}
