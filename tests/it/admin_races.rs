//! Admin operations that race: two flips, a flip against an unload or a park of its target, a rollback while a
//! load runs. The controller takes them one at a time, so exactly one of each pair wins, the loser gets a 409
//! that says why, and the live slot serves throughout. And the audit log after `kill -9`.

use crate::common;

use common::{stories_dir, TestServer, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use teal::config::ServeArgs;

/// stories260K live in blue and ready in green; the model root is its parent, so loads can name it.
async fn both_slots() -> TestServer {
    let s = TestServer::start_args(ServeArgs {
        blue: Some(stories_dir()),
        green: Some(stories_dir()),
        models_dir: stories_dir().parent().map(|p| p.to_path_buf()),
        ..Default::default()
    })
    .await;
    s.wait_slot("green", "ready").await;
    s
}

/// Sends two admin calls at the same moment; returns (status, error message) of each.
async fn race(s: &TestServer, a: (Method, &str, Value), b: (Method, &str, Value)) -> [(StatusCode, String); 2] {
    let (x, y) = futures::join!(call(s, a), call(s, b));
    [x, y]
}

async fn call(s: &TestServer, (m, p, body): (Method, &str, Value)) -> (StatusCode, String) {
    let r = s.admin(m, p, Some(body)).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["error"]["message"].as_str().unwrap_or("").to_string())
}

async fn serves(s: &TestServer) -> String {
    let r = s.post("/v1/completions", json!({"model": "stories260K", "prompt": "Once", "max_tokens": 2})).await;
    assert_eq!(r.status(), 200);
    r.headers()["x-teal-slot"].to_str().unwrap().to_string()
}

fn one_wins(results: &[(StatusCode, String); 2]) -> usize {
    let wins = results.iter().filter(|(st, _)| st.is_success()).count();
    for (st, msg) in results.iter().filter(|(st, _)| !st.is_success()) {
        assert_eq!(*st, StatusCode::CONFLICT, "{msg}");
        assert!(!msg.is_empty());
    }
    wins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_flips_at_once_move_traffic_once() {
    let s = both_slots().await;
    let flip = || (Method::POST, "/admin/flip", json!({"expect_live": "blue"}));
    let results = race(&s, flip(), flip()).await;
    assert_eq!(one_wins(&results), 1, "{results:?}");
    let lost = results.iter().find(|(st, _)| !st.is_success()).unwrap();
    assert!(lost.1.contains("expected blue to be live, but the live slot is green"), "{lost:?}");
    let status = s.admin_json("/admin/slots").await;
    assert_eq!((status["live"].as_str(), status["flips"].as_u64()), (Some("green"), Some(1)));
    assert_eq!(serves(&s).await, "green");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flip_racing_an_unload_of_its_target_leaves_one_consistent_outcome() {
    let s = both_slots().await;
    let flip = (Method::POST, "/admin/flip", json!({"to": "green"}));
    let results = race(&s, flip, (Method::DELETE, "/admin/slots/green", json!({}))).await;
    assert_eq!(one_wins(&results), 1, "{results:?}");
    let status = s.admin_json("/admin/slots").await;
    if results[0].0.is_success() {
        assert_eq!(status["live"], "green");
        assert!(results[1].1.contains("green is live"), "{results:?}");
    } else {
        assert_eq!(
            (status["live"].as_str(), status["slots"]["green"]["state"].as_str()),
            (Some("blue"), Some("empty"))
        );
        assert!(results[0].1.contains("green is empty"), "{results:?}");
    }
    assert_eq!(serves(&s).await, status["live"].as_str().unwrap());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flip_racing_a_park_of_its_target_leaves_one_consistent_outcome() {
    let s = both_slots().await;
    let flip = (Method::POST, "/admin/flip", json!({"to": "green"}));
    let results = race(&s, flip, (Method::POST, "/admin/slots/green/park", json!({}))).await;
    assert_eq!(one_wins(&results), 1, "{results:?}");
    if results[0].0.is_success() {
        assert!(results[1].1.contains("only a ready standby can be parked"), "{results:?}");
        assert_eq!(serves(&s).await, "green");
    } else {
        assert!(results[0].1.contains("green is") && results[0].1.contains("park"), "{results:?}");
        s.wait_slot("green", "parked").await;
        assert_eq!(serves(&s).await, "blue");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_into_the_rollback_target_ends_the_rollback_during_and_after_it() {
    let s = both_slots().await;
    assert_eq!(s.admin(Method::POST, "/admin/flip", Some(json!({"expect_live": "blue"}))).await.status(), 200);
    // blue, the rollback target, gets a new version while green serves.
    let r =
        s.admin(Method::POST, "/admin/slots/blue/load", Some(json!({"model": "stories260K", "version": "v2"}))).await;
    assert_eq!(r.status(), 202);
    let op: Value = r.json().await.unwrap();
    let r = s.admin(Method::POST, "/admin/rollback", None).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    // The load replaced the version a rollback would return to the moment it started.
    assert!(v["error"]["message"].as_str().unwrap().contains("nothing to roll back to"), "{v}");
    let state = s.admin_json("/admin/slots").await["slots"]["blue"]["state"].clone();
    assert!(["loading", "warming", "gating"].contains(&state.as_str().unwrap()), "{state}");
    assert_eq!(serves(&s).await, "green");
    let done = s.wait_op(op["operation"]["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The version a rollback would return to is gone: refused, not a silent flip to v2.
    let r = s.admin(Method::POST, "/admin/rollback", None).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("nothing to roll back to"), "{v}");
    assert_eq!(s.admin_json("/admin/slots").await["live"], "green");
    s.stop().await.unwrap();
}

/// `kill -9` mid-life: every event recorded before the kill is in audit.jsonl as a whole JSON line, and a new
/// process on the same state directory serves them and numbers on from the last.
#[tokio::test]
async fn the_audit_log_survives_kill_dash_9() {
    let state = tempfile::tempdir().unwrap();
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spawn = |api: u16, admin: u16| {
        common::Reaped::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
                .args(["serve", "--port", &api.to_string(), "--admin-port", &admin.to_string()])
                .arg("--blue")
                .arg(stories_dir())
                .arg("--green")
                .arg(stories_dir())
                .arg("--state-dir")
                .arg(state.path())
                .env("TEAL_ADMIN_TOKEN", ADMIN_TOKEN)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
    };
    let client = reqwest::Client::new();
    let admin_get = |admin: u16, path: &'static str| {
        let req = client.get(format!("http://127.0.0.1:{admin}{path}")).bearer_auth(ADMIN_TOKEN);
        async move { req.send().await.ok().filter(|r| r.status() == 200)?.json::<Value>().await.ok() }
    };
    let wait_both = |admin: u16| async move {
        for _ in 0..1200 {
            // Both startup loads run at once: blue must be live and green ready.
            let both = |v: Value| v["live"] == "blue" && v["slots"]["green"]["state"] == "ready";
            if admin_get(admin, "/admin/slots").await.is_some_and(both) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("blue never went live with green ready");
    };
    let (api, admin) = (port(), port());
    let first = spawn(api, admin);
    wait_both(admin).await;
    let flip = |admin: u16, path: &'static str| {
        client.post(format!("http://127.0.0.1:{admin}{path}")).bearer_auth(ADMIN_TOKEN).json(&json!({})).send()
    };
    let r = flip(admin, "/admin/flip").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let r = flip(admin, "/admin/rollback").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let before = admin_get(admin, "/admin/events").await.unwrap()["events"].as_array().unwrap().clone();
    assert!(std::process::Command::new("kill").args(["-KILL", &first.id().to_string()]).status().unwrap().success());
    assert!(!first.wait().await.success());

    let text = std::fs::read_to_string(state.path().join("audit.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a whole JSON line")).collect();
    assert_eq!(lines.len(), before.len(), "every event answered before the kill is on disk");
    let actions: Vec<&str> = lines.iter().filter_map(|l| l["action"].as_str()).collect();
    assert!(actions.ends_with(&["flip", "rollback"]), "{actions:?}");

    let (api, admin) = (port(), port());
    let _second = spawn(api, admin);
    wait_both(admin).await;
    let after = admin_get(admin, "/admin/events").await.unwrap()["events"].as_array().unwrap().clone();
    assert_eq!(&after[..before.len()], &before[..], "the old events, unchanged");
    let last = before.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(after[before.len()]["seq"].as_u64(), Some(last + 1), "numbering goes on");
}
