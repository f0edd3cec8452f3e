//! What the analysis knows about one arm of a rollout: every finished request's outcome since the rollout
//! started (counts, and latency and length samples, each kept to a bounded ring), and the flags of its most
//! recent answers for the guards. The API reports outcomes; nothing here blocks or allocates without bound.

use std::collections::VecDeque;
use std::time::Instant;

/// Samples kept per series (oldest dropped first).
const RING: usize = 20_000;
/// Recent answers remembered for the guards.
const RECENT: usize = 10_000;

/// How a request on one arm ended, as the API saw it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answer(Answer),
    /// Refused for a reason of the model (its context is too short for the request), not of the request's form.
    Refused,
    /// A 5xx or an engine failure; `nonfinite` when the model produced NaN or infinite logits.
    ServerError {
        nonfinite: bool,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub ttft_s: f64,
    pub itl_s: Vec<f64>,
    pub e2e_s: f64,
    pub tokens: Vec<u32>,
    /// No text at all.
    pub empty: bool,
    /// Ended by max_tokens or the context length.
    pub length: bool,
}

/// Flags of one recent outcome, for the guards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub empty: bool,
    pub repetitive: bool,
    pub length: bool,
}

/// Degenerate repetition: an answer of at least 12 tokens in which, for some period p of 1 to 8 tokens, at least
/// 80% of the tokens repeat the one p places earlier ("the the the", "a b a b", a looping phrase).
pub fn repetitive(tokens: &[u32]) -> bool {
    let n = tokens.len();
    if n < 12 {
        return false;
    }
    (1..=8usize).any(|p| {
        let same = tokens.iter().zip(tokens.iter().skip(p)).filter(|(a, b)| a == b).count();
        same * 10 >= (n - p) * 8
    })
}

/// A bounded series of samples.
#[derive(Debug, Clone, Default)]
pub struct Ring(VecDeque<f64>);

impl Ring {
    pub fn push(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if self.0.len() == RING {
            self.0.pop_front();
        }
        self.0.push_back(x);
    }

    pub fn to_vec(&self) -> Vec<f64> {
        self.0.iter().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct ArmStats {
    /// Requests counted (answers, refusals and server errors; cancelled ones are not).
    pub requests: u64,
    pub refused: u64,
    pub server_errors: u64,
    pub nonfinite: u64,
    pub tokens: u64,
    pub ttft: Ring,
    /// Each answer's median inter-token gap.
    pub itl: Ring,
    pub e2e: Ring,
    pub out_len: Ring,
    pub recent: VecDeque<Flags>,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl ArmStats {
    pub fn failures(&self) -> u64 {
        self.refused + self.server_errors
    }

    /// Adds one outcome; returns its flags.
    pub fn add(&mut self, o: &Outcome, now: Instant) -> Flags {
        self.requests += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
        let flags = match o {
            Outcome::Answer(a) => {
                self.tokens += a.tokens.len() as u64;
                self.ttft.push(a.ttft_s);
                self.e2e.push(a.e2e_s);
                self.out_len.push(a.tokens.len() as f64);
                // One ITL sample per answer (its median gap): the gaps of one answer, and of the answers sharing its
                // batch steps, are not independent, and counting each would make the intervals far too narrow.
                if let Some(m) = super::stats::quantile(&a.itl_s, 0.5) {
                    self.itl.push(m);
                }
                Flags { empty: a.empty, repetitive: repetitive(&a.tokens), length: a.length }
            }
            Outcome::Refused => {
                self.refused += 1;
                Flags::default()
            }
            Outcome::ServerError { nonfinite } => {
                self.server_errors += 1;
                self.nonfinite += u64::from(*nonfinite);
                Flags::default()
            }
        };
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(flags);
        flags
    }

    /// Requests per second between the first and the last outcome.
    pub fn throughput(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) if b > a => self.requests as f64 / (b - a).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Share of the last `n` outcomes with `flag` set, and how many were looked at.
    pub fn recent_share(&self, n: usize, flag: impl Fn(&Flags) -> bool) -> (usize, usize) {
        let seen = self.recent.iter().rev().take(n);
        let (mut bad, mut total) = (0, 0);
        for f in seen {
            total += 1;
            bad += usize::from(flag(f));
        }
        (bad, total)
    }
}
