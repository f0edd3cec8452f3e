//! A fleet of three teal servers sharing one real redis-server: fleet flips and rollbacks under load switch every
//! replica within a fraction of a second of the others and fail no request; a member whose standby fails its
//! gates aborts a flip before anyone flips; a replica that joins late adopts the committed version; an epoch that
//! goes backwards (a Redis that lost writes) freezes the replicas that saw a newer one.

use crate::common::TestServer;
use crate::rollouts::variant;
use crate::sessions::Redis;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use teal::config::ServeArgs;

pub(crate) async fn replica(root: &Path, redis: &Redis, id: &str) -> TestServer {
    let s = TestServer::start_args(replica_args(root, redis, id)).await;
    s.wait_slot("green", "ready").await;
    s
}

fn replica_args(root: &Path, redis: &Redis, id: &str) -> ServeArgs {
    ServeArgs {
        blue: Some(root.join("base")),
        green: Some(root.join("copy")),
        models_dir: Some(root.to_path_buf()),
        served_model_name: Some("story".into()),
        fleet_name: Some("f1".into()),
        fleet_redis_url: Some(redis.url()),
        replica_id: Some(id.into()),
        ..Default::default()
    }
}

pub(crate) fn root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    variant(root.path(), "base", |_, _| {});
    variant(root.path(), "copy", |_, c| c["rms_norm_eps"] = json!(2e-5));
    root
}

pub(crate) async fn fleet_view(s: &TestServer) -> Value {
    s.admin_json("/admin/fleet").await
}

pub(crate) async fn wait_members(s: &TestServer, n: usize) {
    for _ in 0..200 {
        if fleet_view(s).await["members"].as_array().map(Vec::len) == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the fleet never had {n} members: {}", fleet_view(s).await);
}

pub(crate) async fn live(s: &TestServer) -> String {
    let v = s.admin_json("/admin/slots").await;
    ["blue", "green"].into_iter().find(|x| v["slots"][x]["live"] == true).unwrap_or("none").to_string()
}

/// Closed-loop clients spread over the replicas; counts statuses.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<u16>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(urls: Vec<String>) -> Load {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(vec![])));
        let tasks = (0..6)
            .map(|i| {
                let (url, stop, seen) = (urls[i % urls.len()].clone(), stop.clone(), seen.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let body = json!({"model": "story", "prompt": "Once upon a time", "max_tokens": 8});
                        let status = match http.post(format!("{url}/v1/completions")).json(&body).send().await {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 0,
                        };
                        seen.lock().unwrap().push(status);
                    }
                })
            })
            .collect();
        Load { stop, seen, tasks }
    }

    async fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        join_all(self.tasks).await;
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// Each replica's fleet_apply lateness (ms after the activation time) for `epoch`.
async fn lateness(replicas: &[TestServer], epoch: u64) -> Vec<f64> {
    let mut out = vec![];
    for s in replicas {
        let v = s.admin_json("/admin/events").await;
        let applied = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "fleet_apply" && e["details"]["epoch"].as_u64() == Some(epoch));
        // A replica already on the target applies without flipping (and without an audit record).
        if let Some(e) = applied {
            out.push(e["details"]["late_ms"].as_f64().unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_flip_and_roll_back_together_under_load() {
    let redis = Redis::start();
    let root = root();
    let ids = ["r0", "r1", "r2"];
    let replicas = join_all(ids.iter().map(|id| replica(root.path(), &redis, id))).await;
    wait_members(&replicas[0], 3).await;
    let load = Load::start(replicas.iter().map(|s| s.url.clone()).collect());
    let mut spreads = vec![];
    let mut last_epoch = 0;
    for round in 0..20 {
        let coordinator = &replicas[round % 3];
        let path = if round % 2 == 0 { "/admin/flip" } else { "/admin/rollback" };
        let r = coordinator.admin(Method::POST, path, None).await;
        let v: Value = r.json().await.unwrap();
        let f = &v["fleet_flip"];
        assert!(f.is_object(), "round {round}: {v}");
        let epoch = f["epoch"].as_u64().unwrap();
        assert!(epoch > last_epoch, "epochs only grow: {epoch} after {last_epoch}");
        last_epoch = epoch;
        assert_eq!(f["converged"], true, "round {round}: {v}");
        let want = if round % 2 == 0 { "green" } else { "blue" };
        for s in &replicas {
            assert_eq!(live(s).await, want, "round {round}");
        }
        let late = lateness(&replicas, epoch).await;
        assert_eq!(late.len(), 3, "round {round}: every replica flipped ({late:?})");
        let spread = late.iter().cloned().fold(f64::MIN, f64::max) - late.iter().cloned().fold(f64::MAX, f64::min);
        spreads.push(spread);
    }
    let statuses = load.stop().await;
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed", statuses.len());
    spreads.sort_by(f64::total_cmp);
    eprintln!(
        "20 fleet flips/rollbacks of 3 replicas, {} requests, 0 failed; spread between the first and last replica: median {:.1} ms, max {:.1} ms",
        statuses.len(),
        spreads[10],
        spreads[19]
    );
    assert!(spreads[19] < 250.0, "{spreads:?}");
    let view = fleet_view(&replicas[1]).await;
    assert_eq!(view["target"]["epoch"], last_epoch);
    for m in view["members"].as_array().unwrap() {
        assert_eq!((m["epoch"].as_u64(), m["state"].as_str()), (Some(last_epoch), Some("in_sync")), "{view:#}");
    }
    // The dashboard's feed shows the same fleet matrix.
    let feed = replicas[0].dashboard_state(crate::common::ADMIN_TOKEN).await;
    assert_eq!(feed["fleet"]["target"]["epoch"], last_epoch, "{:#}", feed["fleet"]);
    assert_eq!(feed["fleet"]["members"].as_array().map(Vec::len), Some(3));
    let metrics = replicas[2].get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(&format!("teal_fleet_epoch {last_epoch}")), "{metrics}");
    assert!(metrics.contains("teal_fleet_staleness_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_member_aborts_the_flip_a_late_joiner_adopts_and_a_lost_epoch_freezes() {
    let redis = Redis::start();
    let root = root();
    // r2's copy of the new version carries a golden case it cannot pass: its gates fail.
    let bad = tempfile::tempdir().unwrap();
    variant(bad.path(), "base", |_, _| {});
    variant(bad.path(), "copy", |_, c| c["rms_norm_eps"] = json!(2e-5));
    let gate = "\n[gates.golden]\ncases = [{prompt = \"Once upon a time\", max_tokens = 8, expect_text = \"never\"}]\n";
    let toml = bad.path().join("copy/teal.toml");
    std::fs::write(&toml, std::fs::read_to_string(&toml).unwrap() + gate).unwrap();
    let a = replica(root.path(), &redis, "a").await;
    let b = replica(root.path(), &redis, "b").await;
    let c = replica(bad.path(), &redis, "c").await;
    wait_members(&a, 3).await;
    // Malformed fleet calls are refused before anything is asked of the fleet.
    for (body, param) in [
        (json!({"fleet": "yes"}), "fleet"),
        (json!({"force": true}), "force"),
        (json!({"to": "purple"}), "to"),
        (json!({"drain_sessions": true}), "body"),
    ] {
        let r = a.admin(Method::POST, "/admin/flip", Some(body.clone())).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], param, "{body}");
    }
    let r = a.admin(Method::POST, "/admin/flip", Some(json!({}))).await;
    assert_eq!(r.status(), 409);
    let msg = r.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("aborted") && msg.contains("c:") && msg.contains("gates"), "{msg}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    for s in [&a, &b, &c] {
        assert_eq!(live(s).await, "blue", "nobody flips after an abort");
    }
    // Without c the flip goes through; a replica started afterwards adopts the committed version.
    c.stop().await.unwrap();
    let t0 = Instant::now();
    while fleet_view(&a).await["members"].as_array().unwrap().len() > 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "c's heartbeat never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v: Value = a.admin(Method::POST, "/admin/flip", None).await.json().await.unwrap();
    let epoch = v["fleet_flip"]["epoch"].as_u64().unwrap_or_else(|| panic!("{v}"));
    // It starts with blue live and green loading; it reports ready only once it has flipped to the committed
    // version (start_args waits for /health/ready).
    let t0 = Instant::now();
    let late = TestServer::start_args(replica_args(root.path(), &redis, "late")).await;
    assert_eq!(live(&late).await, "green", "ready before it adopted epoch {epoch}");
    eprintln!(
        "late joiner ready on epoch {epoch}'s version {:.0} ms after its start",
        t0.elapsed().as_secs_f64() * 1e3
    );
    // A Redis that lost writes: the target goes back to an older epoch. Replicas that applied more freeze.
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut old: Value = serde_json::from_str(
        &redis::cmd("GET").arg("teal:fleet:f1:target").query_async::<String>(&mut conn).await.unwrap(),
    )
    .unwrap();
    old["epoch"] = json!(epoch - 1);
    let _: () =
        redis::cmd("SET").arg("teal:fleet:f1:target").arg(old.to_string()).query_async(&mut conn).await.unwrap();
    let t0 = Instant::now();
    loop {
        let v = fleet_view(&a).await;
        let frozen = v["members"].as_array().unwrap().iter().filter(|m| m["state"] == "frozen").count();
        if frozen == 3 {
            assert!(v["members"][0]["reason"].as_str().unwrap().contains("went backwards"), "{v:#}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "replicas did not freeze: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in [&a, &b, &late] {
        assert_eq!(live(s).await, "green", "a frozen replica keeps serving what it has");
    }
}

#[tokio::test]
async fn without_fleet_mode_fleet_calls_are_refused() {
    let s = TestServer::start(crate::common::stories_dir(), ServeArgs::default()).await;
    assert_eq!(s.admin(Method::GET, "/admin/fleet", None).await.status(), 404);
    let r = s.admin(Method::POST, "/admin/rollback", Some(json!({"fleet": true}))).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "fleet");
    let r = s.admin(Method::POST, "/admin/rollback", Some(json!({"steps": 3}))).await;
    assert_eq!(r.status(), 400, "a rollback takes no settings");
}
