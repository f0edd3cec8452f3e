//! The small interface through which warm-up and the gates see a model of any kind, and the one runner that sends
//! its probe requests concurrently. A kind (checks/llm.rs, checks/batched.rs) says what one request is, how to
//! warm a batch size, what its golden cases are and what a well-formed answer looks like; everything else (the
//! order of the warm-up, the gates, their numbers and verdicts) is written once in checks/mod.rs.

use super::config::{GatesConfig, ProbePrompt, WarmupConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What a probe request is for: each kind builds a different request for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The warm-up's timed request (the same one before and after warming).
    Warm,
    /// The health gate's one request.
    Health,
    /// Smoke request `i`: varied inputs (sampled, seeded with `i`, for an LLM).
    Smoke,
    /// The latency gate's standard request.
    Latency,
    /// Agreement input `i`, answered greedily (compared with the live slot's answer).
    Agree,
}

/// One probe request's outcome, whatever the kind.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Milliseconds to the first output: an LLM's first token; a one-shot kind's whole answer.
    pub first_ms: f64,
    /// Milliseconds between outputs (an LLM's inter-token latencies; empty for one-shot kinds).
    pub gaps_ms: Vec<f64>,
    pub total_ms: f64,
    /// Why the answer is not well-formed (None: it is).
    pub problem: Option<String>,
    /// The answer in a form two versions can be compared by (greedy text, top-1 labels); None when the kind's
    /// answers are not compared exactly (embeddings).
    pub answer: Option<String>,
}

/// The golden gate's outcome for a kind: cases checked, the failures, and details for the report.
pub struct Golden {
    pub checked: usize,
    pub failures: Vec<String>,
    pub details: serde_json::Value,
}

/// One model kind as warm-up and the gates see it. Blocking: every call runs on the loader thread.
pub trait Subject: Sync {
    /// True for kinds that stream (time to first output and gaps between outputs mean something).
    fn streams(&self) -> bool;
    /// Loads what the first request would otherwise load (teal's kernels on a GPU); returns their names.
    fn preload(&self) -> Result<Vec<String>, String>;
    /// The batch sizes the model's batching forms, largest last.
    fn max_batch(&self) -> usize;
    /// Probe request `i` for `purpose`.
    fn request(&self, purpose: Purpose, i: usize) -> Result<Sample, String>;
    /// Runs a batch of `size` at once (an LLM: `size` concurrent requests; a one-shot kind: one request of `size`
    /// inputs); returns how many requests that was.
    fn batch(&self, size: usize) -> Result<usize, String>;
    /// The largest single piece of work (an LLM's prefill chunk, a text model's longest input); returns its size,
    /// or 0 when the kind has none.
    fn largest(&self, cfg: &WarmupConfig) -> Result<usize, String>;
    /// Reads each prompt whole so its KV blocks stay in the prefix cache; returns the tokens read (0 for a kind
    /// without one).
    fn cache_prefixes(&self, prompts: &[ProbePrompt]) -> Result<usize, String> {
        let _ = prompts;
        Ok(0)
    }
    /// The kind's golden cases, or None when none are configured for it.
    fn golden(&self, cfg: &GatesConfig) -> Option<Golden>;
    /// How many inputs the agreement gate compares (0: the kind is not compared).
    fn agreement_inputs(&self) -> usize;
}

/// Runs `n` requests, `concurrency` at a time (each client on its own thread, so timings are what a client sees);
/// results in request order.
pub fn run_concurrent<T: Send>(
    n: usize,
    concurrency: usize,
    one: &(dyn Fn(usize) -> Result<T, String> + Sync),
) -> Vec<Result<T, String>> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<T, String>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, n.clamp(1, 256)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = results.get(i) else { break };
                let r = one(i);
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().ok().flatten().unwrap_or_else(|| Err("the request did not run".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_keeps_request_order_and_its_concurrency() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let out = run_concurrent(20, 4, &|i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
            if i == 7 {
                Err("seven".to_string())
            } else {
                Ok(i * 10)
            }
        });
        assert_eq!(out.len(), 20);
        assert_eq!(out[3], Ok(30));
        assert_eq!(out[7], Err("seven".to_string()));
        assert!(peak.load(Ordering::SeqCst) <= 4 && peak.load(Ordering::SeqCst) >= 2);
    }
}
