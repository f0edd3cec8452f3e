//! Guards: checks on each canary outcome as it arrives, which roll back at once (no waiting for the next
//! analysis): non-finite logits, server errors, and answers that are empty, degenerate (repeating) or cut by the
//! length limit far more often than the baseline's. Pure over the two arms' statistics.

use super::config::GuardConfig;
use super::window::{ArmStats, Flags};

/// A guard that tripped: which, the value that tripped it and the threshold, with the samples behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub metric: &'static str,
    pub value: f64,
    pub threshold: f64,
    pub canary_samples: u64,
    pub baseline_samples: u64,
    pub reason: String,
}

type Flag = (&'static str, fn(&Flags) -> bool);

const FLAGS: [Flag; 3] = [
    ("guard_empty_output", |f| f.empty),
    ("guard_repetition", |f| f.repetitive),
    ("guard_finish_length", |f| f.length),
];

/// The first guard the canary breaches now, if any. Empty, repeating and length-cut answers count only against
/// a baseline with at least half a window of answers: what is normal depends on the traffic (a client asking
/// for 16 tokens gets length-cut answers from both versions).
pub fn check(canary: &ArmStats, baseline: &ArmStats, cfg: &GuardConfig) -> Option<Breach> {
    let samples = (canary.requests, baseline.requests);
    if canary.nonfinite > 0 {
        return Some(Breach {
            metric: "guard_nonfinite_logits",
            value: canary.nonfinite as f64,
            threshold: 1.0,
            canary_samples: samples.0,
            baseline_samples: samples.1,
            reason: "the canary produced NaN or infinite logits".into(),
        });
    }
    let rate = |s: &ArmStats| s.server_errors as f64 / s.requests.max(1) as f64;
    if canary.server_errors >= cfg.max_server_errors as u64 && rate(canary) > rate(baseline) {
        return Some(Breach {
            metric: "guard_server_errors",
            value: canary.server_errors as f64,
            threshold: cfg.max_server_errors as f64,
            canary_samples: samples.0,
            baseline_samples: samples.1,
            reason: format!(
                "{} server errors on the canary ({:.1}% of its requests; baseline {:.1}%)",
                canary.server_errors,
                rate(canary) * 100.0,
                rate(baseline) * 100.0
            ),
        });
    }
    for (metric, flag) in FLAGS {
        let (bad, seen) = canary.recent_share(cfg.window, flag);
        let (bbad, bseen) = baseline.recent_share(cfg.window, flag);
        let share = bad as f64 / seen.max(1) as f64;
        let base = bbad as f64 / bseen.max(1) as f64;
        // Judged only against a baseline that has answered enough to say what is normal.
        if bad >= cfg.min_bad && bseen * 2 >= cfg.window && share >= base + cfg.excess_rate {
            return Some(Breach {
                metric,
                value: share,
                threshold: base + cfg.excess_rate,
                canary_samples: seen as u64,
                baseline_samples: bseen as u64,
                reason: format!(
                    "{bad} of the canary's last {seen} answers ({:.0}%) vs {:.0}% of the baseline's last {bseen}",
                    share * 100.0,
                    base * 100.0
                ),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::window::{repetitive, Answer, Outcome};
    use std::time::Instant;

    fn answer(tokens: Vec<u32>) -> Outcome {
        Outcome::Answer(Answer { tokens, ttft_s: 0.01, e2e_s: 0.1, ..Default::default() })
    }

    #[test]
    fn repetition_is_a_short_period_over_most_of_the_answer() {
        assert!(repetitive(&[5; 16]));
        assert!(repetitive(&[1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2]));
        let phrase = [10, 11, 12, 13, 14, 15];
        assert!(repetitive(&phrase.iter().cycle().take(30).copied().collect::<Vec<_>>()));
        assert!(!repetitive(&(0..30).collect::<Vec<u32>>()));
        assert!(!repetitive(&[5; 8]), "too short to judge");
        let story = [3, 9, 4, 3, 7, 8, 2, 9, 10, 3, 4, 11, 12, 5, 6, 3, 13];
        assert!(!repetitive(&story));
    }

    #[test]
    fn a_degenerate_canary_trips_and_a_like_for_like_one_does_not() {
        let cfg = GuardConfig::default();
        let now = Instant::now();
        let (mut c, mut b) = (ArmStats::default(), ArmStats::default());
        for i in 0..40u32 {
            b.add(&answer((i..i + 16).collect()), now);
        }
        for i in 0..4 {
            c.add(&answer(vec![7; 16]), now);
            assert_eq!(check(&c, &b, &cfg), None, "{} bad answers are under min_bad", i + 1);
        }
        c.add(&answer(vec![7; 16]), now);
        let br = check(&c, &b, &cfg).expect("the fifth repeating answer trips");
        assert_eq!(br.metric, "guard_repetition");
        // The same flags on both arms are not a breach.
        let mut same = ArmStats::default();
        for _ in 0..20 {
            same.add(&answer(vec![7; 16]), now);
        }
        assert_eq!(check(&c, &same, &cfg), None);
    }

    #[test]
    fn nonfinite_logits_trip_at_once_and_server_errors_at_the_limit() {
        let cfg = GuardConfig::default();
        let now = Instant::now();
        let (mut c, b) = (ArmStats::default(), ArmStats::default());
        c.add(&Outcome::ServerError { nonfinite: false }, now);
        c.add(&Outcome::ServerError { nonfinite: false }, now);
        assert_eq!(check(&c, &b, &cfg), None);
        c.add(&Outcome::ServerError { nonfinite: false }, now);
        assert_eq!(check(&c, &b, &cfg).unwrap().metric, "guard_server_errors");
        let mut n = ArmStats::default();
        n.add(&Outcome::ServerError { nonfinite: true }, now);
        assert_eq!(check(&n, &b, &cfg).unwrap().metric, "guard_nonfinite_logits");
    }
}
