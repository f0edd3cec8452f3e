//! The comparisons of canary against baseline over the same window (everything since the rollout started),
//! each PASS, FAIL or INCONCLUSIVE at the look's level (stats.rs spends alpha over looks). Too few samples is
//! INCONCLUSIVE, never PASS: a rollout holds its weight until every comparison passes.
//!
//! - error rate: the canary's share of failed or refused requests minus the baseline's (Agresti-Caffo); FAIL
//!   when the interval lies above the margin, PASS when it lies below.
//! - latency (TTFT, ITL) at each quantile q: with T the baseline's q-quantile times (1 + regression), and at
//!   least the quantile plus the minimum regression in milliseconds, the canary
//!   regresses when more than 1 - q of its samples exceed T. FAIL when the canary's exceedance share (Wilson)
//!   lies above 1 - q even against the baseline quantile's upper bound; PASS when it lies below against the
//!   lower bound (the baseline's own uncertainty is on the canary's side either way).
//! - output length: the difference of mean lengths (Welch) against +-change% of the baseline's mean.
//! - shadow agreement: the canary's exact-match share with the live answers (Wilson) against the A/A share (the
//!   live version against itself) minus the margin; and the teacher-forced top-1 agreement (teacher.rs) the same
//!   way.

use super::config::AnalysisConfig;
use super::stats::{self, Interval};
use super::teacher::ForcedStats;
use super::window::ArmStats;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    pub baseline: u64,
    pub canary: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub metric: String,
    pub verdict: Verdict,
    /// The canary's value (a rate, seconds, tokens or a share).
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    pub threshold: Option<f64>,
    pub samples: Samples,
    /// The interval the verdict was read from, at this look's level.
    pub ci: Option<Interval>,
}

/// Exact-match counts of the shadow comparisons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub canary_matches: u64,
    pub canary_total: u64,
    pub aa_matches: u64,
    pub aa_total: u64,
}

fn verdict(fail: bool, pass: bool) -> Verdict {
    if fail {
        Verdict::Fail
    } else if pass {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    }
}

/// Every comparison at look `k`.
pub fn compare(
    canary: &ArmStats,
    baseline: &ArmStats,
    shadow: Option<(Agreement, &ForcedStats)>,
    cfg: &AnalysisConfig,
    k: u64,
) -> Vec<Comparison> {
    let z = stats::z_two_sided(stats::alpha_at(cfg.alpha, k));
    let mut out = vec![error_rate(canary, baseline, cfg, z)];
    for q in &cfg.latency_quantiles {
        out.push(latency("ttft", &canary.ttft.to_vec(), &baseline.ttft.to_vec(), *q, cfg, z));
        out.push(latency("itl", &canary.itl.to_vec(), &baseline.itl.to_vec(), *q, cfg, z));
    }
    out.push(output_length(canary, baseline, cfg, z));
    if let Some((a, forced)) = shadow {
        out.push(agreement(a, cfg, z));
        out.push(forced_agreement(forced, cfg, z));
    }
    out
}

/// The comparisons of the bake: the canary (now taking all traffic) against the baseline's last step. Latency
/// is left out: the baseline ran under a share of the load, so its latencies are not comparable.
pub fn compare_bake(canary: &ArmStats, baseline: &ArmStats, cfg: &AnalysisConfig, k: u64) -> Vec<Comparison> {
    let z = stats::z_two_sided(stats::alpha_at(cfg.alpha, k));
    vec![error_rate(canary, baseline, cfg, z), output_length(canary, baseline, cfg, z)]
}

fn error_rate(c: &ArmStats, b: &ArmStats, cfg: &AnalysisConfig, z: f64) -> Comparison {
    let samples = Samples { baseline: b.requests, canary: c.requests };
    let enough = c.requests >= cfg.min_samples as u64 && b.requests >= cfg.min_samples as u64;
    let ci = stats::diff_of_proportions(c.failures(), c.requests, b.failures(), b.requests, z);
    Comparison {
        metric: "error_rate".into(),
        verdict: if enough {
            verdict(ci.lo > cfg.error_margin, ci.hi <= cfg.error_margin)
        } else {
            Verdict::Inconclusive
        },
        value: Some(c.failures() as f64 / c.requests.max(1) as f64),
        baseline: Some(b.failures() as f64 / b.requests.max(1) as f64),
        threshold: Some(cfg.error_margin),
        samples,
        ci: Some(ci),
    }
}

/// The baseline quantile's order-statistic interval (nearest ranks q*n -+ z*sqrt(n q (1-q))).
fn quantile_bounds(sorted: &[f64], q: f64, z: f64) -> (f64, f64) {
    let n = sorted.len() as f64;
    let half = z * (n * q * (1.0 - q)).sqrt();
    let at = |r: f64| sorted.get((r.ceil().max(1.0) as usize).min(sorted.len()) - 1).copied().unwrap_or(0.0);
    (at(q * n - half), at(q * n + half))
}

fn latency(name: &str, c: &[f64], b: &[f64], q: f64, cfg: &AnalysisConfig, z: f64) -> Comparison {
    let metric = format!("{name}_p{}", (q * 100.0).round());
    let samples = Samples { baseline: b.len() as u64, canary: c.len() as u64 };
    let (cq, bq) = (stats::quantile(c, q), stats::quantile(b, q));
    let m = 1.0 + cfg.latency_regression_pct / 100.0;
    let floor = cfg.latency_regression_min_ms / 1000.0;
    let limit = |x: f64| (x * m).max(x + floor);
    let mut cmp = Comparison {
        metric,
        verdict: Verdict::Inconclusive,
        value: cq,
        baseline: bq,
        threshold: bq.map(limit),
        samples,
        ci: None,
    };
    if c.len() < cfg.min_samples || b.len() < cfg.min_samples {
        return cmp;
    }
    let mut sorted = b.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (lo, hi) = quantile_bounds(&sorted, q, z);
    let over = |t: f64| c.iter().filter(|&&x| x > t).count() as u64;
    let n = c.len() as u64;
    let fail_ci = stats::wilson(over(limit(hi)), n, z);
    let pass_ci = stats::wilson(over(limit(lo)), n, z);
    let allowed = 1.0 - q;
    cmp.verdict = verdict(fail_ci.lo > allowed, pass_ci.hi <= allowed);
    cmp.ci = Some(if cmp.verdict == Verdict::Fail { fail_ci } else { pass_ci });
    cmp
}

fn output_length(c: &ArmStats, b: &ArmStats, cfg: &AnalysisConfig, z: f64) -> Comparison {
    let (cv, bv) = (c.out_len.to_vec(), b.out_len.to_vec());
    let samples = Samples { baseline: bv.len() as u64, canary: cv.len() as u64 };
    let (mc, mb) = (stats::mean_var(&cv).0, stats::mean_var(&bv).0);
    let allowed = cfg.output_length_change_pct / 100.0 * mb;
    let ci = stats::diff_of_means(&cv, &bv, z);
    let enough = cv.len() >= cfg.min_samples && bv.len() >= cfg.min_samples;
    Comparison {
        metric: "output_length".into(),
        verdict: if enough {
            verdict(ci.lo > allowed || ci.hi < -allowed, ci.lo >= -allowed && ci.hi <= allowed)
        } else {
            Verdict::Inconclusive
        },
        value: Some(mc),
        baseline: Some(mb),
        threshold: Some(allowed),
        samples,
        ci: Some(ci),
    }
}

fn agreement(a: Agreement, cfg: &AnalysisConfig, z: f64) -> Comparison {
    let reference = if a.aa_total > 0 { a.aa_matches as f64 / a.aa_total as f64 } else { 1.0 };
    let threshold = reference - cfg.agreement_margin;
    let ci = stats::wilson(a.canary_matches, a.canary_total, z);
    let enough = a.canary_total >= cfg.min_shadow_samples as u64;
    Comparison {
        metric: "shadow_agreement".into(),
        verdict: if enough { verdict(ci.hi < threshold, ci.lo >= threshold) } else { Verdict::Inconclusive },
        value: Some(a.canary_matches as f64 / a.canary_total.max(1) as f64),
        baseline: Some(reference),
        threshold: Some(threshold),
        samples: Samples { baseline: a.aa_total, canary: a.canary_total },
        ci: Some(ci),
    }
}

/// The canary's teacher-forced top-1 agreement against the A/A reference: FAIL when it is credibly more than the
/// margin below, PASS when credibly not (Welch over per-answer shares: positions within an answer are not
/// independent, answers are).
fn forced_agreement(f: &ForcedStats, cfg: &AnalysisConfig, z: f64) -> Comparison {
    let (c, a) = f.top1();
    let reference = if a.is_empty() { 1.0 } else { stats::mean_var(&a).0 };
    let ci = stats::diff_of_means(&c, &a, z);
    let enough = c.len() >= cfg.min_shadow_samples && a.len() >= cfg.min_shadow_samples;
    let m = cfg.agreement_margin;
    Comparison {
        metric: "shadow_top1_agreement".into(),
        verdict: if enough { verdict(ci.hi < -m, ci.lo >= -m) } else { Verdict::Inconclusive },
        value: (!c.is_empty()).then(|| stats::mean_var(&c).0),
        baseline: Some(reference),
        threshold: Some(reference - m),
        samples: Samples { baseline: a.len() as u64, canary: c.len() as u64 },
        ci: Some(ci),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::window::{Answer, Outcome};
    use std::time::Instant;

    fn arm(n: usize, ttft: impl Fn(usize) -> f64, refused_every: usize) -> ArmStats {
        let mut s = ArmStats::default();
        let now = Instant::now();
        for i in 0..n {
            if refused_every > 0 && i % refused_every == 0 {
                s.add(&Outcome::Refused, now);
                continue;
            }
            let t = ttft(i);
            let a = Answer {
                ttft_s: t,
                itl_s: vec![t / 10.0; 8],
                e2e_s: t * 2.0,
                tokens: vec![1; 16],
                ..Default::default()
            };
            s.add(&Outcome::Answer(a), now);
        }
        s
    }

    fn jitter(i: usize) -> f64 {
        0.010 + ((i * 7919) % 97) as f64 * 0.0001
    }

    fn find<'a>(v: &'a [Comparison], m: &str) -> &'a Comparison {
        v.iter().find(|c| c.metric == m).unwrap()
    }

    #[test]
    fn like_for_like_passes_and_too_little_data_is_inconclusive() {
        let cfg = AnalysisConfig { latency_quantiles: vec![0.5, 0.9], ..Default::default() };
        let (c, b) = (arm(400, jitter, 0), arm(400, |i| jitter(i + 13), 0));
        let v = compare(&c, &b, None, &cfg, 3);
        assert!(v.iter().all(|c| c.verdict == Verdict::Pass), "{v:#?}");
        let few = compare(&arm(5, jitter, 0), &b, None, &cfg, 3);
        assert!(few.iter().all(|c| c.verdict == Verdict::Inconclusive), "{few:#?}");
    }

    #[test]
    fn a_slow_canary_and_a_refusing_canary_fail() {
        let cfg = AnalysisConfig::default();
        let b = arm(200, jitter, 0);
        let slow = compare(&arm(200, |i| 3.0 * jitter(i), 0), &b, None, &cfg, 5);
        assert_eq!(find(&slow, "ttft_p50").verdict, Verdict::Fail, "{slow:#?}");
        assert_ne!(find(&slow, "error_rate").verdict, Verdict::Fail);
        let refusing = compare(&arm(200, jitter, 4), &b, None, &cfg, 5);
        assert_eq!(find(&refusing, "error_rate").verdict, Verdict::Fail, "{refusing:#?}");
    }

    #[test]
    fn low_agreement_fails_against_the_aa_reference() {
        let cfg = AnalysisConfig::default();
        let (c, b) = (arm(100, jitter, 0), arm(100, jitter, 0));
        let bad = Agreement { canary_matches: 10, canary_total: 60, aa_matches: 20, aa_total: 20 };
        assert_eq!(
            find(&compare(&c, &b, Some((bad, &ForcedStats::default())), &cfg, 2), "shadow_agreement").verdict,
            Verdict::Fail
        );
        let good = Agreement { canary_matches: 200, canary_total: 200, aa_matches: 20, aa_total: 20 };
        assert_eq!(
            find(&compare(&c, &b, Some((good, &ForcedStats::default())), &cfg, 2), "shadow_agreement").verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn a_teacher_forced_agreement_far_below_aa_fails_and_a_close_one_passes() {
        use crate::rollout::teacher::Forced;
        let cfg = AnalysisConfig { min_shadow_samples: 10, ..Default::default() };
        let f = |top1: f64| Forced { top1, kl: 0.0, ll_delta: 0.0, positions: 8 };
        let mut s = ForcedStats::default();
        for i in 0..30 {
            s.record(true, f(0.95 + 0.05 * (i % 2) as f64));
            s.record(false, f(0.3 + 0.1 * (i % 3) as f64));
        }
        assert_eq!(forced_agreement(&s, &cfg, 3.0).verdict, Verdict::Fail);
        let mut s = ForcedStats::default();
        for i in 0..30 {
            s.record(true, f(0.95 + 0.05 * (i % 2) as f64));
            s.record(false, f(0.94 + 0.06 * (i % 2) as f64));
        }
        assert_eq!(forced_agreement(&s, &cfg, 3.0).verdict, Verdict::Pass);
        assert!(s.view(3.0).unwrap().top1_agreement.unwrap().mean > 0.9);
        let few = ForcedStats::default();
        assert_eq!(forced_agreement(&few, &cfg, 3.0).verdict, Verdict::Inconclusive);
    }
}
