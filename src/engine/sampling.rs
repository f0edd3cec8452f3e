//! Next-token choice from logits: penalties, greedy or temperature sampling with top-k / top-p / min-p, a
//! per-request seeded RNG (same seed, same output), and logprobs of the raw model distribution.

use super::request::{SamplingParams, TokenLogprob};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

pub struct Sampler {
    rng: StdRng,
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        Sampler { rng }
    }

    /// Picks the next token. `context` is every token so far (prompt and output), `output_start` where the
    /// output begins. `logits` is modified in place.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        context: &[u32],
        output_start: usize,
    ) -> (u32, Option<TokenLogprob>) {
        self.sample_masked(logits, params, context, output_start, |_| {})
    }

    /// `sample` with `mask` applied to the logits after the logprobs are taken (a grammar's mask: logprobs
    /// stay those of the model's own distribution).
    pub fn sample_masked(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        context: &[u32],
        output_start: usize,
        mask: impl FnOnce(&mut [f32]),
    ) -> (u32, Option<TokenLogprob>) {
        let logprobs = params.logprobs.map(|_| log_softmax(logits));
        mask(logits);
        for &(id, bias) in &params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        apply_penalties(logits, params, context, output_start);
        let id = if params.temperature <= 0.0 || params.top_k == 1 {
            argmax(logits)
        } else {
            self.sample_random(logits, params)
        };
        let lp =
            logprobs.map(|lp| TokenLogprob { logprob: lp[id as usize], top: top_n(&lp, params.logprobs.unwrap_or(0)) });
        (id, lp)
    }

    fn sample_random(&mut self, logits: &[f32], p: &SamplingParams) -> u32 {
        let inv_t = 1.0 / p.temperature;
        let mut cands: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l * inv_t)).filter(|(_, l)| l.is_finite()).collect();
        if cands.is_empty() {
            return argmax(logits);
        }
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            cands.truncate(p.top_k);
        }
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> = cands.iter().map(|&(i, l)| (i, (l - max).exp())).collect();
        let sum: f32 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|x| x.1 /= sum);
        if p.min_p > 0.0 {
            let pmax = probs.iter().map(|x| x.1).fold(0.0, f32::max);
            probs.retain(|x| x.1 >= p.min_p * pmax);
        }
        if p.top_p < 1.0 {
            nucleus_candidates(&mut probs, p.top_p);
            probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, x) in probs.iter().enumerate() {
                cum += x.1;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f32 = probs.iter().map(|x| x.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, pr) in &probs {
            if r < pr {
                return id;
            }
            r -= pr;
        }
        probs.last().map(|x| x.0).unwrap_or(0)
    }
}

/// Shrinks `probs` to its most likely entries when they alone reach `top_p` (then the nucleus lies inside
/// them, so sorting them gives the same cut as sorting everything, at a fraction of the cost).
fn nucleus_candidates(probs: &mut Vec<(u32, f32)>, top_p: f32) {
    const HEAD: usize = 256;
    if probs.len() <= HEAD {
        return;
    }
    probs.select_nth_unstable_by(HEAD - 1, |a, b| b.1.total_cmp(&a.1));
    if probs[..HEAD].iter().map(|x| x.1).sum::<f32>() >= top_p {
        probs.truncate(HEAD);
    }
}

fn apply_penalties(logits: &mut [f32], p: &SamplingParams, context: &[u32], output_start: usize) {
    if p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0 {
        let mut seen = std::collections::HashSet::new();
        for &t in context {
            if seen.insert(t) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in &context[output_start.min(context.len())..] {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
    }
}

/// Index of the largest logit; the lowest index wins a tie, so greedy decoding is deterministic.
pub fn argmax(logits: &[f32]) -> u32 {
    let (mut best, mut best_l) = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best_l {
            (best, best_l) = (i, l);
        }
    }
    best as u32
}

pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|l| l - lse).collect()
}

fn top_n(lp: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return vec![];
    }
    let mut idx: Vec<(u32, f32)> = lp.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let n = n.min(idx.len());
    idx.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
    idx.truncate(n);
    idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn greedy_picks_max_and_reports_logprobs() {
        let mut s = Sampler::new(Some(0));
        let mut l = vec![0.0, 3.0, 1.0, 3.0];
        let p = SamplingParams { temperature: 0.0, logprobs: Some(2), ..params() };
        let (id, lp) = s.sample(&mut l, &p, &[], 0);
        assert_eq!(id, 1);
        let lp = lp.unwrap();
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        let z: f32 = [0.0f32, 3.0, 1.0, 3.0].iter().map(|x| x.exp()).sum();
        assert!((lp.logprob - (3.0 - z.ln())).abs() < 1e-5);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_restricts() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let p = SamplingParams { temperature: 1.0, seed: Some(42), ..params() };
        let run = |seed| {
            let mut s = Sampler::new(Some(seed));
            (0..20).map(|_| s.sample(&mut logits.clone(), &p, &[], 0).0).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let pk = SamplingParams { top_k: 1, ..p.clone() };
        let mut s = Sampler::new(Some(1));
        assert_eq!(s.sample(&mut logits.clone(), &pk, &[], 0).0, argmax(&logits));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = vec![10.0, 9.0, 0.0, -5.0];
        let mut s = Sampler::new(Some(7));
        let p = SamplingParams { top_p: 0.5, ..params() };
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone(), &p, &[], 0).0, 0);
        }
        let p = SamplingParams { min_p: 0.2, ..params() };
        for _ in 0..50 {
            assert!(s.sample(&mut logits.clone(), &p, &[], 0).0 <= 1);
        }
    }

    #[test]
    fn nucleus_shortcut_keeps_the_exact_cut() {
        // A peaked distribution (nucleus inside the head) and a flat one (falls back to the full sort): in both
        // the same seed gives the same tokens as a reference that sorts everything.
        for spread in [0.05f32, 50.0] {
            let logits: Vec<f32> = (0..5000).map(|i| -(i as f32) * spread / 5000.0 * 10.0).collect();
            let p = SamplingParams { top_p: 0.9, seed: Some(3), ..params() };
            let mut a = Sampler::new(Some(3));
            let got: Vec<u32> = (0..30).map(|_| a.sample(&mut logits.clone(), &p, &[], 0).0).collect();
            let mut probs: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            let max = probs[0].1;
            probs.iter_mut().for_each(|x| x.1 = (x.1 - max).exp());
            let z: f32 = probs.iter().map(|x| x.1).sum();
            let mut cum = 0.0;
            let keep = probs.iter().take_while(|x| {
                let before = cum;
                cum += x.1 / z;
                before < 0.9
            });
            let allowed: std::collections::HashSet<u32> = keep.map(|x| x.0).collect();
            assert!(got.iter().all(|t| allowed.contains(t)), "spread {spread}: sampled outside the nucleus");
        }
    }

    #[test]
    fn penalties_change_the_greedy_choice() {
        let p = SamplingParams { temperature: 0.0, repetition_penalty: 2.0, ..params() };
        let mut s = Sampler::new(None);
        assert_eq!(s.sample(&mut [2.0, 1.5], &p, &[0], 0).0, 1);
        let p = SamplingParams { temperature: 0.0, frequency_penalty: 1.0, ..params() };
        assert_eq!(s.sample(&mut [2.0, 1.5], &p, &[5, 0], 1).0, 1);
        let p = SamplingParams { temperature: 0.0, presence_penalty: 0.4, ..params() };
        assert_eq!(s.sample(&mut [2.0, 1.5], &p, &[0, 0], 2).0, 0, "prompt tokens are not penalized");
    }
}
