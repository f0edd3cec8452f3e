//! Load generators: closed loop (N clients, each sends its next request when the last one ends), open loop
//! (Poisson arrivals at a fixed rate, whatever the server does), and a closed loop that runs until told to stop
//! (the flip benchmark).

use super::client::{self, Record, RequestSpec};
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Builds the i-th request (prompts vary per request so no server-side cache makes them free).
pub type SpecFn = Arc<dyn Fn(usize) -> RequestSpec + Send + Sync>;

/// `total` requests with `concurrency` in flight.
pub async fn closed_loop(
    http: &reqwest::Client,
    spec: SpecFn,
    concurrency: usize,
    total: usize,
    run_start: Instant,
    pb: &ProgressBar,
) -> Vec<Record> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..concurrency.max(1) {
        let (http, spec, next, pb) = (http.clone(), spec.clone(), next.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = vec![];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return out;
                }
                out.push(client::run(&http, &spec(i), run_start).await);
                pb.inc(1);
            }
        }));
    }
    collect(tasks).await
}

/// `total` requests arriving as a Poisson process of `rate` per second (seeded, so runs are comparable).
pub async fn open_loop(
    http: &reqwest::Client,
    spec: SpecFn,
    rate: f64,
    total: usize,
    seed: u64,
    run_start: Instant,
    pb: &ProgressBar,
) -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut at = 0.0f64;
    let mut tasks = vec![];
    for i in 0..total {
        // Exponential inter-arrival times: -ln(U) / rate.
        let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        at += -u.ln() / rate.max(1e-9);
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
        let (http, spec, pb) = (http.clone(), spec.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let r = client::run(&http, &spec(i), run_start).await;
            pb.inc(1);
            vec![r]
        }));
    }
    collect(tasks).await
}

/// `concurrency` clients sending requests until `stop` is set.
pub async fn until_stopped(
    http: &reqwest::Client,
    spec: SpecFn,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    run_start: Instant,
) -> Vec<Record> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..concurrency.max(1) {
        let (http, spec, next, stop) = (http.clone(), spec.clone(), next.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = vec![];
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                out.push(client::run(&http, &spec(i), run_start).await);
            }
            out
        }));
    }
    collect(tasks).await
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Record>>>) -> Vec<Record> {
    let mut all = vec![];
    for t in tasks {
        if let Ok(mut v) = t.await {
            all.append(&mut v);
        }
    }
    all.sort_by(|a, b| a.start.total_cmp(&b.start));
    all
}
