//! A fleet as it runs in production, every part a real process on loopback: three `teal serve` replicas, a
//! real redis-server, and haproxy in front health-checking /health/ready, under closed-loop load through the
//! balancer. Its own test binary: it starts processes, kills them with SIGKILL and times how the fleet switches,
//! so nothing else may share the two cores (the two tests here run one after the other).
//!
//! - 20 fleet flips and 20 fleet rollbacks: no request fails, the replicas switch within a few milliseconds of
//!   each other, and every response outside a switch window carries the committed version.
//! - Chaos: the coordinator killed during prepare and during commit, redis-server killed mid-commit and
//!   mid-prepare, a replica whose standby fails its gates, a replica partitioned from Redis during a flip, a
//!   replica restarted after a flip. In each, no replica serves a version that did not pass its gates, no epoch
//!   has two targets, and the fleet converges within 5 s after the fault clears.

#[path = "../common/mod.rs"]
mod common;
mod fleet;
mod procs;
mod traffic;

use fleet::{fleet_flip, live_version, readiness, wait_ready, watch_key, Fleet};
use std::time::{Duration, Instant};
use traffic::{now_ms, out_of_window, switches, Load};

/// The two tests run one after the other (each starts five processes on two cores).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONVERGE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_flips_and_twenty_rollbacks_through_haproxy_fail_no_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Fleet::start(false).await;
    let load = Load::start(f.haproxy.url(), 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..40 {
        let rollback = round % 2 == 1;
        let (status, v) = fleet_flip(&f.replicas[round % 3], rollback).await;
        assert_eq!(status, 200, "round {round}: {v}");
        assert_eq!(v["fleet_flip"]["converged"], true, "round {round}: {v}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let responses = load.stop().await;
    let failed = responses.iter().filter(|r| r.status != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests through haproxy failed", responses.len());
    assert!(responses.iter().all(|r| r.version.is_some()), "every response names its version");
    let audits = f.audits();
    let sw = switches(&audits);
    assert_eq!(sw.len(), 40, "{sw:?}");
    let mut spreads: Vec<f64> = sw
        .iter()
        .map(|s| {
            let done: Vec<f64> = audits
                .iter()
                .flatten()
                .filter(|e| e["action"] == "fleet_apply" && e["details"]["epoch"].as_u64() == Some(s.epoch))
                .map(|e| e["details"]["late_ms"].as_f64().unwrap())
                .collect();
            assert_eq!(done.len(), 3, "epoch {}: every replica switched", s.epoch);
            done.iter().cloned().fold(f64::MIN, f64::max) - done.iter().cloned().fold(f64::MAX, f64::min)
        })
        .collect();
    spreads.sort_by(f64::total_cmp);
    let mixed = out_of_window(&responses, &sw, "base", 5.0);
    let window: Vec<f64> = sw.iter().map(|s| s.to_ms - s.from_ms).collect();
    eprintln!(
        "haproxy + 3 replicas, 40 fleet switches, {} requests, 0 failed; spread between the first and last replica: \
         median {:.1} ms, p99 {:.1} ms; activation to last switch: max {:.1} ms; responses outside a window with the \
         wrong version: {}",
        responses.len(),
        spreads[20],
        spreads[39],
        window.iter().cloned().fold(0.0, f64::max),
        mixed.len()
    );
    assert!(spreads[39] < 250.0, "{spreads:?}");
    assert!(mixed.is_empty(), "mixed versions outside the switch windows: {mixed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_never_serves_an_ungated_version_and_converges() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut f = Fleet::start(true).await;
    let load = Load::start(f.haproxy.url(), 4);
    let (status, v) = fleet_flip(&f.replicas[0], false).await;
    assert_eq!(status, 200, "{v}");
    f.converge("copy", CONVERGE).await;

    coordinator_killed_in_prepare(&mut f).await;
    coordinator_killed_after_commit(&mut f).await;
    redis_killed(&mut f).await;
    member_failing_gates(&mut f).await;
    partition(&mut f).await;
    restart_after_flip(&mut f).await;
    rollout_driver_killed(&mut f).await;

    let responses = load.stop().await;
    let ok = responses.iter().filter(|r| r.status == 200).count();
    for r in responses.iter().filter(|r| r.status == 200) {
        assert!(matches!(r.version.as_deref(), Some("base" | "copy")), "{r:?}");
    }
    let sw = switches(&f.audits()); // panics if an epoch had two targets
                                    // The replica with the failing gates never switched while it had them: every epoch it applied is one the
                                    // fleet committed, and each commit had every member's passing acknowledgement.
    eprintln!(
        "chaos: {} requests through haproxy, {ok} answered 200 (the others hit a killed replica), all from gated \
         versions; {} epochs, each with one target",
        responses.len(),
        sw.len()
    );
}

/// A fleet flip on an admin URL, with the connection errors a killed coordinator gives.
async fn raw_flip(admin_url: &str, rollback: bool) -> (u16, serde_json::Value) {
    let path = if rollback { "/admin/rollback" } else { "/admin/flip" };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let req =
        client.post(format!("{admin_url}{path}")).bearer_auth(procs::TOKEN).json(&serde_json::json!({"fleet": true}));
    match req.send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or_default()),
        Err(e) => (0, serde_json::json!({"error": e.to_string()})),
    }
}

/// Flips as soon as the fleet's lease is free (a dead coordinator's lease expires by itself); how long it waited.
async fn flip_when_free(r: &procs::Replica, rollback: bool) -> Duration {
    let t0 = Instant::now();
    let (status, v) = flip_retrying_lease(r, rollback).await;
    assert_eq!(status, 200, "{v}");
    t0.elapsed()
}

async fn flip_retrying_lease(r: &procs::Replica, rollback: bool) -> (u16, serde_json::Value) {
    let t0 = Instant::now();
    loop {
        let (status, v) = fleet_flip(r, rollback).await;
        let busy =
            status == 409 && v["error"]["message"].as_str().is_some_and(|m| m.contains("another fleet operation"));
        if !busy {
            return (status, v);
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the fleet lease was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(r: &procs::Replica, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", r.url())).await.unwrap().text().await.unwrap();
    common::metric_value(&text, name).unwrap_or_else(|| panic!("{name} missing"))
}

async fn coordinator_killed_in_prepare(f: &mut Fleet) {
    let url = f.redis.url();
    // 1. The coordinator dies while the members prepare: nobody flips; its lease frees itself; it comes back on
    // the committed version.
    let before = fleet::epoch(&url).await;
    let r0 = (f.replicas[0].admin_url(), f.replicas[0].id.clone());
    let call = tokio::spawn(async move { raw_flip(&r0.0, true).await });
    watch_key(&url, "teal:fleet:chaos:op", |v| v.is_some()).await;
    f.replicas[0].kill();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fleet::epoch(&url).await, before, "nothing was committed");
    for r in &f.replicas[1..] {
        assert_eq!(live_version(r).await.as_deref(), Some("copy"), "nobody flipped");
    }
    let t = Instant::now();
    f.replicas[0].restart();
    let startup = wait_ready(&f.replicas[0]).await;
    assert_eq!(readiness(&f.replicas[0]).await.1["version"], "copy", "ready only on the committed version");
    f.converge("copy", CONVERGE).await;
    let converged = t.elapsed();
    let lease = flip_when_free(&f.replicas[1], true).await;
    eprintln!(
        "coordinator killed in prepare: nothing committed; it restarted (ready in {:.0} ms, on the committed \
         version) and the fleet converged {:.0} ms after the restart; the next flip got the lease after {:.0} ms",
        startup.as_secs_f64() * 1e3,
        converged.as_secs_f64() * 1e3,
        lease.as_secs_f64() * 1e3
    );
    f.converge("base", CONVERGE).await;
}

async fn coordinator_killed_after_commit(f: &mut Fleet) {
    let url = f.redis.url();
    // 2. The coordinator dies right after its commit: the others switch at the activation time; it restarts on
    // the committed version.
    let before = fleet::epoch(&url).await;
    let r1 = f.replicas[1].admin_url();
    let call = tokio::spawn(async move { raw_flip(&r1, false).await });
    watch_key(&url, "teal:fleet:chaos:epoch", |v| v.and_then(|v| v.parse::<u64>().ok()) > Some(before)).await;
    f.replicas[1].kill();
    let _ = call.await;
    let t = Instant::now();
    f.replicas[1].restart();
    wait_ready(&f.replicas[1]).await;
    f.converge("copy", CONVERGE).await;
    eprintln!(
        "coordinator killed after its commit: the fleet converged on the committed version {:.0} ms after its restart",
        t.elapsed().as_secs_f64() * 1e3
    );
}

async fn redis_killed(f: &mut Fleet) {
    let url = f.redis.url();
    // 3. redis-server dies right after a commit and comes back (append-only file, fsync always): the commit
    // stands and every replica applies it.
    let lease = fleet::lease_free(&url).await;
    eprintln!("the killed coordinator's lease was free {:.0} ms after the fleet converged", lease.as_secs_f64() * 1e3);
    let before = fleet::epoch(&url).await;
    let r0 = f.replicas[0].admin_url();
    let call = tokio::spawn(async move { raw_flip(&r0, true).await });
    watch_key(&url, "teal:fleet:chaos:epoch", |v| v.and_then(|v| v.parse::<u64>().ok()) > Some(before)).await;
    f.redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.redis.restart();
    let took = f.converge("base", CONVERGE).await;
    let _ = call.await;
    eprintln!(
        "redis-server killed after a commit, restarted 500 ms later: converged {:.0} ms after it was back",
        took.as_secs_f64() * 1e3
    );

    // ... and mid-prepare: the flip fails, nobody flips.
    fleet::lease_free(&url).await;
    let before = fleet::epoch(&url).await;
    let r0 = f.replicas[0].admin_url();
    let call = tokio::spawn(async move { raw_flip(&r0, false).await });
    watch_key(&url, "teal:fleet:chaos:op", |v| v.is_some()).await;
    f.redis.kill();
    let (status, body) = call.await.unwrap();
    assert!(status >= 500, "a flip that lost its Redis fails: {status} {body}");
    f.redis.restart();
    assert_eq!(fleet::epoch(&url).await, before);
    let took = f.converge("base", CONVERGE).await;
    eprintln!("redis-server killed mid-prepare: the flip answered {status}, nobody flipped, in sync {:.0} ms after Redis was back", took.as_secs_f64() * 1e3);
}

async fn member_failing_gates(f: &mut Fleet) {
    // 4. A replica whose new version fails its gates: the flip aborts and nobody flips.
    let bad = fleet::root(true);
    f.replicas[2].kill();
    f.replicas[2].restart_with(bad.path());
    wait_ready(&f.replicas[2]).await;
    f.converge("base", CONVERGE).await;
    let (status, v) = flip_retrying_lease(&f.replicas[0], false).await;
    assert_eq!(status, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("aborted") && msg.contains("r2") && msg.contains("gates"), "{msg}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(f.live_versions().await, vec![Some("base".to_string()); 3], "nobody flips after an abort");
    f.replicas[2].kill();
    let good = f.model_root().to_path_buf();
    f.replicas[2].restart_with(&good);
    wait_ready(&f.replicas[2]).await;
    eprintln!("a member failing its gates: the flip aborted ({msg}); nobody flipped");
}

async fn partition(f: &mut Fleet) {
    // 5. A replica partitioned from Redis: first during the prepare (the flip aborts on its silence), then once
    // it has left the member list (the others flip; it serves its last committed version, stays ready, and
    // catches up when the partition heals).
    f.converge("base", CONVERGE).await;
    f.gate.cut();
    let (status, v) = fleet_flip(&f.replicas[0], false).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("no answer from r2"), "{v}");
    assert_eq!(f.live_versions().await, vec![Some("base".to_string()); 3]);
    f.wait_members(2).await;
    let (status, v) = fleet_flip(&f.replicas[0], false).await;
    assert_eq!(status, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(live_version(&f.replicas[2]).await.as_deref(), Some("base"), "a cut-off replica never flips by itself");
    assert_eq!(readiness(&f.replicas[2]).await.0, 200, "a cut-off replica stays ready");
    let stale = metric(&f.replicas[2], "teal_fleet_staleness_seconds").await;
    assert!(stale > 1.0, "staleness {stale}");
    let healed = now_ms();
    f.gate.heal();
    f.converge("copy", CONVERGE).await;
    eprintln!(
        "a replica partitioned from Redis: the flip during the partition aborted (no answer); after it left the \
         members the others flipped, it kept serving base, ready, staleness {stale:.1} s; in sync {:.0} ms after the \
         partition healed",
        now_ms() - healed
    );
}

async fn restart_after_flip(f: &mut Fleet) {
    // 6. A replica restarted after a flip comes back on the committed version before it reports ready.
    f.replicas[1].kill();
    let t = Instant::now();
    f.replicas[1].restart();
    wait_ready(&f.replicas[1]).await;
    assert_eq!(readiness(&f.replicas[1]).await.1["version"], "copy");
    f.converge("copy", CONVERGE).await;
    eprintln!(
        "a replica restarted after a flip: ready on the committed version {:.0} ms after its start",
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// Step 7: the replica driving a fleet-wide rollout dies. The others fall back to the baseline alone once it has
/// left the members; restarted, it ends the split it can no longer drive.
async fn rollout_driver_killed(f: &mut Fleet) {
    let body = serde_json::json!({"steps": [50, 100], "step_interval_s": 3600, "shadow_rate": 0});
    let (status, v) = fleet::admin(&f.replicas[0], reqwest::Method::POST, "/admin/rollouts", Some(body)).await;
    assert_eq!(status, 202, "{v}");
    let t0 = Instant::now();
    while f.view(1).await["target"]["split"]["weight_bp"] != 5000 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the split never reached the fleet");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(keys_on(&f.replicas[1], "base").await > 0, "the followers split traffic");
    f.replicas[0].kill();
    let killed = Instant::now();
    while keys_on(&f.replicas[1], "base").await + keys_on(&f.replicas[2], "base").await > 0 {
        assert!(killed.elapsed() < Duration::from_secs(10), "the followers kept the dead driver's split");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fell_back = killed.elapsed();
    let t = Instant::now();
    f.replicas[0].restart();
    wait_ready(&f.replicas[0]).await;
    f.converge("copy", CONVERGE).await;
    let t1 = Instant::now();
    while !f.view(1).await["target"]["split"].is_null() {
        assert!(t1.elapsed() < CONVERGE, "the restarted driver did not end its split");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a rollout's driver killed at 50%: the followers served the baseline alone {:.0} ms later; restarted, it \
         ended the split and the fleet converged {:.0} ms after its restart",
        fell_back.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// How many of 20 keyed requests to `r` the version `version` answered.
async fn keys_on(r: &procs::Replica, version: &str) -> usize {
    let http = reqwest::Client::new();
    let mut n = 0;
    for k in 0..20 {
        let body = serde_json::json!({"model": "story", "prompt": "Once", "max_tokens": 1, "user": format!("u{k}")});
        if let Ok(resp) = http.post(format!("{}/v1/completions", r.url())).json(&body).send().await {
            n += usize::from(resp.headers().get("x-teal-model-version").is_some_and(|v| v == version));
        }
    }
    n
}
