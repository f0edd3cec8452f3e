//! The teacher-forced shadow comparison. The other model (the canary, or the live version itself for the A/A
//! reference) reads the live answer in one prefill and scores each of its tokens from the tokens before it; the
//! live model reported its own next-token distribution (top-k log-probabilities) while it generated. Per answer:
//!
//! - top-1 agreement: the share of positions where both models' most likely next token is the same;
//! - KL: the mean KL divergence from the live distribution to the other's, over the live model's top-k tokens
//!   plus the rest of the mass as one outcome (coarsening can only lower a KL: this is a lower bound on the
//!   full-vocabulary KL, exact where the top-k holds nearly all the mass);
//! - log-likelihood delta: the mean per token of the other model's log-probability of the live token minus the
//!   live model's own.
//!
//! Unlike the exact-match comparison this works for sampled requests (it compares distributions, not draws) and
//! sees a drift long before it changes a whole answer. Each answer is one sample: positions within an answer
//! are not independent, answers are.

use super::stats::{self, Interval};
use crate::engine::request::{PositionScore, TokenLogprob};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Top log-probabilities the live request reports for a shadowed answer.
pub const TOP_K: usize = 5;
/// ln(1e-10): a token the other model gives (almost) no mass counts as this, so one position cannot make the
/// KL infinite.
const FLOOR: f64 = -23.0;
/// Answers kept per arm.
const KEEP: usize = 4096;

/// One scored answer, averaged over its positions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Forced {
    pub top1: f64,
    pub kl: f64,
    pub ll_delta: f64,
    pub positions: usize,
}

/// Compares the live model's reports on its answer (`live`, one per token, in order) with the other model's
/// scores of the same tokens (`scored`, asked about each position's live top-k ids). None when nothing is
/// comparable.
pub fn compare(live: &[TokenLogprob], scored: &[PositionScore]) -> Option<Forced> {
    let (mut agree, mut kl, mut ll, mut n) = (0usize, 0.0, 0.0, 0usize);
    for (l, s) in live.iter().zip(scored) {
        let Some(&(best, _)) = l.top.first() else { continue };
        if s.asked.len() != l.top.len() {
            continue;
        }
        agree += usize::from(best == s.top1.0);
        kl += kl_top_k(&l.top, &s.asked);
        ll += f64::from(s.logprob).max(FLOOR) - f64::from(l.logprob).max(FLOOR);
        n += 1;
    }
    (n > 0).then(|| {
        let k = n as f64;
        Forced { top1: agree as f64 / k, kl: kl / k, ll_delta: ll / k, positions: n }
    })
}

/// KL(P || Q) over the ids of `p_top` plus "everything else"; `q` holds Q's log-probabilities of the same ids.
fn kl_top_k(p_top: &[(u32, f32)], q: &[f32]) -> f64 {
    let (mut kl, mut p_mass, mut q_mass) = (0.0, 0.0, 0.0);
    for (&(_, lp), &lq) in p_top.iter().zip(q) {
        let (lp, lq) = (f64::from(lp).max(FLOOR), f64::from(lq).max(FLOOR));
        kl += lp.exp() * (lp - lq);
        p_mass += lp.exp();
        q_mass += lq.exp();
    }
    let (p_rest, q_rest) = ((1.0 - p_mass).max(0.0), (1.0 - q_mass).max(FLOOR.exp()));
    if p_rest > 1e-12 {
        kl += p_rest * (p_rest.ln() - q_rest.ln());
    }
    kl.max(0.0)
}

/// The scored answers of the canary and of the A/A reference.
#[derive(Debug, Clone, Default)]
pub struct ForcedStats {
    pub canary: VecDeque<Forced>,
    pub aa: VecDeque<Forced>,
    /// Shadowed answers the other version could not be asked about: its tokenizer or template turned the
    /// prompt into other tokens, so the live tokens mean something else to it.
    pub incomparable: u64,
}

impl ForcedStats {
    pub fn record(&mut self, aa: bool, f: Forced) {
        let q = if aa { &mut self.aa } else { &mut self.canary };
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(f);
    }

    fn series(q: &VecDeque<Forced>, pick: fn(&Forced) -> f64) -> Vec<f64> {
        q.iter().map(pick).collect()
    }

    /// Mean top-1 agreement and KL of the canary's (or the A/A) answers, if any.
    pub fn means(&self, aa: bool) -> Option<(f64, f64)> {
        let q = if aa { &self.aa } else { &self.canary };
        let n = q.len() as f64;
        (!q.is_empty()).then(|| (q.iter().map(|f| f.top1).sum::<f64>() / n, q.iter().map(|f| f.kl).sum::<f64>() / n))
    }

    /// Per-answer top-1 agreement of the canary and of the A/A reference.
    pub fn top1(&self) -> (Vec<f64>, Vec<f64>) {
        (Self::series(&self.canary, |f| f.top1), Self::series(&self.aa, |f| f.top1))
    }

    /// The report's figures, with intervals at level `z`.
    pub fn view(&self, z: f64) -> Option<ForcedView> {
        if self.canary.is_empty() && self.aa.is_empty() {
            return None;
        }
        let est = |q: &VecDeque<Forced>, pick: fn(&Forced) -> f64| Estimate::of(&Self::series(q, pick), z);
        Some(ForcedView {
            compared: self.canary.len() as u64,
            aa_compared: self.aa.len() as u64,
            incomparable: self.incomparable,
            top1_agreement: est(&self.canary, |f| f.top1),
            aa_top1_agreement: est(&self.aa, |f| f.top1),
            kl: est(&self.canary, |f| f.kl),
            aa_kl: est(&self.aa, |f| f.kl),
            ll_delta: est(&self.canary, |f| f.ll_delta),
            aa_ll_delta: est(&self.aa, |f| f.ll_delta),
        })
    }
}

/// A mean over answers with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub ci: Interval,
}

impl Estimate {
    fn of(xs: &[f64], z: f64) -> Option<Estimate> {
        if xs.is_empty() {
            return None;
        }
        let (m, v) = stats::mean_var(xs);
        let half = z * (v / xs.len() as f64).sqrt();
        Some(Estimate { mean: m, ci: Interval { lo: m - half, hi: m + half } })
    }
}

/// The teacher-forced comparison in a rollout's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForcedView {
    pub compared: u64,
    pub aa_compared: u64,
    pub incomparable: u64,
    pub top1_agreement: Option<Estimate>,
    pub aa_top1_agreement: Option<Estimate>,
    /// Nats per token.
    pub kl: Option<Estimate>,
    pub aa_kl: Option<Estimate>,
    /// Nats per token, the other model minus the live one.
    pub ll_delta: Option<Estimate>,
    pub aa_ll_delta: Option<Estimate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(top: &[(u32, f32)], chosen: f32) -> TokenLogprob {
        TokenLogprob { logprob: chosen, top: top.to_vec() }
    }

    fn scored(top1: u32, logprob: f32, asked: &[f32]) -> PositionScore {
        PositionScore { logprob, top1: (top1, asked.first().copied().unwrap_or(0.0)), asked: asked.to_vec() }
    }

    #[test]
    fn the_same_distribution_agrees_with_zero_kl_and_zero_delta() {
        let top = [(7, 0.5f32.ln()), (3, 0.3f32.ln())];
        let f = compare(&[live(&top, 0.5f32.ln())], &[scored(7, 0.5f32.ln(), &[0.5f32.ln(), 0.3f32.ln()])]);
        let f = f.unwrap();
        assert_eq!((f.top1, f.positions), (1.0, 1));
        assert!(f.kl.abs() < 1e-9 && f.ll_delta.abs() < 1e-6, "{f:?}");
    }

    #[test]
    fn a_shifted_distribution_disagrees_and_has_the_expected_kl() {
        // Live: 0.5 / 0.3 / rest 0.2; other: 0.2 / 0.6 / rest 0.2, so its top choice is id 3.
        let top = [(7, 0.5f32.ln()), (3, 0.3f32.ln())];
        let f = compare(&[live(&top, 0.5f32.ln())], &[scored(3, 0.2f32.ln(), &[0.2f32.ln(), 0.6f32.ln()])]).unwrap();
        let want = 0.5 * (0.5f64 / 0.2).ln() + 0.3 * (0.3f64 / 0.6).ln();
        assert_eq!(f.top1, 0.0);
        assert!((f.kl - want).abs() < 1e-5, "{} vs {want}", f.kl);
        assert!((f.ll_delta - (0.2f64 / 0.5).ln()).abs() < 1e-5);
    }
}
