//! GET /ui/stream: the dashboard's live feed (server-sent events). One `state` event a second, and one at once
//! whenever the audit log records something (a load's progress, a flip, a rollback), so the page is never more
//! than about a second behind. Each event holds the whole picture that is cheap to send again (slots, memory,
//! the latest rollout, the fleet) and only what is new of the rest (traffic points, audit events); the first
//! holds the kept history of both. The stream ends when the server starts shutting down or the caller's session
//! ends (sign-out, expiry); at most MAX_FEEDS stream at once (503 past that).

#![deny(clippy::indexing_slicing)]

use super::super::admin_state::AdminState;
use super::super::error::ApiError;
use super::auth::{still_signed_in, Caller};
use crate::lifecycle::audit::AuditEvent;
use crate::net::shutdown::Phase;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Live feeds at once, over all callers (the admin listener has 64 connections in all).
pub const MAX_FEEDS: usize = 16;
/// Audit events the first state event carries.
const FIRST_EVENTS: usize = 200;
/// Most audit events one later state event carries (a page that fell further behind reloads them).
const MAX_EVENTS: usize = 500;

/// Where a stream has got to: the last audit event and traffic point it sent.
struct Cursor {
    seq: u64,
    point: u64,
    first: bool,
}

fn error_json(e: impl std::fmt::Display) -> Value {
    json!({"error": e.to_string()})
}

/// One state event's data.
async fn snapshot(s: &AdminState, role: &str, cur: &mut Cursor) -> Value {
    let status = s.lifecycle.status().await.map(|v| json!(v)).unwrap_or_else(error_json);
    let memory = s.lifecycle.memory().await.map(|v| json!(v)).unwrap_or_else(error_json);
    let rollout = s.rollouts.get("current").map(|run| json!(crate::rollout::report::view(&run)));
    let fleet = match &s.fleet {
        Some(f) => Some(f.view().await.map(|v| json!(v)).unwrap_or_else(error_json)),
        None => None,
    };
    let events: Vec<AuditEvent> =
        if cur.first { s.lifecycle.audit.latest(FIRST_EVENTS) } else { s.lifecycle.audit.since(cur.seq, MAX_EVENTS) };
    if let Some(last) = events.last() {
        cur.seq = last.seq;
    }
    let traffic = s.traffic.since(cur.point);
    if let Some(last) = traffic.last() {
        cur.point = last.seq;
    }
    let first = std::mem::replace(&mut cur.first, false);
    json!({
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "first": first,
        "role": role,
        "status": status,
        "memory": memory,
        "rollout": rollout,
        "fleet": fleet,
        "traffic": traffic,
        "events": events,
    })
}

pub async fn stream(State(s): State<AdminState>, Extension(caller): Extension<Caller>) -> Response {
    let Ok(place) = s.feeds.clone().try_acquire_owned() else {
        return ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            format!("{MAX_FEEDS} dashboard feeds are open already; close one"),
        )
        .into_response();
    };
    let mut rx = s.lifecycle.audit.subscribe();
    let shutdown = s.shutdown.clone();
    let role = caller.role.as_str();
    let stream = async_stream::stream! {
        let _place = place;
        let mut cur = Cursor { seq: 0, point: 0, first: true };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while still_signed_in(&s, &caller) {
            let data = snapshot(&s, role, &mut cur).await;
            yield Ok::<_, Infallible>(SseEvent::default().event("state").data(data.to_string()));
            tokio::select! {
                _ = tick.tick() => {}
                got = rx.recv() => {
                    if matches!(got, Err(RecvError::Closed)) {
                        break;
                    }
                    // A burst of events (a load's stages) makes one update, not one each.
                    while !matches!(rx.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
                    tick.reset();
                }
                _ = shutdown.reached(Phase::Draining) => break,
            }
        }
    };
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
