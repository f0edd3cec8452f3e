//! Blue/green as clients and operators see it, against a real server: flips under streaming load fail nothing
//! and never mix slots; a corrupt standby fails with its reason while the live slot serves on; failed gates
//! block a flip, a forced flip is audited, rollback restores the previous version.

use crate::common;
use common::copy_dir;

use common::{stories_dir, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use teal::config::ServeArgs;

/// One streamed completion: (slot header, version header, text, finish reason).
async fn stream_once(url: &str, body: &Value) -> Result<(String, String, String), String> {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let header = |h: &str| resp.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (slot, version) = (header("x-teal-slot"), header("x-teal-model-version"));
    let events = common::sse_events(resp).await;
    if events.last().map(String::as_str) != Some("[DONE]") {
        return Err(format!("stream did not end with [DONE]: {events:?}"));
    }
    let mut text = String::new();
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).map_err(|e| e.to_string())?;
        if v.get("error").is_some() {
            return Err(format!("error chunk: {v}"));
        }
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    if finish.as_deref() != Some("length") {
        return Err(format!("finish reason {finish:?}"));
    }
    Ok((slot, version, text))
}

async fn flip(s: &TestServer, body: Value) -> (reqwest::StatusCode, Value) {
    let r = s.admin(Method::POST, "/admin/flip", Some(body)).await;
    (r.status(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_flips_under_32_streaming_clients_fail_nothing_and_never_mix_slots() {
    let args = ServeArgs {
        blue: Some(stories_dir()),
        green: Some(common::smollm_dir()),
        served_model_name: Some("chat".into()),
        max_total_tokens: Some(4096),
        ..Default::default()
    };
    let s = TestServer::start_args(args).await;
    s.wait_slot("green", "ready").await;
    let body = json!({"model": "chat", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    // Each slot's greedy answer, as the slot header names it.
    let mut expected = HashMap::new();
    for _ in 0..2 {
        let (slot, _, text) = stream_once(&s.url, &body).await.unwrap();
        expected.insert(slot, text);
        assert_eq!(flip(&s, json!({})).await.0, 200);
    }
    assert_eq!(expected.len(), 2, "{expected:?}");
    assert_ne!(expected["blue"], expected["green"], "the two models answer differently");
    let expected = Arc::new(expected);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = vec![];
    for _ in 0..32 {
        let (url, body, expected, stop, served) =
            (s.url.clone(), body.clone(), expected.clone(), stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = vec![];
            let mut by_slot: HashMap<String, usize> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                match stream_once(&url, &body).await {
                    Ok((slot, _, text)) if expected.get(&slot) == Some(&text) => {
                        *by_slot.entry(slot).or_default() += 1;
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((slot, _, text)) => failures.push(format!("slot {slot:?} answered {text:?}")),
                    Err(e) => failures.push(e),
                }
            }
            (failures, by_slot)
        }));
    }
    let mut flip_us = vec![];
    for i in 0..100 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let (status, v) = flip(&s, json!({})).await;
        assert_eq!(status, 200, "flip {i}: {v}");
        flip_us.push(v["flip"]["swap_us"].as_f64().unwrap());
    }
    // Let requests that started on the last slot finish, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut totals: HashMap<String, usize> = HashMap::new();
    for c in clients {
        let (failures, by_slot) = c.await.unwrap();
        assert!(failures.is_empty(), "failed or mixed responses: {failures:?}");
        for (k, v) in by_slot {
            *totals.entry(k).or_default() += v;
        }
    }
    assert!(
        totals.get("blue").copied().unwrap_or(0) > 0 && totals.get("green").copied().unwrap_or(0) > 0,
        "{totals:?}"
    );
    assert_eq!(s.metric("teal_flips_total").await, Some(102.0));
    let status = s.admin_json("/admin/slots").await;
    assert_eq!(status["flips"], 102);
    eprintln!(
        "served {} streams during 100 flips; {totals:?}; swap_us max {:?}",
        served.load(Ordering::Relaxed),
        flip_us.iter().cloned().fold(0.0, f64::max)
    );
}

/// A model root holding a good copy of stories260K and three broken ones.
fn model_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for name in ["good", "truncated", "badconfig", "notokenizer"] {
        copy_dir(&stories_dir(), &r.join(name));
    }
    let st = r.join("truncated/model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&st).unwrap().set_len(len / 2).unwrap();
    std::fs::write(r.join("badconfig/config.json"), "{\"hidden_size\": \"many\"").unwrap();
    std::fs::remove_file(r.join("notokenizer/tokenizer.json")).unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_standby_fails_with_its_reason_and_the_live_slot_never_notices() {
    let root = model_root();
    let args = ServeArgs {
        blue: Some(root.path().join("good")),
        green: Some(root.path().join("badconfig")),
        models_dir: Some(root.path().to_path_buf()),
        ..Default::default()
    };
    // A broken standby at start is reported, not fatal: blue serves.
    let s = TestServer::start_args(args).await;
    s.wait_slot("green", "failed").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = vec![];
    for _ in 0..4 {
        let (url, stop) = (s.url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let body = json!({"model": "good", "prompt": "Once upon a time", "max_tokens": 8, "stream": true});
            let (mut ok, mut errors) = (0, vec![]);
            while !stop.load(Ordering::Relaxed) {
                match stream_once(&url, &json!(body)).await {
                    Ok((slot, ..)) if slot == "blue" => ok += 1,
                    Ok((slot, ..)) => errors.push(format!("served by {slot}")),
                    Err(e) if e.contains("finish reason Some(\"stop\")") => ok += 1,
                    Err(e) => errors.push(e),
                }
            }
            (ok, errors)
        }));
    }
    for (model, why) in [("truncated", "safetensors"), ("badconfig", "config"), ("notokenizer", "tokenizer.json")] {
        let op = s.load("green", json!({"model": model})).await;
        assert_eq!(op["status"], "failed", "{op}");
        let err = op["error"].as_str().unwrap();
        assert!(err.contains(why), "{model}: {err}");
        let slots = s.admin_json("/admin/slots").await;
        assert_eq!(slots["slots"]["green"]["state"], "failed");
        assert_eq!(slots["slots"]["green"]["reason"], err);
        assert_eq!(slots["live"], "blue");
        let (status, v) = flip(&s, json!({})).await;
        assert_eq!(status, 409, "a failed slot cannot go live: {v}");
    }
    let op = s.load("green", json!({"model": "good", "version": "v2"})).await;
    assert_eq!((op["status"].as_str(), op["gates_passed"].as_bool()), (Some("succeeded"), Some(true)), "{op}");
    assert!(op["timings"]["loading"].as_f64().unwrap() > 0.0 && op["timings"]["gating"].as_f64().is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let (ok, errors) = c.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(ok > 0);
    }
    let events = s.admin_json("/admin/events").await;
    let failed = events["events"].as_array().unwrap().iter().filter(|e| e["action"] == "load_failed").count();
    assert_eq!(failed, 4, "the startup standby and three admin loads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_gates_block_the_flip_force_is_audited_and_rollback_restores_the_version() {
    let gates = json!({"golden": {"cases": [{"prompt": "Once upon a time", "expect_text": "not what it says"}]},
                       "latency": {"enabled": true, "requests": 4, "ttft_p99_ms": 60000.0, "itl_p99_ms": 60000.0,
                                   "max_regression_pct": 10000.0}});
    let root = tempfile::tempdir().unwrap();
    copy_dir(&stories_dir(), &root.path().join("stories"));
    let args = ServeArgs {
        blue: Some(root.path().join("stories")),
        models_dir: Some(root.path().to_path_buf()),
        ..Default::default()
    };
    let s = TestServer::start_args(args).await;
    let blue_version =
        s.admin_json("/admin/slots").await["slots"]["blue"]["model"]["version"].as_str().unwrap().to_string();
    let op = s.load("green", json!({"model": "stories", "version": "v2-bad", "gates": gates})).await;
    assert_eq!((op["status"].as_str(), op["gates_passed"].as_bool()), (Some("succeeded"), Some(false)), "{op}");
    let slots = s.admin_json("/admin/slots").await;
    let results = slots["slots"]["green"]["gates"]["results"].as_array().unwrap().clone();
    let by_gate = |g: &str| results.iter().find(|r| r["gate"] == g).unwrap().clone();
    assert_eq!(by_gate("golden")["passed"], false);
    assert_eq!(by_gate("health")["passed"], true);
    assert_eq!(by_gate("smoke")["passed"], true);
    assert_eq!(by_gate("latency")["passed"], true, "{}", by_gate("latency"));
    assert!(by_gate("latency")["details"]["live_ttft_p99_ms"].as_f64().is_some());
    assert_eq!(by_gate("agreement")["details"]["share"], 1.0, "same weights agree with live");

    let (status, v) = flip(&s, json!({"expect_live": "blue"})).await;
    assert_eq!(status, 409);
    assert_eq!(v["error"]["type"], "gate_failed");
    assert!(v["error"]["message"].as_str().unwrap().contains("golden gate failed"), "{v}");
    let (status, v) = flip(&s, json!({"expect_live": "green", "force": true})).await;
    assert_eq!(status, 409, "expect_live guards the flip: {v}");
    let (status, v) = flip(&s, json!({"expect_live": "blue", "force": true})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["flip"]["live"].as_str(), v["flip"]["forced"].as_bool()), (Some("green"), Some(true)));
    let r = s.post("/v1/completions", json!({"model": "stories", "prompt": "Hi", "max_tokens": 2})).await;
    assert_eq!(r.headers()["x-teal-slot"], "green");
    assert_eq!(r.headers()["x-teal-model-version"], "v2-bad");

    let r = s.admin(Method::POST, "/admin/rollback", None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["flip"]["live"].as_str(), v["flip"]["rollback"].as_bool()), (Some("blue"), Some(true)));
    let r = s.post("/v1/completions", json!({"model": "stories", "prompt": "Hi", "max_tokens": 2})).await;
    assert_eq!(r.headers()["x-teal-slot"], "blue");
    assert_eq!(r.headers()["x-teal-model-version"], blue_version.as_str());
    assert_eq!(s.metric("teal_live_slot{slot=\"blue\"}").await, Some(1.0));
    assert_eq!(s.metric("teal_rollbacks_total").await, Some(1.0));
    assert_eq!(s.metric("teal_gate_results_total{gate=\"golden\",result=\"failed\"}").await, Some(1.0));

    let events = s.admin_json("/admin/events").await["events"].as_array().unwrap().clone();
    let refused = events.iter().find(|e| e["action"] == "flip" && e["outcome"] == "refused").unwrap();
    assert!(refused["reason"].as_str().unwrap().contains("golden"));
    let forced = events.iter().find(|e| e["action"] == "flip" && e["outcome"] == "ok" && e["slot"] == "green").unwrap();
    assert_eq!((forced["forced"].as_bool(), forced["to_version"].as_str()), (Some(true), Some("v2-bad")));
    let rb = events.iter().find(|e| e["action"] == "rollback").unwrap();
    assert_eq!(rb["to_version"], blue_version.as_str());
}
