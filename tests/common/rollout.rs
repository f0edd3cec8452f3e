//! Rollout helpers shared by the rollout tests (tests/it/rollouts/) and the A/A binary (tests/rollout_aa.rs):
//! model variants made from stories260K's safetensors, a two-slot server, a load generator, rollout calls.

use super::{copy_dir, stories_dir, TestServer};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use teal::config::ServeArgs;

/// A copy of stories260K under `root/name` with its tensors and config edited, and a teal.toml naming its
/// version.
pub fn variant(root: &Path, name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>, &mut Value)) {
    let dir = root.join(name);
    copy_dir(&stories_dir(), &dir);
    let st = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let mut config: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut tensors, &mut config);
    candle_core::safetensors::save(&tensors, &st).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    std::fs::write(dir.join("teal.toml"), format!("version = \"{name}\"\n")).unwrap();
}

pub fn zero(t: &mut HashMap<String, Tensor>, suffixes: &[&str]) {
    for (name, w) in t.iter_mut() {
        if suffixes.iter().any(|s| name.ends_with(s)) {
            *w = w.zeros_like().unwrap();
        }
    }
}

/// A model root with the original (`base`, version "base") and an identical copy (`copy`).
pub fn root_with_base() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    variant(root.path(), "base", |_, _| {});
    variant(root.path(), "copy", |_, _| {});
    root
}

/// Blue serves `root/blue`, green is `root/green` loaded at start; both ready, served as "story".
pub async fn server(root: &Path, blue: &str, green: &str) -> TestServer {
    let args = ServeArgs {
        blue: Some(root.join(blue)),
        green: Some(root.join(green)),
        models_dir: Some(root.to_path_buf()),
        served_model_name: Some("story".into()),
        ..Default::default()
    };
    let s = TestServer::start_args(args).await;
    s.wait_slot("green", "ready").await;
    s
}

pub const PROMPTS: [&str; 6] = [
    "Once upon a time",
    "The little dog",
    "One day, Lily went to the park",
    "Tom had a big red ball",
    "The sun was shining and",
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends \
     and her dog. One day, she saw a big tree with a bird in it. The bird was sad because",
];

/// What the load generator saw.
#[derive(Default)]
pub struct Seen {
    pub by_slot: HashMap<String, usize>,
    pub statuses: HashMap<u16, usize>,
    /// When the first answer from this slot arrived.
    pub first_from: HashMap<String, Instant>,
    /// user key -> slots that answered it.
    pub keys: HashMap<String, Vec<String>>,
}

/// Clients sending completions (greedy, 16 tokens) with a `user` key each, until dropped.
pub struct LoadGen {
    stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadGen {
    pub fn start(url: &str, clients: usize, keys: usize) -> LoadGen {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Seen::default())));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop, seen) = (url.to_string(), stop.clone(), seen.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        // Key and prompt drawn independently, so that neither arm gets a different prompt mix.
                        let key = format!("user-{}", rand::random_range(0..keys.max(1)));
                        let prompt = PROMPTS[rand::random_range(0..PROMPTS.len())];
                        let body = json!({"model": "story", "prompt": prompt, "max_tokens": 16,
                                          "temperature": 0, "user": key});
                        let Ok(r) = http.post(format!("{url}/v1/completions")).json(&body).send().await else {
                            continue;
                        };
                        let slot =
                            r.headers().get("x-teal-slot").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        let mut s = seen.lock().unwrap();
                        *s.statuses.entry(status).or_default() += 1;
                        s.first_from.entry(slot.clone()).or_insert_with(Instant::now);
                        *s.by_slot.entry(slot.clone()).or_default() += 1;
                        let k = s.keys.entry(key).or_default();
                        if !k.contains(&slot) {
                            k.push(slot);
                        }
                    }
                })
            })
            .collect();
        LoadGen { stop, seen, tasks }
    }

    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.seen).ok().unwrap().into_inner().unwrap()
    }
}

/// Fast settings for tests: short steps and bake, small samples, 0.5 s analysis.
pub fn fast(to: &str, extra: Value) -> Value {
    let mut body = json!({
        "to": to, "steps": [20, 50, 100], "step_interval_s": 1, "shadow_rate": 0.3, "bake_s": 1,
        "analysis": {"interval_s": 0.5, "warmup_s": 1.5, "min_samples": 30, "error_margin": 0.1, "latency_quantiles": [0.5, 0.9],
                     "min_shadow_samples": 20, "agreement_margin": 0.2}
    });
    teal::lifecycle::spec::merge_json(std::mem::take(&mut body), extra)
}

/// Starts a rollout; returns its id.
pub async fn start(s: &TestServer, body: Value) -> String {
    let r = s.admin(reqwest::Method::POST, "/admin/rollouts", Some(body)).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Polls the rollout until it ends (or `limit` passes); returns its view.
pub async fn wait_end(s: &TestServer, id: &str, limit: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let v = s.admin_json(&format!("/admin/rollouts/{id}")).await;
        if !matches!(v["state"].as_str(), Some("progressing" | "paused")) {
            return v;
        }
        assert!(t0.elapsed() < limit, "rollout {id} still {} after {limit:?}: {v:#}", v["state"]);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn live_slot(status: &Value) -> String {
    ["blue", "green"].into_iter().find(|s| status["slots"][s]["live"] == true).unwrap_or("none").to_string()
}

pub fn decision<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v["decisions"].as_array().unwrap().iter().find(|d| d["decision"] == kind)
}
