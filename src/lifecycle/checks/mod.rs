//! What runs on a standby before it may go live, written once for every model kind: warm-up (whatever a first
//! request pays is paid here, before any user sees the slot) and the gates (a forced flip skips them, and is
//! audited). Each kind is a `Subject` (subject.rs): the LLM (llm.rs) and the one-shot kinds behind a dynamic
//! batcher (batched.rs). Settings are config.rs, reports report.rs.
//!
//! - warm-up: the kind's preparations (teal's kernels on a GPU), one timed request while cold, one batch of every
//!   size the batching will form, the largest single piece of work, and the first request timed again.
//! - health: one request answers, well-formed.
//! - golden: the kind's cases (prompts with expected greedy output; images with their top-1 label; sentence pairs
//!   with a cosine range); pass rate >= threshold.
//! - smoke: N varied requests, `concurrency` at a time, every one well-formed.
//! - latency (off unless configured): p99 under concurrent load within an SLO and, optionally, within a percentage
//!   of the live slot under the same load. For streaming kinds that is time to first token and inter-token
//!   latency; for one-shot kinds the time of a whole request.
//! - agreement: the share of inputs where standby and live answer the same (reported; fails only below an
//!   optional threshold).

pub mod batched;
pub mod config;
pub mod llm;
pub mod report;
pub mod subject;

use crate::backend::Backend;
use config::{GatesConfig, LatencyGate, WarmupConfig};
use report::{quantile, result, skipped, Gate, GateReport, GateResult, Timing, WarmupReport};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;
use subject::{run_concurrent, Purpose, Sample, Subject};

/// The subject for what a slot serves with. `dir` is the model directory (golden files are read from it).
pub fn subject_of<'a>(
    backend: &'a Backend,
    warm: &'a WarmupConfig,
    gates: &'a GatesConfig,
    dir: &'a Path,
) -> Box<dyn Subject + 'a> {
    match backend {
        Backend::Llm(engine) => Box::new(llm::LlmSubject::new(engine, warm, gates)),
        Backend::Embed(b) => Box::new(batched::BatchedSubject::Embed(b)),
        Backend::Classify(b) => Box::new(batched::BatchedSubject::Classify { batcher: b, gates, dir }),
    }
}

/// The batch sizes warm-up runs when none are configured: 1, 2, 4, ... up to `max_batch` (and `max_batch`).
pub fn default_batch_sizes(max_batch: usize) -> Vec<usize> {
    let mut v: Vec<usize> =
        std::iter::successors(Some(1usize), |b| Some(b * 2)).take_while(|&b| b < max_batch).collect();
    v.push(max_batch.max(1));
    v
}

fn timing(s: &Sample) -> Timing {
    Timing { ttft_ms: s.first_ms, total_ms: s.total_ms }
}

/// Runs the warm-up; `progress` hears the share done (0..=1).
pub fn warm(s: &dyn Subject, cfg: &WarmupConfig, progress: &dyn Fn(f64)) -> Result<WarmupReport, String> {
    let t0 = Instant::now();
    let mut report = WarmupReport::empty(cfg.enabled);
    if !cfg.enabled {
        return Ok(report);
    }
    report.kernels_loaded = s.preload()?;
    report.first_request_cold = Some(timing(&s.request(Purpose::Warm, 0)?));
    report.requests += 1;
    let max = s.max_batch();
    let sizes = if cfg.batch_sizes.is_empty() { default_batch_sizes(max) } else { cfg.batch_sizes.clone() };
    let sizes: Vec<usize> = sizes.into_iter().filter(|&b| b >= 1).map(|b| b.min(max)).collect();
    let steps = sizes.len() + 2;
    for (i, &b) in sizes.iter().enumerate() {
        report.requests += s.batch(b)?;
        progress((i + 1) as f64 / steps as f64);
    }
    report.batch_sizes = sizes;
    report.prefill_tokens = s.largest(cfg)?;
    report.requests += usize::from(report.prefill_tokens > 0);
    progress((steps - 1) as f64 / steps as f64);
    report.first_request_warm = Some(timing(&s.request(Purpose::Warm, 0)?));
    report.requests += 1;
    report.cached_prompt_tokens = s.cache_prefixes(&cfg.cache_prompts)?;
    report.requests += cfg.cache_prompts.len();
    report.seconds = t0.elapsed().as_secs_f64();
    progress(1.0);
    Ok(report)
}

/// Runs every gate on `standby`, comparing with `live` (the same kind) where a gate needs it.
pub fn gate(
    cfg: &GatesConfig,
    standby: &dyn Subject,
    live: Option<&dyn Subject>,
    progress: &dyn Fn(f64),
) -> GateReport {
    let t0 = Instant::now();
    let mut results = vec![health(cfg, standby)];
    progress(0.2);
    results.push(golden(cfg, standby));
    progress(0.4);
    results.push(smoke(cfg, standby));
    progress(0.6);
    results.push(latency(&cfg.latency, standby, live));
    progress(0.8);
    results.push(agreement(cfg, standby, live));
    progress(1.0);
    GateReport { passed: results.iter().all(|r| r.passed), forced: false, seconds: t0.elapsed().as_secs_f64(), results }
}

fn health(cfg: &GatesConfig, s: &dyn Subject) -> GateResult {
    if !cfg.health.enabled {
        return skipped(Gate::Health, "disabled");
    }
    match s.request(Purpose::Health, 0) {
        Ok(r) => match r.problem {
            None => result(
                Gate::Health,
                true,
                format!("answered in {:.1} ms", r.total_ms),
                json!({"ttft_ms": r.first_ms, "total_ms": r.total_ms}),
            ),
            Some(p) => result(Gate::Health, false, p, Value::Null),
        },
        Err(e) => result(Gate::Health, false, format!("the request failed: {e}"), Value::Null),
    }
}

fn golden(cfg: &GatesConfig, s: &dyn Subject) -> GateResult {
    if !cfg.golden.enabled {
        return skipped(Gate::Golden, "disabled");
    }
    let Some(g) = s.golden(cfg).filter(|g| g.checked > 0) else {
        return skipped(Gate::Golden, "no golden cases configured for this model kind");
    };
    let passed = g.checked - g.failures.len();
    let rate = passed as f64 / g.checked as f64;
    let ok = rate >= cfg.golden.threshold;
    let mut summary = format!("{passed}/{} golden cases passed", g.checked);
    if cfg.golden.threshold < 1.0 {
        summary.push_str(&format!(" (threshold {:.2})", cfg.golden.threshold));
    }
    if let (false, Some(f)) = (ok, g.failures.first()) {
        summary.push_str(&format!("; first failure: {f}"));
    }
    let mut details = json!({"pass_rate": rate, "threshold": cfg.golden.threshold, "failures": g.failures});
    if let (Some(d), Value::Object(extra)) = (details.as_object_mut(), g.details) {
        d.extend(extra);
    }
    result(Gate::Golden, ok, summary, details)
}

fn smoke(cfg: &GatesConfig, s: &dyn Subject) -> GateResult {
    let g = &cfg.smoke;
    if !g.enabled || g.requests == 0 {
        return skipped(Gate::Smoke, "disabled");
    }
    let problems: Vec<String> = run_concurrent(g.requests, g.concurrency, &|i| s.request(Purpose::Smoke, i))
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Err(e) => Some(format!("request {i} failed: {e}")),
            Ok(r) => r.problem.map(|p| format!("request {i}: {p}")),
        })
        .collect();
    let summary = match problems.first() {
        None => format!("{} requests answered, all well-formed", g.requests),
        Some(p) => format!("{} of {} requests bad; first: {p}", problems.len(), g.requests),
    };
    result(Gate::Smoke, problems.is_empty(), summary, json!({"requests": g.requests, "problems": problems}))
}

/// The latency figures under the gate's load: (name, p99 ms, SLO ms) for each figure the kind has.
fn load_p99(g: &LatencyGate, s: &dyn Subject) -> Result<Vec<(&'static str, f64, f64)>, String> {
    let samples = run_concurrent(g.requests.max(1), g.concurrency, &|i| s.request(Purpose::Latency, i));
    let samples = samples.into_iter().collect::<Result<Vec<Sample>, String>>()?;
    if !s.streams() {
        let total: Vec<f64> = samples.iter().map(|r| r.total_ms).collect();
        return Ok(vec![("request", quantile(&total, 0.99), g.request_p99_ms)]);
    }
    let first: Vec<f64> = samples.iter().map(|r| r.first_ms).collect();
    let gaps: Vec<f64> = samples.iter().flat_map(|r| r.gaps_ms.iter().copied()).collect();
    Ok(vec![("ttft", quantile(&first, 0.99), g.ttft_p99_ms), ("itl", quantile(&gaps, 0.99), g.itl_p99_ms)])
}

fn latency(g: &LatencyGate, standby: &dyn Subject, live: Option<&dyn Subject>) -> GateResult {
    if !g.enabled {
        return skipped(Gate::Latency, "not configured");
    }
    let figures = match load_p99(g, standby) {
        Ok(v) => v,
        Err(e) => return result(Gate::Latency, false, format!("load failed: {e}"), Value::Null),
    };
    let mut details = json!({"concurrency": g.concurrency, "requests": g.requests});
    let mut fails = vec![];
    for &(name, ms, slo) in &figures {
        details[format!("{name}_p99_ms")] = json!(ms);
        details[format!("slo_{name}_p99_ms")] = json!(slo);
        if ms > slo {
            fails.push(format!("p99 {} {ms:.1} ms over the SLO of {slo:.1} ms", name.to_uppercase()));
        }
    }
    if let (Some(pct), Some(live)) = (g.max_regression_pct, live) {
        match load_p99(g, live) {
            Ok(theirs) => {
                for (&(name, ms, _), &(_, l, _)) in figures.iter().zip(&theirs) {
                    details[format!("live_{name}_p99_ms")] = json!(l);
                    if ms > l * (1.0 + pct / 100.0) {
                        let n = name.to_uppercase();
                        fails.push(format!("p99 {n} {ms:.1} ms is more than {pct}% over live's {l:.1} ms"));
                    }
                }
            }
            Err(e) => fails.push(format!("could not measure the live slot: {e}")),
        }
    }
    let summary = if fails.is_empty() {
        let parts: Vec<String> =
            figures.iter().map(|(n, ms, _)| format!("p99 {} {ms:.1} ms", n.to_uppercase())).collect();
        parts.join(", ")
    } else {
        fails.join("; ")
    };
    result(Gate::Latency, fails.is_empty(), summary, details)
}

fn agreement(cfg: &GatesConfig, standby: &dyn Subject, live: Option<&dyn Subject>) -> GateResult {
    let g = &cfg.agreement;
    let Some(live) = live.filter(|_| g.enabled) else {
        return skipped(Gate::Agreement, if g.enabled { "no live slot to compare with" } else { "disabled" });
    };
    let n = standby.agreement_inputs();
    if n == 0 {
        return skipped(Gate::Agreement, "this model kind has no inputs to compare");
    }
    let answer = |s: &dyn Subject, i| s.request(Purpose::Agree, i).ok().and_then(|r| r.answer);
    let same = (0..n).filter(|&i| answer(standby, i).is_some_and(|a| Some(a) == answer(live, i))).count();
    let share = same as f64 / n as f64;
    let ok = g.threshold.is_none_or(|t| share >= t);
    let summary = match g.threshold {
        Some(t) => format!("{same}/{n} inputs agree with live (share {share:.2}, threshold {t:.2})"),
        None => format!("{same}/{n} inputs agree with live (share {share:.2}; reported only)"),
    };
    result(Gate::Agreement, ok, summary, json!({"share": share, "inputs": n, "threshold": g.threshold}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sizes_are_powers_of_two_up_to_the_max() {
        assert_eq!(default_batch_sizes(32), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(default_batch_sizes(6), vec![1, 2, 4, 6]);
        assert_eq!(default_batch_sizes(1), vec![1]);
    }
}
