//! Sessions in the API: which session a chat request continues (`x-teal-session` header or `session_id`; with
//! `"session": true` and no id the server makes one), the stored history in front of the new messages, the turn
//! stored before the reply is acknowledged, and GET / DELETE /v1/sessions/{id}.
//!
//! A store failure fails closed (503) by default; with `--session-fail-open` the request is served without
//! history and carries `x-teal-session-warning`. Both are counted in teal_session_store_errors_total.

use super::error::ApiError;
use super::AppState;
use crate::models::chat_template::ChatMessage;
use crate::router::SlotLease;
use crate::sessions::{self, Session, StoreError, StoredMessage};
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
}

impl ActiveSession {
    /// What storing the turn needs (the id and whether the store is degraded), without the history.
    pub fn clone_for_store(&self) -> ActiveSession {
        ActiveSession { id: self.id.clone(), history: vec![], degraded: self.degraded.clone() }
    }

    pub fn history_messages(&self) -> Vec<ChatMessage> {
        self.history.iter().map(|m| ChatMessage { role: m.role.clone(), content: m.content.clone() }).collect()
    }

    /// The session headers of the response.
    pub fn stamp(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            h.insert("x-teal-session", v);
        }
        if let Some(w) = &self.degraded {
            if let Ok(v) = HeaderValue::from_str(&format!("served without session history: {w}")) {
                h.insert("x-teal-session-warning", v);
            }
        }
    }
}

fn store_error(state: &AppState, op: &str, e: &StoreError) -> ApiError {
    state.metrics.session_errors.with_label_values(&[op]).inc();
    tracing::warn!(op, error = %e, "session store error");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        format!("{e}; the session cannot be used now"),
    )
    .with_code("session_store_unavailable")
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

/// Loads the history of the requested session.
pub async fn open(state: &AppState, id: String, new: bool) -> Result<ActiveSession, ApiError> {
    if new {
        return Ok(ActiveSession { id, history: vec![], degraded: None });
    }
    match state.sessions.get(&id).await {
        Ok(s) => {
            let history = s.map(|s| s.messages).unwrap_or_default();
            Ok(ActiveSession { id, history, degraded: None })
        }
        Err(e) if state.session_fail_open => {
            let _ = store_error(state, "get", &e);
            state.metrics.sessions_degraded.inc();
            Ok(ActiveSession { id, history: vec![], degraded: Some(e.to_string()) })
        }
        Err(e) => Err(store_error(state, "get", &e)),
    }
}

/// 413 when the stored history plus the new messages exceed the limit.
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

/// Stores the turn (the request's messages and the reply). Called before the reply is acknowledged.
pub async fn store_turn(
    state: &AppState,
    session: &ActiveSession,
    new: &[ChatMessage],
    reply: &str,
    served: &SlotLease,
) -> Result<(), ApiError> {
    let at = sessions::now_ms();
    let mut turn: Vec<StoredMessage> = new
        .iter()
        .map(|m| StoredMessage {
            role: m.role.clone(),
            content: m.content.clone(),
            model: None,
            version: None,
            slot: None,
            at,
        })
        .collect();
    turn.push(StoredMessage {
        role: "assistant".into(),
        content: reply.to_string(),
        model: Some(served.identity.name.clone()),
        version: Some(served.identity.version.clone()),
        slot: Some(served.slot.as_str().into()),
        at,
    });
    match state.sessions.append(&session.id, turn).await {
        Ok(()) => {
            state.router.touch_session(&session.id, served);
            Ok(())
        }
        Err(e) if state.session_fail_open => {
            let _ = store_error(state, "append", &e);
            Ok(())
        }
        Err(e) => Err(store_error(state, "append", &e)),
    }
}

fn checked(id: &str) -> Result<(), ApiError> {
    if sessions::valid_id(id) {
        Ok(())
    } else {
        Err(bad_id())
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no session {id}"))
        .with_code("session_not_found")
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
