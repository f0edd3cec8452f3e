//! `teal bench` as a user runs it (the real binary): against a fake OpenAI server with known injected delays
//! (the measured TTFT and ITL must equal them within 5%), and each benchmark end to end against teal with short
//! settings, its JSON and SVG output checked.

mod common;

use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use common::{TestServer, ADMIN_TOKEN};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use teal::config::ServeArgs;

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

/// Runs `teal bench ARGS` off the async runtime; returns (success, stdout + stderr).
async fn bench(args: Vec<String>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_teal"))
            .arg("bench")
            .args(&args)
            .env_remove("TEAL_ADMIN_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Parses an SVG and returns how many <circle> elements and which texts it has.
fn svg_summary(p: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(p).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} is not valid SVG: {e}", p.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let circles = doc.descendants().filter(|n| n.has_tag_name("circle")).count();
    let texts = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect();
    (circles, texts)
}

fn s(v: &str) -> String {
    v.to_string()
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

fn copy_stories(root: &Path) {
    let dst = root.join("stories");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(common::stories_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bench_runs_end_to_end_against_teal() {
    let root = tempfile::tempdir().unwrap();
    copy_stories(root.path());
    let args = ServeArgs {
        blue: Some(root.path().join("stories")),
        green: Some(root.path().join("stories")),
        models_dir: Some(root.path().to_path_buf()),
        ..Default::default()
    };
    let srv = TestServer::start_args(args).await;
    srv.wait_slot("green", "ready").await;
    let out = tempfile::tempdir().unwrap();
    let o = |f: &str| out.path().join(f).display().to_string();
    let common = |json: &str| {
        vec![
            s("--url"),
            srv.url.clone(),
            s("--input-len"),
            s("16"),
            s("--output-len"),
            s("8"),
            s("--json"),
            o(json),
            s("--svg"),
            o(""),
        ]
    };
    let admin = vec![s("--admin-url"), srv.admin_url.clone(), s("--token"), s(ADMIN_TOKEN)];

    let mut args = vec![s("serve"), s("--concurrency"), s("1,2,4"), s("--requests"), s("6"), s("--rate"), s("50")];
    args.extend(common("serve.json"));
    let (ok, text) = bench(args).await;
    assert!(ok, "{text}");
    assert!(text.contains("c=4") && text.contains("rate=50/s"), "{text}");
    let v = read_json(&out.path().join("serve.json"));
    assert_eq!(v["results"].as_array().unwrap().len(), 4);
    let (circles, texts) = svg_summary(&out.path().join("latency_vs_concurrency.svg"));
    assert_eq!(circles, 3 * 6, "a point per concurrency level per series");
    assert!(texts.iter().any(|t| t == "concurrent requests"), "{texts:?}");

    let mut args = vec![
        s("flip"),
        s("--concurrency"),
        s("4"),
        s("--duration-s"),
        s("1.5"),
        s("--flip-every-ms"),
        s("100"),
        s("--settle-s"),
        s("0.5"),
    ];
    args.extend(common("flip.json"));
    args.extend(admin.clone());
    let (ok, text) = bench(args).await;
    assert!(ok, "{text}");
    let v = read_json(&out.path().join("flip.json"));
    let r = &v["results"];
    assert!(r["flips"].as_u64().unwrap() >= 5, "{r}");
    assert_eq!((r["failed_requests"].as_u64(), r["flip_errors"].as_u64()), (Some(0), Some(0)));
    assert!(r["flip_round_trip_us"]["p50"].as_f64().unwrap() > 0.0);
    let phases: Vec<&str> = r["phases"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(phases, ["before", "during", "after"]);
    let (circles, texts) = svg_summary(&out.path().join("flip_timeline.svg"));
    assert!(circles > 10 && texts.iter().any(|t| t == "flip"), "{circles} {texts:?}");

    let live_before = srv.admin_json("/admin/slots").await["live"].as_str().unwrap().to_string();
    let standby = if live_before == "blue" { "green" } else { "blue" };
    let mut args = vec![s("cold-warm"), s("--standby-model"), s("stories"), s("--requests"), s("5")];
    args.extend(common("cold_warm.json"));
    args.extend(admin);
    let (ok, text) = bench(args).await;
    assert!(ok, "{text}");
    let v = read_json(&out.path().join("cold_warm.json"));
    let labels: Vec<&str> =
        v["results"]["phases"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["warm first", "warm steady", "cold first", "cold steady"]);
    assert!(v["results"]["ratios"]["cold"]["ttft_p50"].as_f64().unwrap() > 0.0);
    svg_summary(&out.path().join("cold_warm_timeline.svg"));
    // The benchmark left the same slot live and unloaded what it loaded into the standby.
    let slots = srv.admin_json("/admin/slots").await;
    assert_eq!(slots["live"].as_str(), Some(live_before.as_str()));
    assert_eq!(slots["slots"][standby]["state"], "empty");
}
