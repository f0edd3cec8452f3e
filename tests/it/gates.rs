//! Every gate can fail, and a standby whose gates failed cannot go live without `force`: the failure branches
//! run against real models with settings no healthy standby can meet, and the metrics count each verdict.

use crate::common;

use common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};
use teal::config::ServeArgs;

/// The gate named `gate` in a finished load's slot report.
fn gate<'a>(status: &'a Value, slot: &str, gate: &str) -> &'a Value {
    let results = status["slots"][slot]["gates"]["results"].as_array().expect("a gate report");
    results.iter().find(|r| r["gate"] == gate).unwrap_or_else(|| panic!("no {gate} gate in {results:?}"))
}

async fn gate_count(s: &TestServer, gate: &str, result: &str) -> f64 {
    s.metric(&format!("teal_gate_results_total{{gate=\"{gate}\",result=\"{result}\"}}")).await.unwrap_or(0.0)
}

#[tokio::test]
async fn each_gate_fails_on_what_it_checks_and_the_standby_stays_out() {
    // Live: stories260K. The repository's models/ is the model root, so the standby loads by name.
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    // A 2048-token KV pool: no request can ask for 4096 new tokens.
    let args = ServeArgs { models_dir: Some(root), max_total_tokens: Some(2048), ..Default::default() };
    let s = TestServer::start(common::stories_dir(), args).await;

    // 1. SmolLM2 as the standby, asked for what it cannot give: a golden answer it never writes, smoke requests
    //    longer than the KV pool, a TTFT under a microsecond, and the live model's exact words.
    let gates = json!({
        "golden": {"cases": [{"prompt": "Once upon a time", "max_tokens": 8, "expect_text": "not what it writes"}]},
        "smoke": {"requests": 2, "concurrency": 2, "max_tokens": 4096},
        "latency": {"enabled": true, "requests": 4, "concurrency": 2, "max_tokens": 4, "ttft_p99_ms": 0.0001},
        "agreement": {"threshold": 1.0, "max_tokens": 8},
    });
    let op = s.load("green", json!({"model": "smollm2", "gates": gates})).await;
    assert_eq!((op["status"].as_str(), op["gates_passed"].as_bool()), (Some("succeeded"), Some(false)), "{op}");
    let status = s.admin_json("/admin/slots").await;
    assert_eq!(gate(&status, "green", "health")["passed"], true);
    let golden = gate(&status, "green", "golden");
    assert_eq!(golden["passed"], false);
    assert!(golden["summary"].as_str().unwrap().starts_with("0/1 golden cases passed"), "{golden}");
    let smoke = gate(&status, "green", "smoke");
    assert_eq!(smoke["passed"], false);
    assert!(smoke["summary"].as_str().unwrap().contains("2 of 2 requests bad"), "{smoke}");
    let latency = gate(&status, "green", "latency");
    assert_eq!(latency["passed"], false);
    assert!(latency["summary"].as_str().unwrap().contains("over the SLO of 0.0 ms"), "{latency}");
    let agreement = gate(&status, "green", "agreement");
    assert_eq!(agreement["passed"], false, "SmolLM2 does not write what stories260K writes: {agreement}");
    assert!(agreement["details"]["share"].as_f64().unwrap() < 1.0, "{agreement}");
    assert_eq!(status["slots"]["green"]["state"], "ready");

    // The metrics count each verdict.
    for g in ["golden", "smoke", "latency", "agreement"] {
        assert_eq!(gate_count(&s, g, "failed").await, 1.0, "{g}");
    }
    assert_eq!(gate_count(&s, "health", "passed").await, 2.0, "blue's start-up load and this one");
    assert_eq!(s.metric("teal_slot_gates_passed{slot=\"green\"}").await, Some(0.0));

    // A flip refuses it, naming the first failure; blue keeps serving.
    let r = s.admin(Method::POST, "/admin/flip", Some(json!({}))).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "gate_failed", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("golden gate failed"), "{v}");
    assert_eq!(s.admin_json("/admin/slots").await["live"], "blue");

    // 2. A latency regression against the live slot: SmolLM2 (135M) is slower than stories260K (260K).
    let gates = json!({
        "golden": {"enabled": false}, "smoke": {"enabled": false}, "agreement": {"enabled": false},
        "latency": {"enabled": true, "requests": 4, "concurrency": 1, "max_tokens": 4,
                    "ttft_p99_ms": 60000.0, "itl_p99_ms": 60000.0, "max_regression_pct": 0.0},
    });
    let op = s.load("green", json!({"model": "smollm2", "gates": gates})).await;
    assert_eq!(op["gates_passed"], false, "{op}");
    let status = s.admin_json("/admin/slots").await;
    let latency = gate(&status, "green", "latency");
    assert!(latency["summary"].as_str().unwrap().contains("% over live's"), "{latency}");
    assert!(
        latency["details"]["ttft_p99_ms"].as_f64().unwrap() > latency["details"]["live_ttft_p99_ms"].as_f64().unwrap()
    );

    // force goes live anyway, and says so.
    let r = s.admin(Method::POST, "/admin/flip", Some(json!({"force": true}))).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["flip"]["forced"], true, "{v}");
    s.stop().await.unwrap();
}
