//! A fleet under test: its model root, Redis, replicas and balancer, and the admin calls the scenarios make.

use crate::procs::{Gate, Haproxy, Redis, Replica, TOKEN};
use crate::traffic::now_ms;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A model root with the original stories260K (`base`) and a slightly changed copy (`copy`); with `bad_gate`
/// the copy carries a golden case it cannot pass.
pub fn root(bad_gate: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    crate::common::rollout::variant(root.path(), "base", |_, _| {});
    crate::common::rollout::variant(root.path(), "copy", |_, c| c["rms_norm_eps"] = json!(2e-5));
    if bad_gate {
        let gate =
            "\n[gates.golden]\ncases = [{prompt = \"Once upon a time\", max_tokens = 8, expect_text = \"never\"}]\n";
        let toml = root.path().join("copy/teal.toml");
        std::fs::write(&toml, std::fs::read_to_string(&toml).unwrap() + gate).unwrap();
    }
    root
}

pub struct Fleet {
    pub root: tempfile::TempDir,
    _state: tempfile::TempDir,
    pub redis: Redis,
    pub replicas: Vec<Replica>,
    pub haproxy: Haproxy,
    /// The relay the last replica reaches Redis through (for partitions).
    pub gate: Gate,
}

impl Fleet {
    /// Three replicas (the third behind a gate), haproxy in front; returns once all are ready and joined.
    pub async fn start(durable_redis: bool) -> Fleet {
        let (root, state) = (root(false), tempfile::tempdir().unwrap());
        let redis = Redis::start(durable_redis);
        let gate = Gate::start(redis.port).await;
        let replicas = vec![
            Replica::spawn("r0", root.path(), state.path(), &redis.url()),
            Replica::spawn("r1", root.path(), state.path(), &redis.url()),
            Replica::spawn("r2", root.path(), state.path(), &gate.url()),
        ];
        for r in &replicas {
            wait_ready(r).await;
        }
        let haproxy = Haproxy::start(&replicas);
        let f = Fleet { root, _state: state, redis, replicas, haproxy, gate };
        f.wait_members(3).await;
        f
    }

    pub async fn view(&self, i: usize) -> Value {
        admin(&self.replicas[i], reqwest::Method::GET, "/admin/fleet", None).await.1
    }

    pub async fn wait_members(&self, n: usize) {
        let t0 = Instant::now();
        loop {
            if self.view(0).await["members"].as_array().map(Vec::len) == Some(n) {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "never {n} members: {}", self.view(0).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The live version of every replica (None: not answering).
    pub async fn live_versions(&self) -> Vec<Option<String>> {
        let mut out = vec![];
        for r in &self.replicas {
            out.push(live_version(r).await);
        }
        out
    }

    /// Waits until every replica serves `version`, is a member in sync at one epoch and is ready; returns how
    /// long that took.
    pub async fn converge(&self, version: &str, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.converged(version).await {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "the fleet did not converge on {version} within {within:?}: {:?}\n{:#}",
                self.live_versions().await,
                self.view(0).await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn converged(&self, version: &str) -> bool {
        if self.live_versions().await.iter().any(|v| v.as_deref() != Some(version)) {
            return false;
        }
        for r in &self.replicas {
            if !ready(r).await {
                return false;
            }
        }
        let v = self.view(0).await;
        let members = v["members"].as_array().cloned().unwrap_or_default();
        let epochs: Vec<u64> = members.iter().filter_map(|m| m["epoch"].as_u64()).collect();
        members.len() == self.replicas.len()
            && members.iter().all(|m| m["state"] == "in_sync" && m["live_version"] == version)
            && epochs.windows(2).all(|w| w[0] == w[1])
            && v["target"]["live"]["version"] == version
    }

    pub fn audits(&self) -> Vec<Vec<Value>> {
        self.replicas.iter().map(Replica::audit).collect()
    }

    pub fn model_root(&self) -> &Path {
        self.root.path()
    }
}

pub async fn admin(r: &Replica, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut req = client.request(method, format!("{}{path}", r.admin_url())).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({"error": e.to_string()})),
    }
}

/// A fleet flip (or rollback) coordinated by `r`.
pub async fn fleet_flip(r: &Replica, rollback: bool) -> (u16, Value) {
    let path = if rollback { "/admin/rollback" } else { "/admin/flip" };
    admin(r, reqwest::Method::POST, path, Some(json!({"fleet": true}))).await
}

pub async fn ready(r: &Replica) -> bool {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    matches!(client.get(format!("{}/health/ready", r.url())).send().await, Ok(resp) if resp.status() == 200)
}

/// The /health/ready answer (status and body).
pub async fn readiness(r: &Replica) -> (u16, Value) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    match client.get(format!("{}/health/ready", r.url())).send().await {
        Ok(resp) => (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

pub async fn wait_ready(r: &Replica) -> Duration {
    let t0 = Instant::now();
    while !ready(r).await {
        assert!(t0.elapsed() < Duration::from_secs(60), "{} never became ready (see {:?})", r.id, r.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

pub async fn live_version(r: &Replica) -> Option<String> {
    let (status, v) = admin(r, reqwest::Method::GET, "/admin/slots", None).await;
    if status != 200 {
        return None;
    }
    ["blue", "green"]
        .into_iter()
        .find(|s| v["slots"][s]["live"] == true)
        .and_then(|s| v["slots"][s]["model"]["version"].as_str().map(String::from))
}

/// Polls Redis every 2 ms until `key` satisfies `hit`; the wall-clock time it did.
pub async fn watch_key(url: &str, key: &str, hit: impl Fn(Option<String>) -> bool) -> f64 {
    let t0 = Instant::now();
    let mut conn = None;
    loop {
        if conn.is_none() {
            conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match redis::cmd("GET").arg(key).query_async::<Option<String>>(c).await {
                Ok(v) if hit(v.clone()) => return now_ms(),
                Ok(_) => {}
                Err(_) => conn = None, // restarting or loading: reconnect
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{key} never changed as expected");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `key`'s value; None while Redis cannot answer (restarting, loading its file).
async fn get(url: &str, key: &str) -> Option<Option<String>> {
    let mut c = redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("GET").arg(key).query_async(&mut c).await.ok()
}

/// The fleet's epoch counter (waits while Redis cannot answer).
pub async fn epoch(url: &str) -> u64 {
    let t0 = Instant::now();
    loop {
        if let Some(v) = get(url, "teal:fleet:chaos:epoch").await {
            return v.and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "Redis never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no fleet operation holds the lease (a dead coordinator's lease expires by itself); how long.
pub async fn lease_free(url: &str) -> Duration {
    let t0 = Instant::now();
    watch_key(url, "teal:fleet:chaos:lease", |v| v.is_none()).await;
    t0.elapsed()
}
