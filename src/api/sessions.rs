//! Sessions in the API: which session a chat request continues (`x-teal-session` header or `session_id`; with
//! `"session": true` and no id the server makes one), the stored history in front of the new messages, the turn
//! stored before the reply is acknowledged, and GET / DELETE /v1/sessions/{id}.
//!
//! A session id the store does not hold is a 404 `session_not_found`: sessions are created by `POST
//! /v1/sessions` or `"session": true`, so an expired or evicted conversation is never continued as if new. A
//! request retried with the same `x-request-id` gets the stored reply again (`x-teal-session-replayed`) and is
//! stored once.
//!
//! A store failure fails closed (503) by default; with `--session-fail-open` the request is served without
//! history and says so: the `x-teal-session-warning` header and, when streaming, a chunk with empty `choices`
//! and `teal.session_warning` before `[DONE]` (also when only storing the turn failed). Both are counted in
//! teal_session_store_errors_total.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::AppState;
use crate::models::chat_template::ChatMessage;
use crate::router::SlotLease;
use crate::sessions::{self, Appended, Session, StoreError, StoredMessage, Turn};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The session a request continues.
pub struct ActiveSession {
    pub id: String,
    /// Stored messages, oldest first (empty for a new session or when serving without history).
    pub history: Vec<StoredMessage>,
    /// Served without its history because the store failed (fail-open).
    pub degraded: Option<String>,
    /// The request's id: the stored turn carries it, so a retry is recognised.
    pub request_id: Option<String>,
    /// This request id's turn is stored already: its reply, to send again instead of generating.
    pub replay: Option<String>,
}

impl ActiveSession {
    /// What storing the turn needs (the id, the request id and whether the store is degraded).
    pub fn clone_for_store(&self) -> ActiveSession {
        ActiveSession {
            id: self.id.clone(),
            history: vec![],
            degraded: self.degraded.clone(),
            request_id: self.request_id.clone(),
            replay: None,
        }
    }

    pub fn history_messages(&self) -> Vec<ChatMessage> {
        self.history
            .iter()
            .map(|m| ChatMessage { role: m.role.clone(), content: m.content.clone(), ..Default::default() })
            .collect()
    }

    /// The session headers of the response.
    pub fn stamp(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            h.insert("x-teal-session", v);
        }
        if let Some(w) = &self.degraded {
            warn_header(resp, w);
        }
        if self.replay.is_some() {
            resp.headers_mut().insert("x-teal-session-replayed", HeaderValue::from_static("true"));
        }
    }
}

/// Sets `x-teal-session-warning`.
pub fn warn_header(resp: &mut Response, warning: &str) {
    if let Ok(v) = HeaderValue::from_str(warning) {
        resp.headers_mut().insert("x-teal-session-warning", v);
    }
}

const DEGRADED: &str = "served without session history: the session store is unavailable";
const NOT_STORED: &str = "this turn was not stored: the session store is unavailable";

/// 503 (or 429 for a full in-memory store), counted; the store's own error goes to the log only.
fn store_error(state: &AppState, op: &str, e: &StoreError) -> ApiError {
    state.metrics.session_errors.with_label_values(&[op]).inc();
    tracing::warn!(op, error = %e, "session store error");
    match e {
        StoreError::Full(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", e.to_string())
            .with_code("session_store_full"),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the session store is unavailable; the session cannot be used now",
        )
        .with_code("session_store_unavailable"),
    }
}

fn fail_open(state: &AppState, e: &StoreError) -> bool {
    state.session_fail_open && !matches!(e, StoreError::Full(_))
}

fn bad_id() -> ApiError {
    ApiError::invalid("session_id", "session ids are 1 to 128 characters of A-Z, a-z, 0-9, '-' and '_'")
}

/// The session a request names (`x-teal-session` or `session_id`) or asks for (`"session": true`): (id, new).
pub fn requested(
    headers: &HeaderMap,
    body_id: Option<String>,
    create: bool,
) -> Result<Option<(String, bool)>, ApiError> {
    let header_id = headers.get("x-teal-session").map(|v| v.to_str().map(String::from).map_err(|_| bad_id()));
    let id = match (header_id.transpose()?, body_id) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::invalid("session_id", "the x-teal-session header and session_id differ"))
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) if create => return Ok(Some((sessions::new_id(), true))),
        (None, None) => return Ok(None),
    };
    if !sessions::valid_id(&id) {
        return Err(bad_id());
    }
    Ok(Some((id, false)))
}

/// Loads the history of the requested session (creating it first when the request asked for a new one).
pub async fn open(
    state: &AppState,
    id: String,
    new: bool,
    request_id: Option<String>,
) -> Result<ActiveSession, ApiError> {
    let mut active = ActiveSession { id, history: vec![], degraded: None, request_id, replay: None };
    let found = if new {
        state.sessions.create(&active.id).await.map(|_| None)
    } else {
        state.sessions.get(&active.id).await.map(Some)
    };
    match found {
        Ok(None) => {}
        Ok(Some(None)) => return Err(not_found(&active.id)),
        Ok(Some(Some(s))) => active.history = s.messages,
        Err(e) if fail_open(state, &e) => {
            let _ = store_error(state, if new { "create" } else { "get" }, &e);
            state.metrics.sessions_degraded.inc();
            active.degraded = Some(DEGRADED.into());
        }
        Err(e) => return Err(store_error(state, if new { "create" } else { "get" }, &e)),
    }
    if let Some(rid) = &active.request_id {
        active.replay = active
            .history
            .iter()
            .find(|m| m.role == "assistant" && m.request_id.as_deref() == Some(rid))
            .map(|m| m.content.clone());
    }
    Ok(active)
}

/// 413 when the stored history plus the new messages exceed the limit (the store checks again, with the reply,
/// when it appends).
pub fn check_size(state: &AppState, history: &[ChatMessage], new: &[ChatMessage]) -> Result<(), ApiError> {
    let bytes: usize = history.iter().chain(new).map(|m| m.content.len() + m.role.len()).sum();
    if bytes > state.max_session_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the session history is {bytes} bytes, over the limit of {}", state.max_session_bytes),
        )
        .with_code("session_too_large"));
    }
    Ok(())
}

/// Stores the turn (the request's messages and the reply). Called before the reply is acknowledged. Returns the
/// warning the client must see when the request was served in fail-open mode (history or storing lost).
pub async fn store_turn(
    state: &AppState,
    session: &ActiveSession,
    new: &[ChatMessage],
    reply: &str,
    served: &SlotLease,
    rollout: Option<String>,
) -> Result<Option<String>, ApiError> {
    let at = sessions::now_ms();
    let message = |role: String, content: String| StoredMessage {
        role,
        content,
        model: None,
        version: None,
        slot: None,
        at,
        request_id: None,
        rollout: None,
    };
    let mut turn: Vec<StoredMessage> = new.iter().map(|m| message(m.role.clone(), m.content.clone())).collect();
    turn.push(StoredMessage {
        model: Some(served.identity.name.clone()),
        version: Some(served.identity.version.clone()),
        slot: Some(served.slot.as_str().into()),
        request_id: session.request_id.clone(),
        rollout,
        ..message("assistant".into(), reply.to_string())
    });
    let turn = Turn { messages: turn, request_id: session.request_id.as_deref(), max_bytes: state.max_session_bytes };
    match state.sessions.append(&session.id, turn).await {
        Ok(Appended::Stored | Appended::Duplicate) => {
            state.router.touch_session(&session.id, served);
            Ok(session.degraded.clone())
        }
        Ok(Appended::Missing) if session.degraded.is_some() => Ok(session.degraded.clone()),
        Ok(Appended::Missing) => Err(not_found(&session.id)),
        Ok(Appended::TooLarge) => Err(too_large(state.max_session_bytes)),
        Err(e) if fail_open(state, &e) => {
            let _ = store_error(state, "append", &e);
            Ok(Some(session.degraded.clone().unwrap_or_else(|| NOT_STORED.into())))
        }
        Err(e) => Err(store_error(state, "append", &e)),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!("the session history would grow past the limit of {limit} bytes"),
    )
    .with_code("session_too_large")
}

fn checked(id: &str) -> Result<(), ApiError> {
    if sessions::valid_id(id) {
        Ok(())
    } else {
        Err(bad_id())
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "no session {id}: sessions are created by POST /v1/sessions or \"session\": true, and end when they \
             expire, are evicted or are deleted"
        ),
    )
    .with_code("session_not_found")
}

/// POST /v1/sessions: a new session, with the id the body names (`{"id": "..."}`) or a new random one.
pub async fn create(State(state): State<AppState>, req: axum::extract::Request) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Body {
        id: Option<String>,
    }
    let bytes = super::body::read(req, true, true).await?;
    let body: Body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_json(format!("invalid JSON body: {e}")))?
    };
    let id = body.id.unwrap_or_else(sessions::new_id);
    checked(&id)?;
    match state.sessions.create(&id).await {
        Ok(true) => {
            let v = serde_json::json!({"id": id, "object": "session", "created_at": sessions::now_ms() / 1000});
            Ok((StatusCode::CREATED, Json(v)).into_response())
        }
        Ok(false) => Err(ApiError::new(StatusCode::CONFLICT, "invalid_request_error", format!("session {id} exists"))
            .with_code("session_exists")),
        Err(e) => Err(store_error(&state, "create", &e)),
    }
}

/// GET /v1/sessions/{id}
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Session>, ApiError> {
    checked(&id)?;
    match state.sessions.get(&id).await {
        Ok(Some(s)) => Ok(Json(s)),
        Ok(None) => Err(not_found(&id)),
        Err(e) => Err(store_error(&state, "get", &e)),
    }
}

/// DELETE /v1/sessions/{id}
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    checked(&id)?;
    match state.sessions.delete(&id).await {
        Ok(true) => Ok(Json(serde_json::json!({"id": id, "object": "session", "deleted": true})).into_response()),
        Ok(false) => Err(not_found(&id)),
        Err(e) => Err(store_error(&state, "delete", &e)),
    }
}
