//! The admin API, served on its own listener (loopback by default). Every route needs the operator token (or,
//! to look only, the viewer token) as `Authorization: Bearer <token>` or a dashboard session (dashboard/auth.rs
//! decides who may do what). Handlers only translate HTTP to lifecycle commands and back; the lifecycle
//! controller decides everything.

#![deny(clippy::indexing_slicing)]

use super::dashboard::auth::{still_signed_in, Caller};
use super::error::ApiError;
use super::JsonBody;
use crate::lifecycle::{AdminError, FlipRequest, LoadRequest};
use crate::net::shutdown::Phase;
use crate::slot::SlotName;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Instant;

pub use super::admin_state::AdminState;

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let (status, kind) = match &e {
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::GateFailed(_) => (StatusCode::CONFLICT, "gate_failed"),
            AdminError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            AdminError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            AdminError::InsufficientMemory(_) => (StatusCode::CONFLICT, "insufficient_memory"),
            AdminError::Parked(_) => (StatusCode::CONFLICT, "conflict"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

fn slot(name: &str) -> Result<SlotName, ApiError> {
    SlotName::parse(name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no slot {name:?}; use blue or green"))
    })
}

async fn slots(State(s): State<AdminState>) -> Result<Json<crate::lifecycle::Status>, ApiError> {
    Ok(Json(s.lifecycle.status().await?))
}

async fn load(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<LoadRequest>,
) -> Result<Response, ApiError> {
    Ok(accepted(s.lifecycle.load(slot(&name)?, req, false, false).await?))
}

/// 202 with the operation and its Location, as for loads.
fn accepted(op: crate::lifecycle::Operation) -> Response {
    let location = format!("/admin/operations/{}", op.id);
    let mut resp = (StatusCode::ACCEPTED, Json(json!({"operation": op}))).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn park(State(s): State<AdminState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(accepted(s.lifecycle.park(slot(&name)?).await?))
}

async fn wake(State(s): State<AdminState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(accepted(s.lifecycle.wake(slot(&name)?).await?))
}

async fn memory(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.lifecycle.memory().await?)))
}

async fn unload(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<crate::lifecycle::Unloaded>, ApiError> {
    Ok(Json(s.lifecycle.unload(slot(&name)?).await?))
}

async fn operation(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<crate::lifecycle::Operation>, ApiError> {
    match s.lifecycle.operation(id.clone()).await? {
        Some(op) => Ok(Json(op)),
        None => Err(AdminError::NotFound(format!("no operation {id}")).into()),
    }
}

async fn cancel(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.lifecycle.cancel(id).await?)))
}

/// POST /admin/flip; an empty body flips to the standby. In fleet mode every replica flips (unless
/// `"fleet": false`).
async fn flip(State(s): State<AdminState>, req: Request) -> Result<Json<Value>, ApiError> {
    let mut body = super::fleet_admin::read_body(req).await?;
    if let Some(fleet) = super::fleet_admin::fleet_of(&s, &mut body)? {
        return super::fleet_admin::flip(&fleet, body, false).await;
    }
    let req: FlipRequest =
        serde_json::from_value(body).map_err(|e| ApiError::bad_json(format!("invalid flip request: {e}")))?;
    let t0 = Instant::now();
    let out = s.lifecycle.flip(req).await?;
    Ok(Json(json!({"flip": out, "flip_us": t0.elapsed().as_secs_f64() * 1e6})))
}

/// POST /admin/rollback; in fleet mode every replica rolls back (unless `"fleet": false`).
async fn rollback(State(s): State<AdminState>, req: Request) -> Result<Json<Value>, ApiError> {
    let mut body = super::fleet_admin::read_body(req).await?;
    if let Some(fleet) = super::fleet_admin::fleet_of(&s, &mut body)? {
        return super::fleet_admin::flip(&fleet, body, true).await;
    }
    if body.as_object().is_some_and(|o| !o.is_empty()) {
        return Err(ApiError::invalid("body", "a rollback takes no settings (only \"fleet\")"));
    }
    let t0 = Instant::now();
    let out = s.lifecycle.rollback().await?;
    Ok(Json(json!({"flip": out, "flip_us": t0.elapsed().as_secs_f64() * 1e6})))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    follow: bool,
    /// Only events with a larger sequence number.
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn events(
    State(s): State<AdminState>,
    caller: Option<axum::Extension<Caller>>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return ApiError::invalid("query", "expected ?follow=true|false&after=N&limit=N").into_response();
    };
    let audit = s.lifecycle.audit.clone();
    if !q.follow {
        return Json(json!({"events": audit.since(q.after, q.limit.unwrap_or(1000).min(10_000))})).into_response();
    }
    // Subscribe before reading the backlog so nothing recorded in between is missed (duplicates are skipped).
    let mut rx = audit.subscribe();
    let backlog = audit.since(q.after, usize::MAX);
    let shutdown = s.shutdown.clone();
    let stream = async_stream::stream! {
        let mut last = q.after;
        // A follower signed in with a dashboard session stops when the session ends.
        let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
        for ev in backlog {
            last = ev.seq;
            yield Ok::<_, Infallible>(SseEvent::default().id(ev.seq.to_string()).data(json!(ev).to_string()));
        }
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = check.tick() => {
                    if caller.as_ref().is_some_and(|c| !still_signed_in(&s, &c.0)) {
                        break;
                    }
                    continue;
                }
                // Followers never end on their own: close them as soon as the server starts shutting down.
                _ = shutdown.reached(Phase::Draining) => break,
            };
            match next {
                Ok(ev) if ev.seq > last => {
                    last = ev.seq;
                    yield Ok(SseEvent::default().id(ev.seq.to_string()).data(json!(ev).to_string()));
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    yield Ok(SseEvent::default().comment(format!("{n} events skipped; reconnect with ?after={last}")));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin route")
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Admin bodies: 1 MiB, 30 s.
async fn body_rules(mut req: Request, next: Next) -> Response {
    let rules = super::body::BodyRules { max_bytes: 1 << 20, timeout: std::time::Duration::from_secs(30) };
    req.extensions_mut().insert(rules);
    next.run(req).await
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/slots", get(slots))
        .route("/admin/slots/{slot}", axum::routing::delete(unload))
        .route("/admin/slots/{slot}/load", post(load))
        .route("/admin/slots/{slot}/park", post(park))
        .route("/admin/slots/{slot}/wake", post(wake))
        .route("/admin/memory", get(memory))
        .route("/admin/operations/{id}", get(operation))
        .route("/admin/operations/{id}/cancel", post(cancel))
        .route("/admin/flip", post(flip))
        .route("/admin/rollback", post(rollback))
        .route("/admin/events", get(events))
        .route("/admin/fleet", get(super::fleet_admin::view))
        .route("/admin/rollouts", post(super::rollout_admin::start))
        .route("/admin/rollouts/{id}", get(super::rollout_admin::get))
        .route("/admin/rollouts/{id}/report", get(super::rollout_admin::report))
        .route("/admin/rollouts/{id}/{action}", post(super::rollout_admin::command))
        .merge(super::dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(body_rules))
        .layer(middleware::from_fn_with_state(state.clone(), super::dashboard::auth::authorize))
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(middleware::from_fn(super::body::json_errors))
        .layer(middleware::from_fn(super::body::request_id))
        .with_state(state)
}
