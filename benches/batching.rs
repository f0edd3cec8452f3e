//! Throughput of the batched kinds with and without dynamic batching: a real teal server (in-process, real
//! HTTP) serving EfficientNet-Lite0 (KServe v2, one JPEG per request) and all-MiniLM-L6-v2 (/v1/embeddings,
//! one sentence per request), driven by `CONCURRENCY` clients for `SECONDS` each. "off" is --batch-max-size 1;
//! "on" is --batch-max-size 32 --batch-delay-ms 2. Prints images/s and embeddings/s and the p50 latency.
//!
//! Run: cargo bench --bench batching   (needs scripts/fetch-models.sh)

use base64::Engine as _;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use teal::config::ServeArgs;

const CONCURRENCY: usize = 16;
const SECONDS: u64 = 20;

async fn serve(model: PathBuf, max_batch: usize) -> (String, tokio::sync::oneshot::Sender<()>) {
    let state = tempfile::tempdir().unwrap().keep();
    let args = ServeArgs {
        model: Some(model),
        admin_token: Some("bench-admin-token-0123456789".into()),
        state_dir: Some(state),
        batch_max_size: Some(max_batch),
        batch_delay_ms: Some(2.0),
        max_body_bytes: Some(16 << 20),
        ..Default::default()
    };
    let config = args.resolve().unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", api.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(teal::server::run(config, teal::server::Listeners { api, admin }, async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    for _ in 0..1200 {
        if client.get(format!("{url}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            return (url, tx);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server never became ready");
}

/// Requests per second and p50 latency (ms) of `CONCURRENCY` clients posting `body` to `path`.
async fn drive(url: &str, path: &str, body: Value) -> (f64, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (url, body, stop) = (format!("{url}{path}"), body.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut lat = vec![];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = client.post(&url).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / secs, all[all.len() / 2], all.len())
}

#[tokio::main]
async fn main() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let photo = std::fs::read(models.join("photos/china.jpg")).expect("run scripts/fetch-models.sh");
    let image = base64::engine::general_purpose::STANDARD.encode(photo);
    let v2 = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}]});
    let emb = json!({"model": "minilm", "input": "Blue/green deployments flip traffic between two model versions."});
    println!("concurrency {CONCURRENCY}, {SECONDS} s per run");
    for (name, dir, path, body, unit) in [
        ("efficientnet-lite0", "efficientnet-lite0", "/v2/models/efficientnet-lite0/infer", &v2, "images/s"),
        ("all-MiniLM-L6-v2", "minilm", "/v1/embeddings", &emb, "embeddings/s"),
    ] {
        for (label, max_batch) in [("off (max batch 1)", 1), ("on (max batch 32, 2 ms)", 32)] {
            let (url, stop) = serve(models.join(dir), max_batch).await;
            let (rate, p50, n) = drive(&url, path, body.clone()).await;
            println!("{name:20} batching {label:26} {rate:8.1} {unit:13} p50 {p50:7.1} ms  ({n} requests)");
            let _ = stop.send(());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
