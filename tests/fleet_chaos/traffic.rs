//! Closed-loop clients through the balancer, recording every response (wall-clock start and end, status, the
//! slot and version that served it), and the checks made on them against the fleet's switch windows.

use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3
}

#[derive(Debug, Clone)]
pub struct Response {
    pub start_ms: f64,
    pub end_ms: f64,
    /// 0 when the request got no HTTP answer.
    pub status: u16,
    pub version: Option<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Response>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, clients: usize) -> Load {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(vec![])));
        let tasks = (0..clients)
            .map(|i| {
                let (url, stop, seen) = (url.clone(), stop.clone(), seen.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let prompt = format!("Once upon a time {i} {n}");
                        let body = json!({"model": "story", "prompt": prompt, "max_tokens": 8});
                        let start_ms = now_ms();
                        let (status, version) =
                            match http.post(format!("{url}/v1/completions")).json(&body).send().await {
                                Ok(r) => {
                                    let v = r
                                        .headers()
                                        .get("x-teal-model-version")
                                        .and_then(|v| v.to_str().ok())
                                        .map(String::from);
                                    let status = r.status().as_u16();
                                    let ok = r.bytes().await.is_ok();
                                    (if ok { status } else { 0 }, v)
                                }
                                Err(_) => (0, None),
                            };
                        seen.lock().unwrap().push(Response { start_ms, end_ms: now_ms(), status, version });
                        if status != 200 {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, seen, tasks }
    }

    pub async fn stop(self) -> Vec<Response> {
        self.stop.store(true, Ordering::Relaxed);
        futures::future::join_all(self.tasks).await;
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// One committed epoch as the replicas applied it: its version and the window from its activation time to the
/// last replica's switch (from the replicas' audit records).
#[derive(Debug, Clone)]
pub struct Switch {
    pub epoch: u64,
    pub version: String,
    pub from_ms: f64,
    pub to_ms: f64,
}

/// The switch windows of every epoch in the replicas' audit logs; panics if an epoch was applied or committed
/// with two versions (no epoch may have two targets).
pub fn switches(audits: &[Vec<serde_json::Value>]) -> Vec<Switch> {
    let mut by_epoch: BTreeMap<u64, Switch> = BTreeMap::new();
    for e in audits.iter().flatten() {
        let action = e["action"].as_str().unwrap_or("");
        if action != "fleet_apply" && action != "fleet_commit" {
            continue;
        }
        let d = &e["details"];
        let epoch = d["epoch"].as_u64().unwrap();
        let version = e["to_version"].as_str().unwrap().to_string();
        let at = d["activate_at_ms"].as_f64().unwrap();
        let done = at + d["late_ms"].as_f64().unwrap_or(0.0);
        let s = by_epoch.entry(epoch).or_insert(Switch { epoch, version: version.clone(), from_ms: at, to_ms: done });
        assert_eq!(s.version, version, "epoch {epoch} has two targets");
        s.to_ms = s.to_ms.max(done);
    }
    by_epoch.into_values().collect()
}

/// Responses whose whole life lies between two switch windows but whose version is not the one committed before
/// them (mixed versions outside a switch window). `start` is the version live before the first window.
pub fn out_of_window(responses: &[Response], switches: &[Switch], start: &str, slack_ms: f64) -> Vec<String> {
    let mut bad = vec![];
    for r in responses.iter().filter(|r| r.status == 200) {
        let overlaps = switches.iter().any(|s| r.end_ms >= s.from_ms - slack_ms && r.start_ms <= s.to_ms + slack_ms);
        if overlaps {
            continue;
        }
        let want = switches.iter().rev().find(|s| s.to_ms < r.start_ms).map(|s| s.version.as_str()).unwrap_or(start);
        if r.version.as_deref() != Some(want) {
            bad.push(format!("{:?} at {:.0}..{:.0} ms, committed {want}", r.version, r.start_ms, r.end_ms));
        }
    }
    bad
}
