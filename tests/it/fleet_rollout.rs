//! A rollout started on one replica of a fleet drives every replica's split: the same rollout id, canary and
//! weight everywhere, so each key goes to the same version whichever replica serves it; promotion makes the
//! canary live on every replica, an abort takes all traffic back everywhere; while it runs, no other replica
//! may start a rollout of its own.

use crate::common::rollout::{fast, start, wait_end};
use crate::common::TestServer;
use crate::fleet::{fleet_view, live, replica, root, wait_members};
use crate::sessions::Redis;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Waits until the committed split weight is `bp` (None: no split) and every member has applied it.
async fn wait_split(replicas: &[TestServer], bp: Option<u64>) {
    let t0 = Instant::now();
    for s in replicas {
        loop {
            let v = fleet_view(s).await;
            let epoch = &v["target"]["epoch"];
            let applied = v["members"].as_array().unwrap().iter().all(|m| m["epoch"] == *epoch);
            if v["target"]["split"]["weight_bp"].as_u64() == bp && applied {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "split never {bp:?}: {v:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The slot that answers `key` on `s`.
async fn slot_for(http: &reqwest::Client, s: &TestServer, key: &str) -> String {
    let body = json!({"model": "story", "prompt": "Once upon a time", "max_tokens": 2, "user": key});
    let r = http.post(format!("{}/v1/completions", s.url)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-teal-slot"].to_str().unwrap().to_string()
}

async fn wait_live(replicas: &[TestServer], slot: &str) {
    let t0 = Instant::now();
    for s in replicas {
        while live(s).await != slot {
            assert!(t0.elapsed() < Duration::from_secs(10), "{} never went live on {}", slot, s.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_on_one_replica_splits_every_replica_alike_and_promotes_or_aborts_fleet_wide() {
    let redis = Redis::start();
    let root = root();
    let reps = join_all(["r0", "r1", "r2"].iter().map(|id| replica(root.path(), &redis, id))).await;
    wait_members(&reps[0], 3).await;
    let hold = json!({"steps": [30, 100], "step_interval_s": 3600, "shadow_rate": 0});
    let id = start(&reps[0], fast("green", hold)).await;
    wait_split(&reps, Some(3000)).await;
    let r = reps[1].admin(Method::POST, "/admin/rollouts", Some(fast("green", json!({})))).await;
    assert_eq!(r.status(), 409, "a second rollout while the fleet's runs");
    let msg = r.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("fleet's rollout"), "{msg}");
    // A fleet flip would be undone by the rollout: refused while it runs.
    let r = reps[2].admin(Method::POST, "/admin/flip", None).await;
    assert_eq!(r.status(), 409);
    let msg = r.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("promote or abort it there first"), "{msg}");
    // Each key is served by the same version on every replica; about 30% of keys by the canary.
    let http = reqwest::Client::new();
    let mut canary = 0;
    for k in 0..200 {
        let key = format!("user-{k}");
        let mut slots = vec![];
        for s in &reps {
            slots.push(slot_for(&http, s, &key).await);
        }
        assert!(slots.iter().all(|x| *x == slots[0]), "key {key} split differently: {slots:?}");
        canary += usize::from(slots[0] == "green");
    }
    eprintln!("fleet rollout at 30%: {canary} of 200 keys on the canary, each on the same version on 3 replicas");
    assert!((35..=85).contains(&canary), "{canary} of 200 keys on the canary at 30%");
    // Promotion: the canary goes live on every replica and the split ends.
    let r = reps[0].admin(Method::POST, &format!("/admin/rollouts/{id}/promote"), None).await;
    assert_eq!(r.status(), 200);
    let v = wait_end(&reps[0], &id, Duration::from_secs(30)).await;
    assert_eq!(v["state"], "promoted", "{v:#}");
    wait_live(&reps, "green").await;
    wait_split(&reps, None).await;
    // A rollout back to blue from another replica, aborted: all traffic back to green everywhere.
    reps[1].wait_slot("blue", "ready").await; // drained after the flip
    let id2 =
        start(&reps[1], fast("blue", json!({"steps": [50, 100], "step_interval_s": 3600, "shadow_rate": 0}))).await;
    wait_split(&reps, Some(5000)).await;
    let r = reps[1].admin(Method::POST, &format!("/admin/rollouts/{id2}/abort"), None).await;
    assert_eq!(r.status(), 200);
    wait_split(&reps, None).await;
    for s in &reps {
        assert_eq!(live(s).await, "green");
        for k in 0..20 {
            assert_eq!(slot_for(&http, s, &format!("user-{k}")).await, "green", "after the abort");
        }
    }
}
