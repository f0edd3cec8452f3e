//! Memory budgets against real servers and real models: admission refuses a load that does not fit (with the
//! numbers) while the live slot serves; identical tensors are held once (the same model twice, and a copy of
//! stories260K with one tensor changed); park, wake, flip and rollback keep outputs identical; and the resident
//! memory of a real `teal` process agrees with the report.

use crate::common;
use common::copy_dir;

use common::{smollm_path, stories_dir, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use teal::config::ServeArgs;

/// Scales one tensor of a safetensors file in place (a "fine-tune" that changed one layer); returns its bytes.
fn change_tensor(file: &Path, name: &str) -> u64 {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[name]["dtype"], "F32");
    let (a, b) = (header[name]["data_offsets"][0].as_u64().unwrap(), header[name]["data_offsets"][1].as_u64().unwrap());
    for chunk in bytes[8 + n + a as usize..8 + n + b as usize].chunks_exact_mut(4) {
        let v = f32::from_le_bytes(chunk.try_into().unwrap()) * 1.5;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    std::fs::write(file, bytes).unwrap();
    b - a
}

async fn complete(s: &TestServer, prompt: &str) -> (String, String) {
    let body = json!({"model": "m", "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": true});
    let r = s.post("/v1/completions", body).await;
    assert_eq!(r.status(), 200);
    let slot = r.headers()["x-teal-slot"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    (v["choices"][0]["text"].as_str().unwrap().to_string(), slot)
}

async fn memory(s: &TestServer) -> Value {
    s.admin_json("/admin/memory").await
}

fn slot_mem<'a>(m: &'a Value, slot: &str) -> &'a Value {
    m["slots"].as_array().unwrap().iter().find(|s| s["slot"] == slot).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn repo_models() -> PathBuf {
    smollm_path().parent().unwrap().parent().unwrap().to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_over_the_budget_is_refused_with_the_numbers_and_live_serves_on() {
    let args = ServeArgs {
        served_model_name: Some("m".into()),
        models_dir: Some(repo_models()),
        memory_budget: Some(vec!["cpu=600MiB".into()]),
        ..Default::default()
    };
    let s = TestServer::start(stories_dir(), args).await;
    let before = complete(&s, "Once upon a time").await;
    let r = s.admin(Method::POST, "/admin/slots/green/load", Some(json!({"model": "smollm2"}))).await;
    assert_eq!(r.status(), 409);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["type"], "insufficient_memory", "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    // SmolLM2's KV pool alone: 30 layers x 2 x 3 kv heads x 64 x 16384 tokens x 4 bytes = 720 MiB.
    assert!(msg.starts_with("green: load refused: need "), "{msg}");
    assert!(msg.contains(" on cpu (weights ") && msg.contains("kv 720.0 MiB, workspace "), "{msg}");
    assert!(msg.contains("free within budget ") && msg.contains("(budget 600.0 MiB"), "{msg}");
    assert!(msg.contains("the live slot holds "), "{msg}");
    let status = s.admin_json("/admin/slots").await;
    assert_eq!(status["slots"]["green"]["state"], "empty", "a refused load changes nothing");
    assert_eq!(complete(&s, "Once upon a time").await, before, "the live slot served on");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn estimates_match_what_loads_and_the_same_model_twice_is_held_once() {
    let args = ServeArgs { served_model_name: Some("m".into()), models_dir: Some(repo_models()), ..Default::default() };
    let s = TestServer::start(smollm_path(), args).await;
    // Loaded after blue is resident, so admission sees blue's objects (concurrent startup loads get no credit).
    let op = s.load("green", json!({"model": "smollm2", "warmup": {"enabled": false}})).await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let m = memory(&s).await;
    let (blue, green) = (slot_mem(&m, "blue"), slot_mem(&m, "green"));
    let weights = u(&blue["weights_bytes"]);
    let est = u(&blue["estimate"]["weights"]);
    // The tied embedding table is looked up from the quantized head (no f32 copy of its 113 MB).
    assert!(weights > 90 << 20 && weights < 120 << 20, "SmolLM2 Q4_1: {weights}");
    assert_eq!(est, weights, "the estimate from the GGUF header is exact for the weights");
    assert_eq!(u(&blue["estimate"]["kv"]), u(&blue["kv_cache_bytes"]));
    // Both slots use the same objects; only the rotary tables (computed, 2 MiB) are per model.
    let rope = 2 * 8192 * 32 * 4;
    assert_eq!(u(&green["shared_bytes"]), weights - rope, "{m}");
    assert_eq!(u(&blue["shared_bytes"]), weights - rope);
    assert_eq!(u(&green["estimate"]["weights"]), rope, "admission credited the shared weights: {m}");
    let cpu = &m["devices"][0];
    assert_eq!(cpu["device"], "cpu");
    assert_eq!(u(&cpu["weights_bytes"]), weights + rope, "weights counted once on the device");
    assert_eq!(u(&cpu["shared_bytes"]), weights - rope);
    assert_eq!(
        u(&cpu["held_bytes"]),
        weights + rope + 2 * u(&blue["kv_cache_bytes"]) + 2 * u(&blue["workspace_bytes"])
    );
    assert!(s.metric("teal_memory_device_bytes{device=\"cpu\",kind=\"shared\"}").await.is_some());
    // Unloading green leaves blue's objects in place, no longer shared.
    assert_eq!(s.admin(Method::DELETE, "/admin/slots/green", None).await.status(), 200);
    let m = memory(&s).await;
    assert_eq!(u(&slot_mem(&m, "blue")["shared_bytes"]), 0);
    assert_eq!(u(&m["devices"][0]["weights_bytes"]), weights);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_with_one_tensor_changed_shares_every_other_tensor() {
    let root = tempfile::tempdir().unwrap();
    copy_dir(&stories_dir(), &root.path().join("base"));
    copy_dir(&stories_dir(), &root.path().join("tuned"));
    let changed = change_tensor(&root.path().join("tuned/model.safetensors"), "model.layers.2.mlp.down_proj.weight");
    let args = ServeArgs {
        served_model_name: Some("m".into()),
        models_dir: Some(root.path().to_path_buf()),
        ..Default::default()
    };
    let s = TestServer::start(root.path().join("base"), args).await;
    let op = s.load("green", json!({"model": "tuned"})).await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let m = memory(&s).await;
    let (blue, green) = (slot_mem(&m, "blue"), slot_mem(&m, "green"));
    let weights = u(&green["weights_bytes"]);
    let rope = 2 * 512 * 4 * 4;
    assert_eq!(changed, 64 * 172 * 4);
    assert_eq!(u(&green["shared_bytes"]), weights - rope - changed, "everything but the changed tensor: {m}");
    assert_eq!(u(&blue["shared_bytes"]), u(&green["shared_bytes"]));
    assert_eq!(u(&m["devices"][0]["weights_bytes"]), weights + rope + changed);
    // The tuned model really uses its own tensor: its greedy output differs from the base model's.
    let base = complete(&s, "Once upon a time").await;
    let r = s.admin(Method::POST, "/admin/flip", Some(json!({}))).await;
    assert_eq!(r.status(), 200);
    let tuned = complete(&s, "Once upon a time").await;
    assert_eq!((base.1.as_str(), tuned.1.as_str()), ("blue", "green"));
    assert_ne!(base.0, tuned.0);
    s.stop().await.unwrap();
}

async fn post_op(s: &TestServer, path: &str) -> Value {
    let r = s.admin(Method::POST, path, None).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{path}: {v}");
    s.wait_op(v["operation"]["id"].as_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn park_wake_and_rollback_to_a_parked_slot_keep_outputs_identical() {
    let args = ServeArgs { served_model_name: Some("m".into()), green: Some(smollm_path()), ..Default::default() };
    let s = TestServer::start(stories_dir(), args).await;
    s.wait_slot("green", "ready").await;
    let s = &s;
    let flip = |to: &'static str| async move { s.admin(Method::POST, "/admin/flip", Some(json!({"to": to}))).await };
    assert_eq!(flip("green").await.status(), 200);
    let green_before = complete(s, "The capital of France is").await;
    assert_eq!(flip("blue").await.status(), 200);
    s.wait_slot("green", "ready").await;
    let blue_before = complete(s, "The capital of France is").await;

    let op = post_op(s, "/admin/slots/green/park").await;
    assert_eq!((op["kind"].as_str(), op["status"].as_str()), (Some("park"), Some("succeeded")), "{op}");
    let st = s.admin_json("/admin/slots").await;
    assert_eq!(st["slots"]["green"]["state"], "parked");
    assert!(st["slots"]["green"]["park"]["park_seconds"].as_f64().is_some());
    let m = memory(s).await;
    let g = slot_mem(&m, "green");
    assert_eq!((u(&g["kv_cache_bytes"]), u(&g["workspace_bytes"])), (0, 0), "parking freed the KV pool: {m}");
    assert!(u(&g["host_bytes"]) > 90 << 20);
    let r = flip("green").await;
    assert_eq!(r.status(), 409);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("green is parked; wake it first"), "{err}");

    let op = post_op(s, "/admin/slots/green/wake").await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let st = s.admin_json("/admin/slots").await;
    assert_eq!(st["slots"]["green"]["state"], "ready");
    assert_eq!(st["slots"]["green"]["rollback_eta_s"], 0.0);
    assert_eq!(flip("green").await.status(), 200);
    assert_eq!(complete(s, "The capital of France is").await, green_before, "identical after park and wake");

    // Rollback to a parked slot wakes it first.
    s.wait_slot("blue", "ready").await;
    let op = post_op(s, "/admin/slots/blue/park").await;
    assert_eq!(op["status"], "succeeded");
    let blue = s.admin_json("/admin/slots").await["slots"]["blue"].clone();
    // Never woken: a rollback costs what its load cost.
    let (eta, load) = (blue["rollback_eta_s"].as_f64(), blue["load_seconds"].as_f64());
    assert!(eta.is_some() && eta == load, "{blue}");
    let r = s.admin(Method::POST, "/admin/rollback", None).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["flip"]["live"], "blue", "{v}");
    assert_eq!(complete(s, "The capital of France is").await, blue_before);
    let events = s.admin_json("/admin/events").await;
    let actions: Vec<&str> = events["events"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["park_started", "parked", "wake_started", "woken", "rollback"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rollbacks_set_to_refuse_a_parked_target_is_refused() {
    let args = ServeArgs {
        served_model_name: Some("m".into()),
        green: Some(stories_dir()),
        parked_rollback: Some("refuse".into()),
        ..Default::default()
    };
    let s = TestServer::start(stories_dir(), args).await;
    s.wait_slot("green", "ready").await;
    assert_eq!(s.admin(Method::POST, "/admin/flip", Some(json!({}))).await.status(), 200);
    s.wait_slot("blue", "ready").await;
    assert_eq!(post_op(&s, "/admin/slots/blue/park").await["status"], "succeeded");
    let r = s.admin(Method::POST, "/admin/rollback", None).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("rollbacks to a parked slot are set to refuse"), "{v}");
    assert_eq!(complete(&s, "Once").await.1, "green", "the live slot is untouched");
    // The live slot cannot be parked.
    assert_eq!(s.admin(Method::POST, "/admin/slots/green/park", None).await.status(), 409);
    s.stop().await.unwrap();
}

fn rss_of(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    teal::memory::probe::parse_status_rss(&text).unwrap()
}

/// A real `teal` process (nothing else in it): what loading SmolLM2 adds to its resident memory agrees with what
/// the report says the load holds, within 10%.
#[tokio::test]
async fn resident_memory_agrees_with_the_report() {
    let state = tempfile::tempdir().unwrap();
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (api, admin) = (port(), port());
    let child = common::Reaped::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(["serve", "--threads", "2", "--served-model-name", "m"])
            .env("TEAL_MODEL", stories_dir())
            .env("TEAL_MODELS_DIR", repo_models())
            .env("TEAL_PORT", api.to_string())
            .env("TEAL_ADMIN_PORT", admin.to_string())
            .env("TEAL_ADMIN_TOKEN", common::ADMIN_TOKEN)
            .env("TEAL_STATE_DIR", state.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let client = reqwest::Client::new();
    let admin_url = format!("http://127.0.0.1:{admin}");
    let get = |path: &str| {
        let req = client.get(format!("{admin_url}{path}")).bearer_auth(common::ADMIN_TOKEN);
        async move { req.send().await.ok()?.json::<Value>().await.ok() }
    };
    let mut ready = false;
    for _ in 0..800 {
        if client.get(format!("http://127.0.0.1:{api}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(ready, "never ready");
    let held = |m: &Value| u(&m["devices"][0]["held_bytes"]);
    let (rss0, held0) = (rss_of(child.id()), held(&get("/admin/memory").await.unwrap()));
    let r = client
        .post(format!("{admin_url}/admin/slots/green/load"))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({"model": "smollm2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let op = r.json::<Value>().await.unwrap()["operation"]["id"].as_str().unwrap().to_string();
    for _ in 0..12_000 {
        if get(&format!("/admin/operations/{op}")).await.is_some_and(|o| o["status"] != "running") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let m = get("/admin/memory").await.unwrap();
    assert_eq!(slot_mem(&m, "green")["state"], "ready", "{m}");
    let (rss1, held1) = (rss_of(child.id()), held(&m));
    let (grew, reported) = ((rss1 - rss0) as f64, (held1 - held0) as f64);
    drop(child);
    assert!(reported > 800.0 * (1 << 20) as f64, "{m}");
    assert!((grew - reported).abs() <= 0.10 * reported, "RSS grew {grew} bytes; the report says {reported}");
    let own = u(&m["process_resident_bytes"]) as f64;
    assert!((own - rss1 as f64).abs() < 0.05 * rss1 as f64, "the report's own RSS figure {own} vs {rss1}");
}
