//! Liveness (the process answers), readiness (a model is loaded and warmed) and Prometheus metrics.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

/// 200 while the process serves and its lifecycle controller runs; 503 once the controller has stopped (the
/// process is then on its way out, exiting non-zero).
pub async fn live(State(state): State<AppState>) -> axum::response::Response {
    if state.control.alive() {
        return Json(json!({"status": "ok"})).into_response();
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "controller_stopped"}))).into_response()
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(why) = state.control.ready_hold() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", why).with_code("not_ready"));
    }
    let live = state.router.peek().ok_or_else(ApiError::not_ready)?;
    let model = state.router.served_name().unwrap_or(&live.identity.name).to_string();
    Ok(Json(json!({"status": "ready", "model": model, "slot": live.slot, "version": live.identity.version})))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
