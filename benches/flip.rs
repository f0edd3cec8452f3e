//! Blue/green benchmark against an in-process teal server (real HTTP on loopback):
//! 1. flip latency over N flips: the admin API round trip (client side) and the pointer swap (server side);
//! 2. wall time of load + warm-up + gates for a model loaded into the standby;
//! 3. the first request after a flip against steady state, for a standby loaded with and without warm-up;
//! 4. park and wake of the standby, and a load from the page cache, with the bandwidth reached.
//!
//! Run: `cargo bench --bench flip` (SmolLM2 from scripts/fetch-models.sh; stories260K from ../shared).
//! Env: TEAL_BENCH_FLIPS (default 1000), TEAL_BENCH_MODEL (a name under models/, default smollm2),
//! TEAL_BENCH_STEADY (steady-state requests, 20), TEAL_BENCH_ROUNDS (loads per warm/cold mode, 3).

use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;
use teal::config::ServeArgs;

const TOKEN: &str = "bench-admin-token";

struct Server {
    url: String,
    admin: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.admin)).bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("admin request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn load(&self, slot: &str, body: Value) -> Value {
        let v = self.admin(Method::POST, &format!("/admin/slots/{slot}/load"), Some(body)).await;
        let id = v["operation"]["id"].as_str().unwrap().to_string();
        loop {
            let op = self.admin(Method::GET, &format!("/admin/operations/{id}"), None).await;
            if op["status"] != "running" {
                assert_eq!(op["status"], "succeeded", "{op}");
                return op;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// One greedy streamed request: (time to first token, total) in ms.
    async fn request(&self) -> (f64, f64) {
        let body = json!({"model": "bench", "messages": [{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
                          "max_tokens": 16, "temperature": 0, "ignore_eos": true, "stream": true});
        let t0 = Instant::now();
        let mut resp = self.http.post(format!("{}/v1/chat/completions", self.url)).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut ttft = None;
        while let Some(chunk) = resp.chunk().await.unwrap() {
            if ttft.is_none() && String::from_utf8_lossy(&chunk).contains("\"content\":\"") {
                let s = String::from_utf8_lossy(&chunk);
                if !s.contains("\"content\":\"\"") {
                    ttft = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        (ttft.unwrap_or(0.0), t0.elapsed().as_secs_f64() * 1e3)
    }
}

fn pct(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

async fn start(root: PathBuf, blue: &str) -> Server {
    let state = tempfile::tempdir().unwrap().keep();
    let args = ServeArgs {
        blue: Some(root.join(blue)),
        models_dir: Some(root),
        served_model_name: Some("bench".into()),
        admin_token: Some(TOKEN.into()),
        state_dir: Some(state),
        max_total_tokens: Some(4096),
        ..Default::default()
    };
    let config = args.resolve().unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (url, admin_url) =
        (format!("http://{}", api.local_addr().unwrap()), format!("http://{}", admin.local_addr().unwrap()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(teal::server::run(config, teal::server::Listeners { api, admin }, async move {
        let _ = rx.await;
    }));
    let s = Server { url, admin: admin_url, http: reqwest::Client::new(), _stop: tx };
    while s.http.get(format!("{}/health/ready", s.url)).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s
}

async fn flips(s: &Server, n: usize) {
    let (mut rtt, mut swap) = (vec![], vec![]);
    for _ in 0..n {
        let t0 = Instant::now();
        let v = s.admin(Method::POST, "/admin/flip", Some(json!({}))).await;
        rtt.push(t0.elapsed().as_secs_f64() * 1e6);
        swap.push(v["flip"]["swap_us"].as_f64().unwrap());
    }
    println!("flips: {n}");
    println!(
        "  admin API round trip: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        pct(&rtt, 0.5),
        pct(&rtt, 0.99),
        pct(&rtt, 1.0)
    );
    println!(
        "  pointer swap:         p50 {:.2} us, p99 {:.2} us, max {:.2} us",
        pct(&swap, 0.5),
        pct(&swap, 0.99),
        pct(&swap, 1.0)
    );
}

/// Loads the model into green, flips to it, and compares its first request with steady state; returns the
/// first/steady-p50 ratios of (TTFT, total).
async fn first_request(s: &Server, model: &str, warm: bool, steady_n: usize) -> (f64, f64) {
    let mut body = json!({"model": model, "version": if warm { "warm" } else { "cold" }});
    if !warm {
        // No warm-up and no gates (gates run requests, which would warm it).
        body["warmup"] = json!({"enabled": false});
        body["gates"] =
            json!({"health": {"enabled": false}, "smoke": {"enabled": false}, "agreement": {"enabled": false}});
    }
    let op = s.load("green", body).await;
    let t = &op["timings"];
    println!(
        "load into standby ({}): loading {:.2} s, warm-up {:.2} s, gates {:.2} s, total {:.2} s",
        if warm { "with warm-up and gates" } else { "no warm-up, no gates" },
        t["loading"].as_f64().unwrap_or(0.0),
        t["warming"].as_f64().unwrap_or(0.0),
        t["gating"].as_f64().unwrap_or(0.0),
        t["total"].as_f64().unwrap_or(0.0)
    );
    s.admin(Method::POST, "/admin/flip", Some(json!({"to": "green"}))).await;
    let (first_ttft, first_total) = s.request().await;
    let mut ttft = vec![];
    let mut total = vec![];
    for _ in 0..steady_n {
        let (a, b) = s.request().await;
        ttft.push(a);
        total.push(b);
    }
    let (p50_ttft, p50_total) = (pct(&ttft, 0.5), pct(&total, 0.5));
    println!(
        "  first request after flip: TTFT {first_ttft:.1} ms, total {first_total:.1} ms; steady p50 TTFT {p50_ttft:.1} ms, \
         total {p50_total:.1} ms; first/steady TTFT {:.2}x, total {:.2}x",
        first_ttft / p50_ttft,
        first_total / p50_total
    );
    s.admin(Method::POST, "/admin/flip", Some(json!({"to": "blue"}))).await;
    // Wait for green to drain before unloading it.
    for _ in 0..200 {
        let st = s.admin(Method::GET, "/admin/slots", None).await;
        if st["slots"]["green"]["state"] == "ready" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    s.admin(Method::DELETE, "/admin/slots/green", None).await;
    (first_ttft / p50_ttft, first_total / p50_total)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let model = std::env::var("TEAL_BENCH_MODEL").unwrap_or_else(|_| "smollm2".into());
    if !root.join(&model).exists() {
        println!("skipping: {} not found (run scripts/fetch-models.sh)", root.join(&model).display());
        return;
    }
    let n: usize = std::env::var("TEAL_BENCH_FLIPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let steady: usize = std::env::var("TEAL_BENCH_STEADY").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let rounds: usize = std::env::var("TEAL_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let s = start(root, &model).await;
        for warm in [true, false] {
            let mut ratios = vec![];
            for _ in 0..rounds {
                ratios.push(first_request(&s, &model, warm, steady).await);
            }
            let ttft: Vec<f64> = ratios.iter().map(|r| r.0).collect();
            let total: Vec<f64> = ratios.iter().map(|r| r.1).collect();
            println!(
                "{} warm-up, median over {rounds} loads: first/steady TTFT {:.2}x, total {:.2}x",
                if warm { "with" } else { "without" },
                pct(&ttft, 0.5),
                pct(&total, 0.5)
            );
        }
        s.load("green", json!({"model": model, "version": "flip"})).await;
        flips(&s, n).await;
        park_wake(&s, rounds).await;
    });
}

/// Parks and wakes the standby `rounds` times: park time, wake time split into move / allocate / warm-up, and
/// the bandwidth reached (bytes moved or allocated per second); then a load from the page cache.
async fn park_wake(s: &Server, rounds: usize) {
    // The last flip may leave green draining for a moment.
    while s.admin(Method::GET, "/admin/slots", None).await["slots"]["green"]["state"] != "ready" {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mem = s.admin(Method::GET, "/admin/slots", None).await["slots"]["green"]["memory"].clone();
    let kv = mem["kv_cache_bytes"].as_f64().unwrap_or(0.0);
    let (mut park, mut wake, mut alloc, mut warm, mut moved) = (vec![], vec![], vec![], vec![], 0u64);
    for _ in 0..rounds {
        for action in ["park", "wake"] {
            let v = s.admin(Method::POST, &format!("/admin/slots/green/{action}"), None).await;
            let id = v["operation"]["id"].as_str().unwrap().to_string();
            loop {
                let op = s.admin(Method::GET, &format!("/admin/operations/{id}"), None).await;
                if op["status"] != "running" {
                    assert_eq!(op["status"], "succeeded", "{op}");
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let p = s.admin(Method::GET, "/admin/slots", None).await["slots"]["green"]["park"].clone();
        park.push(p["park_seconds"].as_f64().unwrap_or(0.0));
        wake.push(p["wake_seconds"].as_f64().unwrap_or(0.0));
        alloc.push(p["wake"]["allocate_s"].as_f64().unwrap_or(0.0));
        warm.push(p["wake"]["warm_s"].as_f64().unwrap_or(0.0));
        // What the park and the wake copied between device and host (read after them, not before the park).
        moved = p["moved_bytes"].as_u64().unwrap_or(0);
    }
    let mib = |b: f64| b / (1u64 << 20) as f64;
    println!(
        "park/wake of the standby ({rounds} rounds, KV pool {:.0} MiB, weights {:.0} MiB, last wake moved {moved} bytes):",
        mib(kv),
        mib(mem["weights_bytes"].as_f64().unwrap_or(0.0)),
    );
    println!(
        "  park p50 {:.1} ms; wake p50 {:.1} ms = allocate {:.1} ms ({:.2} GiB/s) + warm-up {:.1} ms",
        pct(&park, 0.5) * 1e3,
        pct(&wake, 0.5) * 1e3,
        pct(&alloc, 0.5) * 1e3,
        kv / pct(&alloc, 0.5) / (1u64 << 30) as f64,
        pct(&warm, 0.5) * 1e3
    );
    let file = mem["file_bytes"].as_f64().unwrap_or(0.0);
    let op = s
        .load(
            "green",
            json!({"model": std::env::var("TEAL_BENCH_MODEL").unwrap_or_else(|_| "smollm2".into()),
            "version": "reload", "warmup": {"enabled": false},
            "gates": {"health": {"enabled": false}, "smoke": {"enabled": false}, "agreement": {"enabled": false}}}),
        )
        .await;
    let secs = op["timings"]["loading"].as_f64().unwrap_or(0.0);
    println!(
        "  load from the page cache: {:.2} s for {:.0} MiB of files ({:.2} GiB/s; digest, read, engine start)",
        secs,
        mib(file),
        file / secs / (1u64 << 30) as f64
    );
}
