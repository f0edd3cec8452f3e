//! The public HTTP API: OpenAI-compatible routes (openai.rs, embeddings.rs), KServe v2 for image classifiers
//! (kserve.rs), health and metrics; and, on its own listener, the
//! admin API (admin.rs) and the operator's dashboard (dashboard/). `router()` and `admin::router()` build the axum Routers that `server::run` serves.
//! Every generation request leases the live slot once (router.rs); every response names the slot and version
//! that served it in `x-teal-slot` / `x-teal-model-version`.

#![deny(clippy::indexing_slicing)]

pub mod admin;
mod admin_state;
pub mod body;
mod chat_shape;
mod choices;
pub mod dashboard;
mod embeddings;
pub mod error;
mod fleet_admin;
mod generate;
mod health;
mod kserve;
pub mod limits;
mod openai;
pub mod openai_types;
mod prompt;
mod rollout_admin;
mod rollout_tap;
pub mod sessions;
mod shadow;
mod structured;
mod tool_stream;
mod tools;
mod unsupported;

use crate::lifecycle::ControllerHealth;
use crate::net::shutdown::ShutdownSignal;
use crate::router::{LiveRouter, SlotLease};
use crate::telemetry::Metrics;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use body::BodyRules;
pub use body::JsonBody;
use error::ApiError;
use limits::{CpuPool, RequestLimits};
use std::sync::Arc;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The live slot; empty until a model is loaded, warmed and gated (requests get 503 until then).
    pub router: Arc<LiveRouter>,
    pub metrics: Metrics,
    /// The running rollout (if any) hears every generation request's outcome; None for an API without a
    /// lifecycle (tests of the HTTP layer alone).
    pub rollouts: Option<crate::rollout::Rollouts>,
    /// Where chat sessions live (memory by default, or Redis).
    pub sessions: Arc<dyn crate::sessions::SessionStore>,
    /// Serve without history (with a warning header) when the session store fails, instead of 503.
    pub session_fail_open: bool,
    /// Largest stored history plus new messages, in bytes (413 past it).
    pub max_session_bytes: usize,
    /// What one request may cost (bodies, prompts, stop lists, images).
    pub limits: Arc<RequestLimits>,
    /// Where tokenizing, chat templates and image decoding run (bounded; 429 when saturated).
    pub cpu: Arc<CpuPool>,
    /// Whether the lifecycle controller runs (/health/live answers 503 when it stopped).
    pub control: Arc<ControllerHealth>,
    /// Streams end with an error event at the shutdown deadline.
    pub shutdown: ShutdownSignal,
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

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let mut req = req;
    req.extensions_mut()
        .insert(BodyRules { max_bytes: state.limits.max_body_bytes, timeout: state.limits.body_timeout });
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

/// 404 and 405 in the protocol's own shape: `{"error": "..."}` under /v2, OpenAI's elsewhere.
fn route_error(path: &str, status: axum::http::StatusCode, message: &str) -> Response {
    if path == "/v2" || path.starts_with("/v2/") {
        return (status, axum::Json(serde_json::json!({"error": message}))).into_response();
    }
    let code = if status == axum::http::StatusCode::METHOD_NOT_ALLOWED { "method_not_allowed" } else { "not_found" };
    ApiError::new(status, "invalid_request_error", message).with_code(code).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    route_error(uri.path(), axum::http::StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let msg = format!("{method} is not allowed on {}", uri.path());
    route_error(uri.path(), axum::http::StatusCode::METHOD_NOT_ALLOWED, &msg)
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
        .route("/v1/sessions", post(sessions::create))
        .route("/v1/sessions/{id}", get(sessions::get).delete(sessions::delete))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::from_fn(body::json_errors))
        .layer(middleware::from_fn(body::request_id))
        .with_state(state)
}
