//! Generation requests under a rollout: the key their arm is sticky on, the arm a session had earlier in the
//! rollout, the outcome each request reports to the rollout (timed from its arrival, as the client sees it), and
//! shadow traffic: a picked baseline request reports its top log-probabilities (the client sees only those it
//! asked for) and, once its answer is complete, goes to shadow.rs to be compared with the other version.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::shadow::{LiveAnswer, Shadow, ShadowPrompt, Timing};
use super::AppState;
use crate::engine::request::{Event, SamplingParams};
use crate::rollout::run::{Pick, Run};
use crate::rollout::teacher;
use crate::rollout::window::Outcome;
use crate::router::{Arm, RouteKey, Split};
use crate::sessions::StoredMessage;
use axum::http::HeaderMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Longest `user` or `x-teal-route-key` (OpenAI documents `user` as a short end-user id).
pub const MAX_KEY_BYTES: usize = 256;

/// Refuses an over-long `user` or `x-teal-route-key` before anything is done with them (both are hashed on every
/// request of a rollout and stored nowhere, but their cost must be bounded like every other field's).
pub fn check_keys(user: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    if user.is_some_and(|u| u.len() > MAX_KEY_BYTES) {
        return Err(ApiError::invalid("user", format!("user must be at most {MAX_KEY_BYTES} bytes")));
    }
    if headers.get("x-teal-route-key").is_some_and(|v| v.len() > MAX_KEY_BYTES) {
        return Err(ApiError::invalid(
            "x-teal-route-key",
            format!("the x-teal-route-key header must be at most {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

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
        live_prompt: &[u32],
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
        let mirrored = SamplingParams { logprobs: None, ..params.clone() };
        // The teacher-forced comparison needs the live model's top choices at each position; the client gets
        // only the logprobs it asked for.
        let client_logprobs = params.logprobs;
        params.logprobs = Some(client_logprobs.unwrap_or(0).max(teacher::TOP_K));
        Some(Shadow::new(ticket, p, live_prompt.to_vec(), mirrored, state.clone(), client_logprobs))
    }

    /// Forwards the engine's events, timing them, and reports the outcome when the request ends (a client that
    /// goes away is not counted). A finished baseline answer starts its shadow run, if any.
    pub fn tap(&self, mut rx: UnboundedReceiver<Event>, shadow: Option<Shadow>) -> UnboundedReceiver<Event> {
        let (tx, out) = unbounded_channel();
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = Timing::new(me.arrived);
            let mut live = LiveAnswer::default();
            while let Some(mut ev) = rx.recv().await {
                let end = match &mut ev {
                    Event::Token { id, text: piece, logprob } => {
                        t.token(*id);
                        live.push(*id, piece, logprob, shadow.as_ref().map(|s| s.client_logprobs));
                        None
                    }
                    Event::Done { reason, .. } => Some(Outcome::Answer(t.answer(live.text.is_empty(), *reason))),
                    Event::Error(e) => Some(Outcome::ServerError { nonfinite: e.contains("NaN or infinite") }),
                    Event::Scored(_) => None,
                };
                if tx.send(ev).is_err() {
                    return;
                }
                if let Some(o) = end {
                    me.run.observe(me.arm, &o);
                    if let (Some(s), Outcome::Answer(_)) = (shadow, &o) {
                        tokio::spawn(s.run(live));
                    }
                    return;
                }
            }
            me.run.observe(me.arm, &Outcome::ServerError { nonfinite: false });
        });
        out
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
