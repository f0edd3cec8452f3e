//! What warm-up and the gates report, as GET /admin/slots shows it and the audit log records it: the warm-up's
//! timings, and each gate's verdict with its numbers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Latency of one request as a client sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    /// Time to the first output: the first token of a streaming kind, the whole answer of a one-shot kind.
    pub ttft_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmupReport {
    pub enabled: bool,
    pub seconds: f64,
    pub requests: usize,
    pub batch_sizes: Vec<usize>,
    /// The largest single piece of work run: an LLM's prefill chunk, a text model's longest input (tokens).
    pub prefill_tokens: usize,
    /// teal's own kernels loaded onto the slot's device before the first request (empty on CPU).
    pub kernels_loaded: Vec<String>,
    /// The first request the slot ever served (before warm-up) and the same request after it.
    pub first_request_cold: Option<Timing>,
    pub first_request_warm: Option<Timing>,
    /// Tokens of `warmup.cache_prompts` read into the prefix cache.
    #[serde(default)]
    pub cached_prompt_tokens: usize,
}

impl WarmupReport {
    /// A report with nothing run yet.
    pub fn empty(enabled: bool) -> Self {
        WarmupReport {
            enabled,
            seconds: 0.0,
            requests: 0,
            batch_sizes: vec![],
            prefill_tokens: 0,
            kernels_loaded: vec![],
            first_request_cold: None,
            first_request_warm: None,
            cached_prompt_tokens: 0,
        }
    }
}

/// The gates a standby runs before it may go live, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    Health,
    Golden,
    Smoke,
    Latency,
    Agreement,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Health => "health",
            Gate::Golden => "golden",
            Gate::Smoke => "smoke",
            Gate::Latency => "latency",
            Gate::Agreement => "agreement",
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One gate's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: Gate,
    pub passed: bool,
    pub skipped: bool,
    /// One line: the numbers, or why it failed.
    pub summary: String,
    pub details: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateReport {
    pub passed: bool,
    /// Set by a forced flip: the slot went live without (passing) gates.
    pub forced: bool,
    pub seconds: f64,
    pub results: Vec<GateResult>,
}

impl GateReport {
    /// "gate: reason" of the first failed gate.
    pub fn first_failure(&self) -> Option<String> {
        self.results.iter().find(|r| !r.passed).map(|r| format!("{} gate failed: {}", r.gate, r.summary))
    }
}

pub fn result(gate: Gate, passed: bool, summary: String, details: Value) -> GateResult {
    GateResult { gate, passed, skipped: false, summary, details }
}

pub fn skipped(gate: Gate, why: &str) -> GateResult {
    GateResult { gate, passed: true, skipped: true, summary: why.into(), details: Value::Null }
}

/// The `q` quantile (0..=1) of `v`, nearest rank; 0 for an empty slice.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s.get(rank - 1).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn first_failure_names_the_gate() {
        let r = GateReport {
            passed: false,
            forced: false,
            seconds: 0.0,
            results: vec![
                skipped(Gate::Health, "disabled"),
                result(Gate::Golden, false, "0/1 cases passed".into(), Value::Null),
            ],
        };
        assert_eq!(r.first_failure().unwrap(), "golden gate failed: 0/1 cases passed");
    }
}
