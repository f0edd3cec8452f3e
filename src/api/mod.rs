//! The public HTTP API: OpenAI-compatible routes (openai.rs, embeddings.rs), KServe v2 for image classifiers
//! (kserve.rs), health and metrics; and, on its own listener, the
//! admin API (admin.rs). `router()` and `admin::router()` build the axum Routers that `server::run` serves.
//! Every generation request leases the live slot once (router.rs); every response names the slot and version
//! that served it in `x-teal-slot` / `x-teal-model-version`.

pub mod admin;
mod embeddings;
pub mod error;
mod generate;
mod health;
mod kserve;
mod openai;
pub mod openai_types;
pub mod sessions;

use crate::router::{LiveRouter, SlotLease};
use crate::telemetry::Metrics;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::HeaderValue;
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
    /// The live slot; empty until a model is loaded, warmed and gated (requests get 503 until then).
    pub router: Arc<LiveRouter>,
    pub metrics: Metrics,
    /// Where chat sessions live (memory by default, or Redis).
    pub sessions: Arc<dyn crate::sessions::SessionStore>,
    /// Serve without history (with a warning header) when the session store fails, instead of 503.
    pub session_fail_open: bool,
    /// Largest stored history plus new messages, in bytes (413 past it).
    pub max_session_bytes: usize,
    pub max_body_bytes: usize,
    /// Largest image (width x height) the classification route decodes.
    pub max_image_pixels: u64,
    /// Log prompts and messages (off by default: prompts are user data).
    pub log_prompts: bool,
    pub started_at: u64,
}

impl AppState {
    /// The model name responses carry: the served name, which stays the same across flips.
    pub fn served_name(&self, lease: &SlotLease) -> String {
        self.router.served_name().map(String::from).unwrap_or_else(|| lease.identity.name.clone())
    }
}

/// Which slot and version answered a request; handlers put it in the response's extensions and the middleware
/// turns it into headers and metric labels.
#[derive(Clone)]
pub struct ServedBy {
    slot: &'static str,
    version: String,
    model: String,
}

impl ServedBy {
    pub fn of(lease: &SlotLease) -> Self {
        ServedBy {
            slot: lease.slot.as_str(),
            version: lease.identity.version.clone(),
            model: lease.identity.name.clone(),
        }
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
    let mut resp = next.run(req).await;
    // Routes that did not lease a slot (errors, health, model list) name the slot live now.
    let served = resp.extensions().get::<ServedBy>().cloned().or_else(|| {
        state.router.peek().map(|r| ServedBy {
            slot: r.slot.as_str(),
            version: r.identity.version.clone(),
            model: r.identity.name.clone(),
        })
    });
    let (model, slot) = match &served {
        Some(s) => {
            let h = resp.headers_mut();
            h.insert("x-teal-slot", HeaderValue::from_static(s.slot));
            if let Ok(v) = HeaderValue::from_str(&s.version) {
                h.insert("x-teal-model-version", v);
            }
            (s.model.as_str(), s.slot)
        }
        None => ("", ""),
    };
    state.metrics.requests.with_label_values(&[model, slot, endpoint.as_str(), resp.status().as_str()]).inc();
    resp
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/health/live", get(kserve::server_live))
        .route("/v2/health/ready", get(kserve::server_ready))
        .route("/v2/models/{name}", get(kserve::model_metadata))
        .route("/v2/models/{name}/ready", get(kserve::model_ready))
        .route("/v2/models/{name}/infer", post(kserve::infer))
        .route("/v2/models/{name}/versions/{version}", get(kserve::version_metadata))
        .route("/v2/models/{name}/versions/{version}/infer", post(kserve::version_infer))
        .route("/v1/sessions/{id}", get(sessions::get).delete(sessions::delete))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(health::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .with_state(state)
}
