//! The rollout API: refusals (no ready standby, bad settings, a rollout already running), pause and resume,
//! promote now, a manual flip ending the rollout, the report in its three formats, the audit log and metrics.

use super::{fast, live_slot, root_with_base, server, start, wait_end, LoadGen};
use crate::common::{stories_dir, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use teal::config::ServeArgs;

async fn post(s: &TestServer, path: &str, body: Option<Value>) -> (u16, Value) {
    let r = s.admin(Method::POST, path, body).await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_needs_a_ready_standby_and_valid_settings() {
    let s = TestServer::start(stories_dir(), ServeArgs::default()).await;
    let (st, v) = post(&s, "/admin/rollouts", Some(json!({}))).await;
    assert_eq!(st, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("green is empty"), "{v}");
    let root = root_with_base();
    let s = server(root.path(), "base", "copy").await;
    for (bad, says) in [
        (json!({"steps": [50, 10, 100]}), "increase"),
        (json!({"shadow_rate": 0.9}), "shadow_rate"),
        (json!({"to": "purple"}), "purple"),
        (json!({"analysis": {"nope": 1}}), "nope"),
    ] {
        let (st, v) = post(&s, "/admin/rollouts", Some(bad.clone())).await;
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{bad}: {v}");
    }
    let (st, v) = post(&s, "/admin/rollouts", Some(json!({"to": "blue"}))).await;
    assert_eq!(st, 409, "rolling out to the live slot: {v}");
    let id = start(&s, json!({"step_interval_s": 3600})).await;
    let (st, v) = post(&s, "/admin/rollouts", Some(json!({}))).await;
    assert_eq!(st, 409, "a second rollout: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(&id), "{v}");
    let current = s.admin_json("/admin/rollouts/current").await;
    assert_eq!(
        (current["id"].as_str(), current["state"].as_str(), current["weight_pct"].as_f64()),
        (Some(id.as_str()), Some("progressing"), Some(1.0))
    );
    assert_eq!(s.get("/health/ready").await.status(), 200);
    let r = s.admin(Method::GET, "/admin/rollouts/ro-nope", None).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_promote_and_the_report() {
    let root = root_with_base();
    let s = server(root.path(), "base", "copy").await;
    let load = LoadGen::start(&s.url, 4, 200);
    let id = start(&s, fast("green", json!({"step_interval_s": 3600, "bake_s": 0.5}))).await;
    let (st, v) = post(&s, &format!("/admin/rollouts/{id}/pause"), None).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("paused")), "{v}");
    let (st, _) = post(&s, &format!("/admin/rollouts/{id}/pause"), None).await;
    assert_eq!(st, 409, "pausing a paused rollout");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.admin_json(&format!("/admin/rollouts/{id}")).await["weight_pct"], 20.0, "paused: the weight holds");
    let (st, v) = post(&s, &format!("/admin/rollouts/{id}/resume"), None).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("progressing")), "{v}");
    shadowed_requests_show_only_the_logprobs_they_asked_for(&s).await;
    let v = s.admin_json(&format!("/admin/rollouts/{id}")).await;
    let tf = &v["shadow"]["teacher_forced"];
    assert!(tf["compared"].as_u64().unwrap() + tf["aa_compared"].as_u64().unwrap() > 0, "{v:#}");
    let (st, _) = post(&s, &format!("/admin/rollouts/{id}/promote"), None).await;
    assert_eq!(st, 200);
    let v = wait_end(&s, &id, Duration::from_secs(30)).await;
    assert_eq!(v["state"], "promoted", "{v:#}");
    assert_eq!(live_slot(&s.admin_json("/admin/slots").await), "green");
    let kinds: Vec<&str> = v["decisions"].as_array().unwrap().iter().map(|d| d["decision"].as_str().unwrap()).collect();
    for k in ["start", "pause", "resume", "promote", "complete"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    load.stop().await;
    let md =
        s.admin(Method::GET, &format!("/admin/rollouts/{id}/report?format=markdown"), None).await.text().await.unwrap();
    assert!(md.contains(&format!("# Rollout {id}")) && md.contains("| requests |") && md.contains("promote"), "{md}");
    let svg =
        s.admin(Method::GET, &format!("/admin/rollouts/{id}/report?format=svg"), None).await.text().await.unwrap();
    roxmltree::Document::parse(&svg).expect("the chart is well-formed SVG");
    let json: Value = s.admin(Method::GET, &format!("/admin/rollouts/{id}/report"), None).await.json().await.unwrap();
    assert_eq!(json["rollout"]["id"], id.as_str());
    assert!(json["rollout"]["arms"]["canary"]["requests"].as_u64().unwrap() > 0, "{json:#}");
    assert!(json["canary_gates"]["passed"].as_bool().unwrap(), "{json:#}");
    let events = s.admin_json("/admin/events").await;
    let audited = events["events"].as_array().unwrap().iter().filter(|e| e["action"] == "rollout").count();
    assert!(audited >= 5, "{events:#}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("teal_rollout_decisions_total{decision=\"promote\""), "{metrics}");
    assert!(metrics.contains("teal_rollout_shadow_kl_nats{scored_by="), "{metrics}");
    assert!(metrics.contains("teal_rollout_shadow_top1_agreement_ratio{scored_by="), "{metrics}");
}

/// A shadowed request reports top logprobs to the rollout; its client sees only what it asked for. Over-long
/// split keys are refused.
async fn shadowed_requests_show_only_the_logprobs_they_asked_for(s: &TestServer) {
    for i in 0..60 {
        let asked = (i % 2 == 1).then_some(1);
        let body = json!({"model": "story", "prompt": "Once upon a time", "max_tokens": 8, "user": format!("u{i}"), "logprobs": asked});
        let v: Value = s.post("/v1/completions", body).await.json().await.unwrap();
        let lp = &v["choices"][0]["logprobs"];
        match asked {
            None => assert!(lp.is_null(), "logprobs not asked for: {v}"),
            Some(n) => {
                for top in lp["top_logprobs"].as_array().unwrap() {
                    assert_eq!(top.as_object().unwrap().len(), n, "{v}");
                }
            }
        }
    }
    let long = "k".repeat(257);
    let r = s.post("/v1/completions", json!({"model": "story", "prompt": "Once", "max_tokens": 2, "user": long})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "user");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", s.url))
        .header("x-teal-route-key", "k".repeat(300))
        .json(&json!({"model": "story", "prompt": "Once", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "x-teal-route-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_flip_ends_the_rollout() {
    let root = root_with_base();
    let s = server(root.path(), "base", "copy").await;
    let id = start(&s, json!({"step_interval_s": 3600})).await;
    let r = s.admin(Method::POST, "/admin/flip", Some(json!({}))).await;
    assert_eq!(r.status(), 200);
    let v = wait_end(&s, &id, Duration::from_secs(10)).await;
    assert_eq!(v["state"], "aborted", "{v:#}");
    assert!(v["reason"].as_str().unwrap().contains("manual flip"), "{v:#}");
    assert_eq!(live_slot(&s.admin_json("/admin/slots").await), "green", "the operator's flip stands");
}
