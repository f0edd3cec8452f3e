//! Generation requests under a rollout: the key their arm is sticky on, the arm a session had earlier in the
//! rollout, the outcome each request reports to the rollout (timed from its arrival, as the client sees it), and
//! shadow traffic: a picked baseline request is run again on the canary (or, for the A/A reference, on the live
//! version itself) with the same prompt, parameters and seed, after the live answer is complete; the answers are
//! compared and the mirrored one is never sent to anyone nor stored in a session.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::openai_types::Prompt;
use super::{prompt, AppState};
use crate::engine::request::{Event, FinishReason, SamplingParams};
use crate::models::chat_template::ChatMessage;
use crate::rollout::run::{Pick, Run, ShadowTicket};
use crate::rollout::window::{Answer, Outcome};
use crate::router::{Arm, RouteKey, Split};
use crate::sessions::StoredMessage;
use axum::http::HeaderMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Longest a mirrored request may run.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(120);
/// Share of mirrored requests that go to the live version itself (the A/A reference). Half: the two versions then
/// carry the same extra load, so mirroring does not bias the latency comparison against the canary.
const AA_SHARE: f64 = 0.5;

/// The split's key: the session id, else the OpenAI `user`, else `x-teal-route-key`.
pub fn route_key<'a>(session: Option<&'a str>, user: Option<&'a str>, headers: &'a HeaderMap) -> RouteKey<'a> {
    let header = headers.get("x-teal-route-key").and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty());
    match session.or(user.filter(|u| !u.is_empty())).or(header) {
        Some(k) => RouteKey::Key(k),
        None => RouteKey::None,
    }
}

/// The tag a session's reply carries: which rollout and arm wrote it.
pub fn tag(rollout_id: &str, arm: Arm) -> String {
    format!("{rollout_id}:{}", arm.as_str())
}

/// The arm this session was served by earlier in the split's rollout (its latest tagged reply).
pub fn sticky(history: &[StoredMessage], rollout_id: &str) -> Option<Arm> {
    let prefix = format!("{rollout_id}:");
    let last = history.iter().rev().find_map(|m| m.rollout.as_deref().and_then(|t| t.strip_prefix(&prefix)))?;
    match last {
        "canary" => Some(Arm::Canary),
        "baseline" => Some(Arm::Baseline),
        _ => None,
    }
}

/// A request that reports to a rollout.
#[derive(Clone)]
pub struct Observed {
    run: Arc<Run>,
    arm: Arm,
    arrived: Instant,
}

impl Observed {
    /// The observer of a request the split routed, if its rollout still runs.
    pub fn of(state: &AppState, routed: Option<&(Arc<Split>, Arm)>, arrived: Instant) -> Option<Observed> {
        let (split, arm) = routed?;
        let run = state.rollouts.as_ref()?.of_split(split)?;
        Some(Observed { run, arm: *arm, arrived })
    }

    /// A refusal or failure before generation that depends on the model (its context, a server error) counts
    /// against the arm; a malformed request does not.
    pub fn error(&self, e: &ApiError) {
        let outcome = if e.status.is_server_error() {
            Outcome::ServerError { nonfinite: false }
        } else if e.code == Some("context_length_exceeded") {
            Outcome::Refused
        } else {
            return;
        };
        self.run.observe(self.arm, &outcome);
    }

    /// Decides whether to mirror this request (baseline only); seeds a sampled request so that both runs draw
    /// the same tokens.
    pub fn shadow(
        &self,
        state: &AppState,
        queued: usize,
        params: &mut SamplingParams,
        p: ShadowPrompt,
    ) -> Option<Shadow> {
        if self.arm != Arm::Baseline {
            return None;
        }
        let m = state.metrics.rollout.shadow_requests.clone();
        let ticket = match self.run.pick_shadow(queued) {
            Pick::No => return None,
            Pick::Shed => {
                m.with_label_values(&["shed"]).inc();
                return None;
            }
            Pick::Go(t) => t,
        };
        if params.seed.is_none() && params.temperature > 0.0 {
            params.seed = Some(rand::random());
        }
        let aa = rand::random::<f64>() < AA_SHARE;
        Some(Shadow { ticket, prompt: p, params: params.clone(), state: state.clone(), aa })
    }

    /// Forwards the engine's events, timing them, and reports the outcome when the request ends (a client that
    /// goes away is not counted). A finished baseline answer starts its shadow run, if any.
    pub fn tap(&self, mut rx: UnboundedReceiver<Event>, shadow: Option<Shadow>) -> UnboundedReceiver<Event> {
        let (tx, out) = unbounded_channel();
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = Timing::new(me.arrived);
            let mut text = String::new();
            while let Some(ev) = rx.recv().await {
                let end = match &ev {
                    Event::Token { id, text: piece, .. } => {
                        t.token(*id);
                        text.push_str(piece);
                        None
                    }
                    Event::Done { reason, .. } => Some(Outcome::Answer(t.answer(text.is_empty(), *reason))),
                    Event::Error(e) => Some(Outcome::ServerError { nonfinite: e.contains("NaN or infinite") }),
                };
                if tx.send(ev).is_err() {
                    return;
                }
                if let Some(o) = end {
                    me.run.observe(me.arm, &o);
                    if let (Some(s), Outcome::Answer(_)) = (shadow, &o) {
                        tokio::spawn(s.run(text));
                    }
                    return;
                }
            }
            me.run.observe(me.arm, &Outcome::ServerError { nonfinite: false });
        });
        out
    }
}

/// Arrival, first token and gaps of one answer.
struct Timing {
    arrived: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    gaps: Vec<f64>,
    tokens: Vec<u32>,
}

impl Timing {
    fn new(arrived: Instant) -> Self {
        Timing { arrived, first: None, last: None, gaps: vec![], tokens: vec![] }
    }

    fn token(&mut self, id: u32) {
        let now = Instant::now();
        if let Some(l) = self.last {
            self.gaps.push((now - l).as_secs_f64());
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.tokens.push(id);
    }

    fn answer(&mut self, empty: bool, reason: FinishReason) -> Answer {
        Answer {
            ttft_s: self.first.map(|f| (f - self.arrived).as_secs_f64()).unwrap_or(0.0),
            itl_s: std::mem::take(&mut self.gaps),
            e2e_s: self.arrived.elapsed().as_secs_f64(),
            tokens: std::mem::take(&mut self.tokens),
            empty,
            length: reason == FinishReason::Length,
        }
    }

    fn means(&self) -> Option<(f64, f64)> {
        let ttft = (self.first? - self.arrived).as_secs_f64();
        let itl = if self.gaps.is_empty() { 0.0 } else { self.gaps.iter().sum::<f64>() / self.gaps.len() as f64 };
        Some((ttft, itl))
    }
}

/// What a mirrored request replays: the chat messages or the completion prompt (tokenized again for the model
/// that runs it).
pub enum ShadowPrompt {
    Chat(Vec<ChatMessage>),
    Completion(Prompt),
}

pub struct Shadow {
    ticket: ShadowTicket,
    prompt: ShadowPrompt,
    params: SamplingParams,
    state: AppState,
    aa: bool,
}

impl Shadow {
    /// Runs the mirrored request and records whether its text equals the live answer's.
    async fn run(self, live_text: String) {
        let run = self.ticket.run().clone();
        let target = if self.aa { run.split.baseline.clone() } else { run.split.canary.clone() };
        let lease = target.lease();
        let Some(engine) = lease.engine() else { return };
        let outcome = tokio::time::timeout(SHADOW_TIMEOUT, async {
            let tokens = match self.prompt {
                ShadowPrompt::Chat(m) => prompt::chat_tokens(&self.state, engine, m).await,
                ShadowPrompt::Completion(p) => prompt::completion_tokens(&self.state, engine, p).await,
            }
            .ok()?;
            let mut rx = engine.submit_internal(tokens, self.params).ok()?;
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
                }
            }
            None
        })
        .await;
        let label = if self.aa { "aa" } else { "canary" };
        self.state.metrics.rollout.shadow_requests.with_label_values(&[label]).inc();
        match outcome {
            Ok(Some((text, timing))) => run.record_shadow(self.aa, text == live_text, timing),
            // The mirror refused or failed what the live version answered: a disagreement.
            Ok(None) => run.record_shadow(self.aa, false, None),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(rollout: Option<&str>) -> StoredMessage {
        StoredMessage {
            role: "assistant".into(),
            content: "hi".into(),
            model: None,
            version: None,
            slot: None,
            at: 0,
            request_id: None,
            rollout: rollout.map(String::from),
        }
    }

    #[test]
    fn a_session_keeps_the_arm_its_latest_reply_in_this_rollout_had() {
        let split = "ro-1";
        assert_eq!(sticky(&[], split), None);
        assert_eq!(sticky(&[reply(None), reply(Some("ro-1:canary"))], split), Some(Arm::Canary));
        assert_eq!(sticky(&[reply(Some("ro-1:canary")), reply(Some("ro-1:baseline"))], split), Some(Arm::Baseline));
        assert_eq!(sticky(&[reply(Some("ro-0:canary"))], split), None, "another rollout's tag");
        assert_eq!(tag(split, Arm::Canary), "ro-1:canary");
    }
}
