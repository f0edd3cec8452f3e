//! The blue/green benchmarks, driving a teal server's admin API while it serves load:
//! `flip` (flip every K ms under load) and `cold-warm` (first requests after a flip, with and without warm-up).

use super::{charts, client::Record, load, model_name, progress, report, spec_fn, stats, Common};
use crate::cli::admin::{follow_operation, Client};
use anyhow::{bail, Context};
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to reach the admin API.
#[derive(Debug, Clone, Args)]
pub struct AdminConn {
    #[arg(long, env = "TEAL_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    pub admin_url: String,
    #[arg(long, env = "TEAL_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, env = "TEAL_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "TEAL_STATE_DIR", default_value = ".teal")]
    pub state_dir: PathBuf,
}

impl AdminConn {
    fn client(&self) -> anyhow::Result<Client> {
        Client::connect(&self.admin_url, self.token.clone(), self.token_file.clone(), &self.state_dir)
    }
}

#[derive(Debug, Args)]
pub struct FlipBench {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub admin: AdminConn,
    /// Concurrent clients
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds of flipping
    #[arg(long, default_value_t = 20.0)]
    pub duration_s: f64,
    /// Milliseconds between flips
    #[arg(long, default_value_t = 1000)]
    pub flip_every_ms: u64,
    /// Seconds of load before the first flip and after the last
    #[arg(long, default_value_t = 5.0)]
    pub settle_s: f64,
}

#[derive(Debug, Args)]
pub struct ColdWarmBench {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub admin: AdminConn,
    /// The model to load into the standby (a name in the server's model root)
    #[arg(long)]
    pub standby_model: String,
    /// Requests measured after each flip, and again for steady state
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
}

/// One flip as the benchmark saw it.
#[derive(Debug, Clone, serde::Serialize)]
struct FlipSample {
    at_s: f64,
    round_trip_us: f64,
    swap_us: f64,
    error: Option<String>,
}

async fn flip_once(admin: &Client, run_start: Instant) -> FlipSample {
    let t0 = Instant::now();
    let out = admin.call(Method::POST, "/admin/flip", Some(json!({}))).await;
    let round_trip_us = t0.elapsed().as_secs_f64() * 1e6;
    let at_s = (t0 - run_start).as_secs_f64();
    match out {
        Ok(v) => FlipSample { at_s, round_trip_us, swap_us: v["flip"]["swap_us"].as_f64().unwrap_or(0.0), error: None },
        Err(e) => FlipSample { at_s, round_trip_us, swap_us: 0.0, error: Some(e.to_string()) },
    }
}

/// Refuses to start unless both slots hold a model that can go live.
async fn check_both_ready(admin: &Client) -> anyhow::Result<()> {
    let v = admin.status().await?;
    for sl in [&v.slots.blue, &v.slots.green] {
        let (slot, state) = (sl.slot, sl.state.as_str());
        if !matches!(state, "live" | "ready" | "draining") {
            bail!("{slot} is {state}: load a model into both slots before `teal bench flip`");
        }
    }
    Ok(())
}

pub async fn flip(b: FlipBench) -> anyhow::Result<()> {
    let admin = b.admin.client()?;
    check_both_ready(&admin).await?;
    let http = super::http_client()?;
    let model = model_name(&http, &b.common).await?;
    let spec = spec_fn(&b.common, model.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    let run_start = Instant::now();
    let loader = {
        let (http, spec, stop) = (http.clone(), spec.clone(), stop.clone());
        tokio::spawn(async move { load::until_stopped(&http, spec, b.concurrency, stop, run_start).await })
    };
    let total_s = 2.0 * b.settle_s + b.duration_s;
    let pb = progress((total_s * 10.0) as u64, "flip");
    let ticker = {
        let pb = pb.clone();
        tokio::spawn(async move {
            loop {
                pb.set_position((run_start.elapsed().as_secs_f64() * 10.0) as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(b.settle_s)).await;
    let mut flips = vec![];
    let window_start = run_start.elapsed().as_secs_f64();
    while run_start.elapsed().as_secs_f64() < window_start + b.duration_s {
        flips.push(flip_once(&admin, run_start).await);
        tokio::time::sleep(Duration::from_millis(b.flip_every_ms)).await;
    }
    let window_end = run_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(b.settle_s)).await;
    stop.store(true, Ordering::Relaxed);
    let records = loader.await.context("load generator")?;
    ticker.abort();
    pb.finish_and_clear();
    let phase = |lo: f64, hi: f64| -> Vec<Record> {
        records.iter().filter(|r| r.start >= lo && r.start < hi).cloned().collect()
    };
    let rows = vec![
        stats::summarize("before", &phase(0.0, window_start), window_start),
        stats::summarize("during", &phase(window_start, window_end), window_end - window_start),
        stats::summarize("after", &phase(window_end, f64::MAX), run_start.elapsed().as_secs_f64() - window_end),
    ];
    flip_report(&b, &model, rows, &records, &flips)
}

/// Prints, charts and writes what a flip run measured; an error if any request failed or any flip was refused.
fn flip_report(
    b: &FlipBench,
    model: &str,
    rows: Vec<stats::Summary>,
    records: &[Record],
    flips: &[FlipSample],
) -> anyhow::Result<()> {
    report::print_table(&rows);
    // dist() takes seconds and reports ms: microseconds / 1e3 in, microseconds out.
    let rtt = stats::dist(flips.iter().filter(|f| f.error.is_none()).map(|f| f.round_trip_us / 1e3));
    let swap = stats::dist(flips.iter().filter(|f| f.error.is_none()).map(|f| f.swap_us / 1e3));
    let flip_errors = flips.iter().filter(|f| f.error.is_some()).count();
    let failed = records.iter().filter(|r| r.error.is_some()).count();
    println!(
        "flips: {} ({} refused); admin round trip p50 {:.0} us, p99 {:.0} us; swap p50 {:.2} us, p99 {:.2} us",
        flips.len(),
        flip_errors,
        rtt.p50,
        rtt.p99,
        swap.p50,
        swap.p99
    );
    println!("requests: {} served, {failed} failed", records.len() - failed);
    if let Some(dir) = &b.common.svg {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("flip_timeline.svg");
        let at: Vec<f64> = flips.iter().map(|f| f.at_s).collect();
        charts::latency_over_time(&path, records, &at, "teal bench flip: latency around flips")?;
        println!("chart: {}", path.display());
    }
    if let Some(path) = &b.common.json {
        let config = json!({"url": b.common.url, "model": model, "concurrency": b.concurrency,
                            "duration_s": b.duration_s, "flip_every_ms": b.flip_every_ms, "settle_s": b.settle_s,
                            "input_len": b.common.input_len, "output_len": b.common.output_len});
        let results = json!({"phases": rows, "flips": flips.len(), "flip_errors": flip_errors,
                             "flip_round_trip_us": rtt, "flip_swap_us": swap, "failed_requests": failed,
                             "flip_samples": flips});
        report::write_json(path, "flip", config, results)?;
        println!("results: {}", path.display());
    }
    if failed > 0 || flip_errors > 0 {
        bail!("{failed} requests failed and {flip_errors} flips were refused during the run");
    }
    Ok(())
}

/// The slot that is not live.
async fn standby(admin: &Client) -> anyhow::Result<String> {
    let live = admin.status().await?.live;
    Ok(live.map(|s| s.other()).unwrap_or(crate::slot::SlotName::Blue).to_string())
}

/// Waits until `slot` reaches `state` (a slot that was just left drains first).
async fn wait_state(admin: &Client, slot: &str, state: &str) -> anyhow::Result<()> {
    for _ in 0..3000 {
        let v = admin.status().await?;
        if [&v.slots.blue, &v.slots.green].iter().any(|s| s.slot.as_str() == slot && s.state == state) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{slot} did not become {state}")
}

/// Loads the standby (warm or cold), flips to it, measures the first requests and then steady state, flips
/// back and unloads it. Returns (first, steady) records and the flip time.
async fn one_mode(
    b: &ColdWarmBench,
    admin: &Client,
    warm: bool,
    run_start: Instant,
) -> anyhow::Result<(Vec<Record>, Vec<Record>, f64)> {
    let slot = standby(admin).await?;
    let mut body = json!({"model": b.standby_model, "version": if warm { "bench-warm" } else { "bench-cold" }});
    if !warm {
        // Gates run requests too, which would warm the slot: off for the cold case.
        body["warmup"] = json!({"enabled": false});
        body["gates"] = json!({"health": {"enabled": false}, "smoke": {"enabled": false}, "agreement": {"enabled": false},
                               "golden": {"enabled": false}, "latency": {"enabled": false}});
    }
    let started = admin.start(&format!("/admin/slots/{slot}/load"), Some(body)).await?;
    let op = follow_operation(admin, &started.id, true, Duration::from_secs(3600)).await?;
    if op.status != crate::lifecycle::OpStatus::Succeeded {
        bail!("loading {} failed: {}", b.standby_model, op.error.unwrap_or_default());
    }
    admin.call(Method::POST, "/admin/flip", Some(json!({"to": slot, "force": true}))).await?;
    let flip_at = run_start.elapsed().as_secs_f64();
    let http = super::http_client()?;
    let model = model_name(&http, &b.common).await?;
    let spec = spec_fn(&b.common, model)?;
    let label = if warm { "warm" } else { "cold" };
    let pb = progress(2 * b.requests as u64, label);
    let first = load::closed_loop(&http, spec.clone(), b.concurrency, b.requests, run_start, &pb).await;
    let steady = load::closed_loop(&http, spec, b.concurrency, b.requests, run_start, &pb).await;
    pb.finish_and_clear();
    admin.call(Method::POST, "/admin/rollback", None).await?;
    wait_state(admin, &slot, "ready").await?;
    admin.call(Method::DELETE, &format!("/admin/slots/{slot}"), None).await?;
    Ok((first, steady, flip_at))
}

pub async fn cold_warm(b: ColdWarmBench) -> anyhow::Result<()> {
    let admin = b.admin.client()?;
    let run_start = Instant::now();
    let (mut rows, mut all, mut flips, mut ratios) = (vec![], vec![], vec![], serde_json::Map::new());
    for warm in [true, false] {
        let (first, steady, at) = one_mode(&b, &admin, warm, run_start).await?;
        let label = if warm { "warm" } else { "cold" };
        let span = |r: &[Record]| {
            r.iter().map(|x| x.start + x.e2e).fold(0.0, f64::max) - r.first().map(|x| x.start).unwrap_or(0.0)
        };
        let f = stats::summarize(&format!("{label} first"), &first, span(&first));
        let s = stats::summarize(&format!("{label} steady"), &steady, span(&steady));
        ratios.insert(
            label.into(),
            json!({"ttft_p50": f.ttft_ms.p50 / s.ttft_ms.p50.max(1e-9), "ttft_p99": f.ttft_ms.p99 / s.ttft_ms.p99.max(1e-9),
                   "first_request_ttft_ms": first.first().map(|r| r.ttft * 1e3), "e2e_p50": f.e2e_ms.p50 / s.e2e_ms.p50.max(1e-9)}),
        );
        rows.push(f);
        rows.push(s);
        all.extend(first);
        all.extend(steady);
        flips.push(at);
    }
    report::print_table(&rows);
    for (mode, r) in &ratios {
        println!(
            "{mode}: first {n} / steady TTFT p50 {:.2}x, p99 {:.2}x; very first request TTFT {:.1} ms",
            r["ttft_p50"].as_f64().unwrap_or(0.0),
            r["ttft_p99"].as_f64().unwrap_or(0.0),
            r["first_request_ttft_ms"].as_f64().unwrap_or(0.0),
            n = b.requests
        );
    }
    if let Some(dir) = &b.common.svg {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("cold_warm_timeline.svg");
        charts::latency_over_time(&path, &all, &flips, "teal bench cold-warm: warm flip, then cold flip")?;
        println!("chart: {}", path.display());
    }
    if let Some(path) = &b.common.json {
        let config = json!({"url": b.common.url, "standby_model": b.standby_model, "requests": b.requests,
                            "concurrency": b.concurrency, "input_len": b.common.input_len, "output_len": b.common.output_len});
        report::write_json(path, "cold-warm", config, json!({"phases": rows, "ratios": Value::Object(ratios)}))?;
        println!("results: {}", path.display());
    }
    Ok(())
}
