//! The admin API's guard rails against a real server: the token, the model root, busy and live slots, bad
//! bodies; and the audit log as JSON, as a live SSE feed, and across a restart.

use crate::common;

use common::{stories_dir, TestServer, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use teal::config::ServeArgs;

fn root_with_stories() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dst = root.path().join("stories");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(stories_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    root
}

async fn server(root: &tempfile::TempDir, state_dir: Option<std::path::PathBuf>) -> TestServer {
    TestServer::start_args(ServeArgs {
        blue: Some(root.path().join("stories")),
        models_dir: Some(root.path().to_path_buf()),
        state_dir,
        ..Default::default()
    })
    .await
}

async fn error_of(r: reqwest::Response) -> (StatusCode, String, String) {
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["type"].as_str().unwrap_or("").into(), v["error"]["message"].as_str().unwrap_or("").into())
}

#[tokio::test]
async fn every_admin_route_needs_the_token() {
    let root = root_with_stories();
    let s = server(&root, None).await;
    let client = reqwest::Client::new();
    for (method, path) in [
        (Method::GET, "/admin/slots"),
        (Method::POST, "/admin/flip"),
        (Method::POST, "/admin/rollback"),
        (Method::POST, "/admin/slots/green/load"),
        (Method::DELETE, "/admin/slots/green"),
        (Method::GET, "/admin/events"),
        (Method::GET, "/admin/operations/op-1"),
        (Method::GET, "/admin/nope"),
    ] {
        let url = format!("{}{path}", s.admin_url);
        let none = client.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let wrong = client.request(method.clone(), &url).bearer_auth("wrong-token").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let basic = client.request(method, &url).header("authorization", ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(basic.status(), 401, "{path} without the Bearer scheme");
    }
    assert_eq!(s.admin(Method::GET, "/admin/slots", None).await.status(), 200);
    // The admin API is not on the public port.
    assert_eq!(s.get("/admin/slots").await.status(), 404);
}

#[tokio::test]
async fn model_paths_stay_in_the_model_root_and_bad_loads_are_refused() {
    let root = root_with_stories();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(stories_dir(), root.path().join("linked-out")).unwrap();
    let s = server(&root, None).await;
    let load = |model: &str| json!({"model": model});
    for bad in ["../stories", "/etc", "/etc/passwd", "stories/../../x", "escape", "linked-out", "."] {
        let r = s.admin(Method::POST, "/admin/slots/green/load", Some(load(bad))).await;
        let (status, kind, msg) = error_of(r).await;
        assert_eq!((status, kind.as_str()), (StatusCode::FORBIDDEN, "forbidden"), "{bad}: {msg}");
    }
    let (status, _, msg) = error_of(s.admin(Method::POST, "/admin/slots/green/load", Some(load("nope"))).await).await;
    assert_eq!(status, 404, "{msg}");
    let (status, _, msg) = error_of(s.admin(Method::POST, "/admin/slots/blue/load", Some(load("stories"))).await).await;
    assert_eq!(status, 409);
    assert!(msg.contains("live"), "{msg}");
    let (status, ..) = error_of(s.admin(Method::POST, "/admin/slots/purple/load", Some(load("stories"))).await).await;
    assert_eq!(status, 404);
    let bad_gates = json!({"model": "stories", "gates": {"smoke": {"requestz": 1}}});
    let (status, _, msg) = error_of(s.admin(Method::POST, "/admin/slots/green/load", Some(bad_gates)).await).await;
    assert_eq!(status, 400);
    assert!(msg.contains("requestz"), "{msg}");
    let r = reqwest::Client::new()
        .post(format!("{}/admin/slots/green/load", s.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _, msg) = error_of(s.admin(Method::DELETE, "/admin/slots/blue", None).await).await;
    assert_eq!(status, 409, "the live slot cannot be unloaded: {msg}");
    let (status, ..) = error_of(s.admin(Method::POST, "/admin/rollback", None).await).await;
    assert_eq!(status, 409, "nothing to roll back to");
    let (status, ..) = error_of(s.admin(Method::GET, "/admin/operations/op-999", None).await).await;
    assert_eq!(status, 404);
    let slots = s.admin_json("/admin/slots").await;
    assert_eq!(slots["slots"]["green"]["state"], "empty", "nothing refused touched the standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_operation_on_a_busy_slot_gets_409_naming_the_first() {
    let root = root_with_stories();
    let s = server(&root, None).await;
    // A slow load: warm-up with a long prefill keeps the slot busy long enough to collide with.
    let slow =
        json!({"model": "stories", "warmup": {"batch_sizes": [1, 2, 4, 8, 16, 32, 32, 32, 32], "max_tokens": 128}});
    let first = s.admin(Method::POST, "/admin/slots/green/load", Some(slow.clone())).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers()["location"].to_str().unwrap().starts_with("/admin/operations/op-"));
    let id = first.json::<Value>().await.unwrap()["operation"]["id"].as_str().unwrap().to_string();
    let (status, kind, msg) = error_of(s.admin(Method::POST, "/admin/slots/green/load", Some(slow)).await).await;
    assert_eq!((status, kind.as_str()), (StatusCode::CONFLICT, "conflict"));
    assert!(msg.contains(&id), "the 409 names {id}: {msg}");
    let (status, _, msg) = error_of(s.admin(Method::DELETE, "/admin/slots/green", None).await).await;
    assert_eq!(status, 409, "{msg}");
    let (status, _, msg) = error_of(s.admin(Method::POST, "/admin/flip", Some(json!({}))).await).await;
    assert_eq!(status, 409, "{msg}");
    let op = s.wait_op(&id).await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let warm = &s.admin_json("/admin/slots").await["slots"]["green"]["warmup"];
    assert_eq!(warm["batch_sizes"], json!([1, 2, 4, 8, 16, 32, 32, 32, 32]));
    assert!(warm["first_request_cold"]["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(warm["first_request_warm"]["ttft_ms"].as_f64().unwrap() > 0.0);
    let r = s.admin(Method::DELETE, "/admin/slots/green", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.admin_json("/admin/slots").await["slots"]["green"]["state"], "empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_log_follows_live_and_survives_a_restart() {
    let root = root_with_stories();
    let state = tempfile::tempdir().unwrap();
    let s = server(&root, Some(state.path().to_path_buf())).await;
    let op = s.load("green", json!({"model": "stories", "version": "v2"})).await;
    assert_eq!(op["status"], "succeeded");
    // Follow the log over SSE, then flip and see the flip arrive.
    let after =
        s.admin_json("/admin/events").await["events"].as_array().unwrap().last().unwrap()["seq"].as_u64().unwrap();
    let mut feed = reqwest::Client::new()
        .get(format!("{}/admin/events?follow=true&after={after}", s.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    assert_eq!(s.admin(Method::POST, "/admin/flip", Some(json!({"expect_live": "blue"}))).await.status(), 200);
    let mut got = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !got.contains("\"action\":\"flip\"") && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(1), feed.chunk()).await {
            got.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let line = got.lines().find(|l| l.contains("\"action\":\"flip\"")).expect("flip event on the feed");
    let ev: Value = serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!((ev["slot"].as_str(), ev["to_version"].as_str()), (Some("green"), Some("v2")));
    drop(feed);
    s.stop().await.unwrap();

    let s = server(&root, Some(state.path().to_path_buf())).await;
    let events = s.admin_json("/admin/events").await["events"].as_array().unwrap().clone();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    let first_run_flip = actions.iter().position(|a| *a == "flip").expect("the flip survived the restart");
    assert!(actions[first_run_flip + 1..].contains(&"load_started"), "the new run appends: {actions:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers keep counting: {seqs:?}");
    assert!(state.path().join("audit.jsonl").is_file());
}
