//! A/A: a version rolled out against an identical copy of itself, 20 times under the same load, must promote
//! every time: the sequential analysis looks every second without raising false alarms. Only the TTFT and ITL
//! medians are compared here: this load mixes short and long prompts, and a p90 or p99 that falls between the two
//! clusters takes thousands of samples to pass (it would hold, never fail).
//!
//! Its own test binary, so that it runs alone: the other tests of the suite would share the 2 cores with the
//! two engines unevenly (in CI the canary's TTFT ran 6% behind for minutes), which is not "the same load".

mod common;

use common::rollout::{decision, fast, live_slot, root_with_base, server, start, wait_end, LoadGen};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_rollouts_of_an_identical_copy_all_promote() {
    let root = root_with_base();
    let s = server(root.path(), "base", "copy").await;
    let load = LoadGen::start(&s.url, 4, 500);
    let mut took = vec![];
    for i in 0..20 {
        let live = live_slot(&s.admin_json("/admin/slots").await);
        let to = if live == "blue" { "green" } else { "blue" };
        let t = Instant::now();
        let analysis = json!({"interval_s": 1, "latency_quantiles": [0.5]});
        let body = fast(to, json!({"steps": [50, 100], "step_interval_s": 0.3, "bake_s": 0.3, "analysis": analysis}));
        let id = start(&s, body).await;
        let v = wait_end(&s, &id, Duration::from_secs(120)).await;
        assert_eq!(v["state"], "promoted", "A/A rollout {i}: {v:#}");
        assert!(decision(&v, "rollback").is_none(), "A/A rollout {i}: {v:#}");
        assert_eq!(live_slot(&s.admin_json("/admin/slots").await), to, "A/A rollout {i}");
        took.push(t.elapsed().as_secs_f64());
    }
    let seen = load.stop().await;
    let failed: usize = seen.statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum();
    assert_eq!(failed, 0, "requests failed during the rollouts: {:?}", seen.statuses);
    took.sort_by(f64::total_cmp);
    eprintln!("20 A/A rollouts: all promoted; each took {:.1} to {:.1} s (median {:.1})", took[0], took[19], took[10]);
}
