//! Summaries of benchmark records: percentiles and throughput. Pure functions.

use super::client::Record;
use serde::Serialize;

/// p50 / p90 / p99 and mean of a sample, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dist {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// Nearest-rank quantile (q in 0..=1); 0 for an empty sample.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The distribution of `seconds`, reported in milliseconds.
pub fn dist(seconds: impl IntoIterator<Item = f64>) -> Dist {
    let mut v: Vec<f64> = seconds.into_iter().map(|s| s * 1e3).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return Dist::default();
    }
    Dist {
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p50: quantile(&v, 0.5),
        p90: quantile(&v, 0.9),
        p99: quantile(&v, 0.99),
    }
}

/// One load level's results.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// "c=8" (closed loop) or "rate=4/s" (open loop), or a phase name.
    pub label: String,
    pub requests: usize,
    pub errors: usize,
    /// Requests sent a second time on a fresh connection (the first got no response): counted, not hidden.
    pub retried: usize,
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub ttft_ms: Dist,
    pub itl_ms: Dist,
    pub tpot_ms: Dist,
    pub e2e_ms: Dist,
    /// The first few distinct errors.
    pub error_samples: Vec<String>,
}

/// Summarizes the records of one level; `duration` is its wall time in seconds.
pub fn summarize(label: &str, records: &[Record], duration: f64) -> Summary {
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    let tokens: usize = ok.iter().map(|r| r.output_tokens).sum();
    let mut error_samples: Vec<String> = vec![];
    for e in records.iter().filter_map(|r| r.error.clone()) {
        if error_samples.len() < 5 && !error_samples.contains(&e) {
            error_samples.push(e);
        }
    }
    let d = duration.max(1e-9);
    Summary {
        label: label.to_string(),
        requests: records.len(),
        errors: records.len() - ok.len(),
        retried: records.iter().filter(|r| r.retried).count(),
        duration_s: duration,
        request_throughput: ok.len() as f64 / d,
        output_token_throughput: tokens as f64 / d,
        ttft_ms: dist(ok.iter().map(|r| r.ttft)),
        itl_ms: dist(ok.iter().flat_map(|r| r.itl.iter().copied())),
        tpot_ms: dist(ok.iter().filter_map(|r| r.tpot())),
        e2e_ms: dist(ok.iter().map(|r| r.e2e)),
        error_samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64, e2e: f64, tokens: usize, error: Option<&str>) -> Record {
        Record {
            start: 0.0,
            ttft,
            itl: vec![(e2e - ttft) / (tokens.max(2) - 1) as f64; tokens.saturating_sub(1)],
            e2e,
            prompt_tokens: 10,
            output_tokens: tokens,
            error: error.map(String::from),
            slot: None,
            retried: false,
        }
    }

    #[test]
    fn percentiles_and_throughput() {
        let v: Vec<f64> = (1..=100).map(|i| i as f64 / 1000.0).collect();
        let d = dist(v);
        assert_eq!((d.p50, d.p90, d.p99), (50.0, 90.0, 99.0));
        assert!((d.mean - 50.5).abs() < 1e-9);
        let rs = vec![rec(0.1, 1.1, 11, None), rec(0.2, 1.2, 11, None), rec(0.0, 0.0, 0, Some("HTTP 500"))];
        let s = summarize("c=2", &rs, 2.0);
        assert_eq!((s.requests, s.errors), (3, 1));
        assert!((s.request_throughput - 1.0).abs() < 1e-9);
        assert!((s.output_token_throughput - 11.0).abs() < 1e-9);
        assert!((s.tpot_ms.p50 - 100.0).abs() < 1e-6);
        assert_eq!(s.error_samples, vec!["HTTP 500".to_string()]);
    }
}
