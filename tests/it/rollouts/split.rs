//! The canary split as clients see it: the realised share follows the weight over 2,000 real requests, each
//! key stays on one version, and keyless requests split at random by the weight.

use super::{root_with_base, server, start};
use crate::common::TestServer;
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use std::collections::HashMap;

/// Sends one 1-token completion per key (8 at a time); returns key -> the slot that answered.
async fn send(s: &TestServer, keys: &[String]) -> HashMap<String, String> {
    let http = reqwest::Client::new();
    futures::stream::iter(keys.iter().cloned())
        .map(|key| {
            let (http, url) = (http.clone(), s.url.clone());
            async move {
                let body = json!({"model": "story", "prompt": "Once", "max_tokens": 1, "user": key});
                let r = http.post(format!("{url}/v1/completions")).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let slot = r.headers()["x-teal-slot"].to_str().unwrap().to_string();
                (key, slot)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Sends `n` 1-token completions without any key; returns how many the canary (green) answered.
async fn keyless_green(s: &TestServer, n: usize) -> usize {
    let http = reqwest::Client::new();
    futures::stream::iter(0..n)
        .map(|_| {
            let (http, url) = (http.clone(), s.url.clone());
            async move {
                let body = json!({"model": "story", "prompt": "Once", "max_tokens": 1});
                let r = http.post(format!("{url}/v1/completions")).json(&body).send().await.unwrap();
                usize::from(r.headers()["x-teal-slot"] == "green")
            }
        })
        .buffer_unordered(8)
        .fold(0, |a, b| async move { a + b })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_realised_share_follows_the_weight_and_every_key_stays_on_one_version() {
    let root = root_with_base();
    let s = server(root.path(), "base", "copy").await;
    for pct in [5.0, 50.0] {
        // A long step interval holds the weight at the first step for the whole measurement.
        let id =
            start(&s, json!({"to": "green", "steps": [pct, 100.0], "step_interval_s": 3600, "shadow_rate": 0})).await;
        let keys: Vec<String> = (0..2000).map(|i| format!("customer-{i}")).collect();
        let first = send(&s, &keys).await;
        let green = first.values().filter(|v| *v == "green").count();
        let share = green as f64 / keys.len() as f64 * 100.0;
        eprintln!("weight {pct}%: {green} of 2000 requests on the canary ({share:.2}%)");
        // Keys hash with the rollout's own (random) id: at 50% one standard deviation over 2,000 keys is 1.1 points,
        // so 4 points is 3.6 of them (3 points failed about one run in 150).
        assert!((share - pct).abs() <= 4.0, "weight {pct}%: realised {share:.2}%");
        // The same keys again: every key on the version it had.
        let again = send(&s, &keys[..300]).await;
        for (k, slot) in &again {
            assert_eq!(&first[k], slot, "key {k} moved between versions at a constant weight");
        }
        // Keyless requests split at random by the weight (1,000 of them: within 6 points, > 3 sd at 50%).
        let keyless = keyless_green(&s, 1000).await as f64 / 10.0;
        eprintln!("weight {pct}%: {keyless:.1}% of 1000 keyless requests on the canary");
        assert!((keyless - pct).abs() <= 6.0, "keyless at {pct}%: {keyless}%");
        let v = s.admin_json(&format!("/admin/rollouts/{id}")).await;
        assert_eq!(v["weight_pct"], pct);
        let r = s.admin(Method::POST, &format!("/admin/rollouts/{id}/abort"), None).await;
        assert_eq!(r.status(), 200);
        let done = super::wait_end(&s, &id, std::time::Duration::from_secs(10)).await;
        assert_eq!(done["state"], "aborted", "{done:#}");
        assert_eq!(super::live_slot(&s.admin_json("/admin/slots").await), "blue");
    }
    // After the abort every request is on the live version again.
    let after = send(&s, &(0..200).map(|i| format!("customer-{i}")).collect::<Vec<_>>()).await;
    assert!(after.values().all(|v| v == "blue"), "{after:?}");
}
