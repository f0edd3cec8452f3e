//! Liveness (the process answers), readiness (a model is loaded and warmed) and Prometheus metrics.

use super::error::ApiError;
use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let live = state.router.peek().ok_or_else(ApiError::not_ready)?;
    let model = state.router.served_name().unwrap_or(&live.identity.name).to_string();
    Ok(Json(json!({"status": "ready", "model": model, "slot": live.slot, "version": live.identity.version})))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "no such route").with_code("not_found")
}
