//! Shadow runs of a rollout. Once a picked live answer is complete, the other version (the canary, or for the
//! A/A reference the live version itself) is asked about the same request in two ways; neither answers anyone
//! nor writes to a session:
//! - teacher-forced: it scores the live answer's tokens in one prefill (rollout/teacher.rs compares the scores
//!   with the top log-probabilities the live model reported while it generated);
//! - generate: it answers the same prompt with the same parameters and seed; the texts are compared exactly and
//!   the timings kept.

#![deny(clippy::indexing_slicing)]

use super::openai_types::Prompt;
use super::{prompt, AppState};
use crate::engine::request::{Event, FinishReason, SamplingParams, TokenLogprob};
use crate::engine::{score, Engine};
use crate::models::chat_template::ChatMessage;
use crate::rollout::run::ShadowTicket;
use crate::rollout::teacher::{self, Forced};
use crate::rollout::window::Answer;
use crate::router::Arm;
use std::time::{Duration, Instant};

/// Longest a shadow run (both comparisons) may take.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(120);
/// Share of shadow runs that go to the live version itself (the A/A reference). Half: the two versions then
/// carry the same extra load, so mirroring does not bias the latency comparison against the canary.
const AA_SHARE: f64 = 0.5;

/// What a shadow run replays: the chat messages or the completion prompt (tokenized again for the model that
/// runs it, whose template or tokenizer may differ).
pub enum ShadowPrompt {
    Chat(Vec<ChatMessage>),
    Completion(Prompt),
}

/// The live answer as the tap saw it.
#[derive(Default)]
pub struct LiveAnswer {
    pub text: String,
    ids: Vec<u32>,
    /// The live model's report for each token, while every token had one.
    logprobs: Vec<TokenLogprob>,
    gap: bool,
}

impl LiveAnswer {
    /// Records one token of the answer. `client` is set for a shadowed request: the logprobs it asked for (the
    /// event keeps only those; the full report stays here).
    pub fn push(&mut self, id: u32, piece: &str, logprob: &mut Option<TokenLogprob>, client: Option<Option<usize>>) {
        self.text.push_str(piece);
        self.ids.push(id);
        let Some(asked) = client else { return };
        match logprob.as_ref() {
            Some(lp) if !self.gap => self.logprobs.push(lp.clone()),
            _ => self.gap = true,
        }
        match (asked, logprob.as_mut()) {
            (None, _) => *logprob = None,
            (Some(n), Some(lp)) => lp.top.truncate(n),
            (Some(_), None) => {}
        }
    }
}

pub struct Shadow {
    ticket: ShadowTicket,
    prompt: ShadowPrompt,
    /// The live request's prompt tokens: the teacher-forced comparison needs the other version to read the same.
    live_prompt: Vec<u32>,
    params: SamplingParams,
    state: AppState,
    aa: bool,
    /// The logprobs the client asked for (the live request reports more while shadowed).
    pub client_logprobs: Option<usize>,
}

/// How a teacher-forced comparison went.
enum Forcing {
    Done(Forced),
    /// The other version tokenized the prompt differently: the live tokens mean something else to it.
    Incomparable,
    Skipped,
}

impl Shadow {
    pub fn new(
        ticket: ShadowTicket,
        prompt: ShadowPrompt,
        live_prompt: Vec<u32>,
        params: SamplingParams,
        state: AppState,
        client_logprobs: Option<usize>,
    ) -> Self {
        let aa = rand::random::<f64>() < AA_SHARE;
        Shadow { ticket, prompt, live_prompt, params, state, aa, client_logprobs }
    }

    /// Runs both comparisons on the other version and records them with the rollout.
    pub async fn run(self, live: LiveAnswer) {
        let Shadow { ticket, prompt, live_prompt, params, state, aa, .. } = self;
        let run = ticket.run().clone();
        let arm = if aa { Arm::Baseline } else { Arm::Canary };
        let Some(target) = run.split.resident(arm) else { return };
        let lease = target.lease();
        let Some(engine) = lease.engine() else { return };
        let work = async {
            let tokens = match prompt {
                ShadowPrompt::Chat(m) => prompt::chat_tokens(&state, engine, m, None).await,
                ShadowPrompt::Completion(p) => prompt::completion_tokens(&state, engine, p).await,
            }
            .ok()?;
            let forced = forced(engine, &tokens, &live_prompt, &live).await;
            Some((forced, generate(engine, tokens, params).await))
        };
        let outcome = tokio::time::timeout(SHADOW_TIMEOUT, work).await;
        state.metrics.rollout.shadow_requests.with_label_values(&[if aa { "aa" } else { "canary" }]).inc();
        match outcome {
            Ok(Some((forced, generated))) => {
                match forced {
                    Forcing::Done(f) => run.record_forced(aa, Some(f)),
                    Forcing::Incomparable => run.record_forced(aa, None),
                    Forcing::Skipped => {}
                }
                match generated {
                    Some((text, timing)) => run.record_shadow(aa, text == live.text, timing),
                    // The other version failed what the live version answered: a disagreement.
                    None => run.record_shadow(aa, false, None),
                }
            }
            // The other version refused the prompt the live version answered.
            Ok(None) => run.record_shadow(aa, false, None),
            Err(_) => {}
        }
    }
}

/// The other version scores the live answer's first tokens (up to `score::MAX_SCORED`) in one prefill.
async fn forced(engine: &Engine, tokens: &[u32], live_prompt: &[u32], live: &LiveAnswer) -> Forcing {
    if tokens != live_prompt {
        return Forcing::Incomparable;
    }
    let m = live.logprobs.len().min(live.ids.len()).min(score::MAX_SCORED);
    let (Some(ids), Some(reports)) = (live.ids.get(..m), live.logprobs.get(..m)) else { return Forcing::Skipped };
    if m == 0 {
        return Forcing::Skipped;
    }
    let all: Vec<u32> = tokens.iter().chain(ids).copied().collect();
    let ask = reports.iter().map(|r| r.top.iter().map(|t| t.0).collect()).collect();
    let Ok(mut rx) = engine.submit_score(all, tokens.len(), ask) else { return Forcing::Skipped };
    let mut scores = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Scored(s) => scores = Some(s),
            Event::Done { .. } | Event::Error(_) => break,
            Event::Token { .. } => {}
        }
    }
    match scores.and_then(|s| teacher::compare(reports, &s)) {
        Some(f) => Forcing::Done(f),
        None => Forcing::Skipped,
    }
}

/// The other version answers the same prompt: its text and mean (TTFT, ITL), or None if it failed.
async fn generate(engine: &Engine, tokens: Vec<u32>, params: SamplingParams) -> Option<(String, Option<(f64, f64)>)> {
    let mut rx = engine.submit_internal(tokens, params).ok()?;
    let mut t = Timing::new(Instant::now());
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { id, text: piece, .. } => {
                t.token(id);
                text.push_str(&piece);
            }
            Event::Done { .. } => return Some((text, t.means())),
            Event::Error(_) => return None,
            Event::Scored(_) => {}
        }
    }
    None
}

/// Arrival, first token and gaps of one answer.
pub struct Timing {
    arrived: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    gaps: Vec<f64>,
    tokens: Vec<u32>,
}

impl Timing {
    pub fn new(arrived: Instant) -> Self {
        Timing { arrived, first: None, last: None, gaps: vec![], tokens: vec![] }
    }

    pub fn token(&mut self, id: u32) {
        let now = Instant::now();
        if let Some(l) = self.last {
            self.gaps.push((now - l).as_secs_f64());
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.tokens.push(id);
    }

    pub fn answer(&mut self, empty: bool, reason: FinishReason) -> Answer {
        Answer {
            ttft_s: self.first.map(|f| (f - self.arrived).as_secs_f64()).unwrap_or(0.0),
            itl_s: std::mem::take(&mut self.gaps),
            e2e_s: self.arrived.elapsed().as_secs_f64(),
            tokens: std::mem::take(&mut self.tokens),
            empty,
            length: reason == FinishReason::Length,
        }
    }

    pub fn means(&self) -> Option<(f64, f64)> {
        let ttft = (self.first? - self.arrived).as_secs_f64();
        let itl = if self.gaps.is_empty() { 0.0 } else { self.gaps.iter().sum::<f64>() / self.gaps.len() as f64 };
        Some((ttft, itl))
    }
}
