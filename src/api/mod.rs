//! The public HTTP API: OpenAI-compatible routes (openai.rs), health and metrics. `router()` builds the axum
//! Router that `server::run` serves and tests drive directly.

pub mod error;
mod generate;
mod health;
mod openai;
pub mod openai_types;

use crate::engine::Engine;
use crate::telemetry::Metrics;
use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The serving engine; empty until the model is loaded and warmed (requests get 503 until then).
    pub engine: Arc<ArcSwapOption<Engine>>,
    pub metrics: Metrics,
    /// The name clients use in `model`; defaults to the model's own name.
    pub served_model_name: Option<String>,
    pub max_body_bytes: usize,
    /// Log prompts and messages (off by default: prompts are user data).
    pub log_prompts: bool,
    pub started_at: u64,
}

impl AppState {
    pub fn served_name(&self, engine: &Engine) -> String {
        self.served_model_name.clone().unwrap_or_else(|| engine.model().name.clone())
    }
}

/// A JSON body whose rejections are OpenAI-shaped: 413 past the size limit, 400 for malformed JSON.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or(usize::MAX);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_json(format!("could not read the request body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::bad_json(format!("invalid JSON body: {e}")))
    }
}

/// The body limit in force, so the 413 message can state it.
#[derive(Clone, Copy)]
struct BodyLimit(usize);

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let mut req = req;
    req.extensions_mut().insert(BodyLimit(state.max_body_bytes));
    let resp = next.run(req).await;
    let model = state.engine.load().as_ref().map(|e| state.served_name(e)).unwrap_or_default();
    state.metrics.requests.with_label_values(&[model.as_str(), endpoint.as_str(), resp.status().as_str()]).inc();
    resp
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(health::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}
