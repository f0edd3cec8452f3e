//! The only place errors become HTTP responses: OpenAI's shape `{"error": {"message", "type", "param",
//! "code"}}` with a precise status. Internal details are logged, never sent.

#![deny(clippy::indexing_slicing)]

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    /// 400 for a parameter the client got wrong.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_code("invalid_json")
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message).with_code("overloaded")
    }

    pub fn not_ready() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "the model is not loaded and warmed yet")
            .with_code("not_ready")
    }

    pub fn model_not_found(name: &str) -> Self {
        ApiError {
            param: Some("model"),
            code: Some("model_not_found"),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("The model `{name}` does not exist."))
        }
    }

    /// 400: the served model is of a kind this route does not serve (an embedding model on chat, an LLM on
    /// /v1/embeddings).
    pub fn wrong_kind(name: &str, kind: crate::slot::ModelKind, route: &str) -> Self {
        ApiError {
            param: Some("model"),
            code: Some("wrong_model_kind"),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("The model `{name}` is a {kind} model and is not served by {route}."),
            )
        }
    }

    /// 500 with a generic message; the cause goes to the log only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal server error")
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<crate::engine::SubmitError> for ApiError {
    fn from(e: crate::engine::SubmitError) -> Self {
        match e {
            crate::engine::SubmitError::QueueFull(_) => ApiError::overloaded(format!("server overloaded: {e}")),
            crate::engine::SubmitError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "the server is shutting down")
            }
            crate::engine::SubmitError::TooLong { .. } => {
                ApiError { code: Some("context_length_exceeded"), ..ApiError::invalid("messages", e.to_string()) }
            }
            crate::engine::SubmitError::Invalid(m) => ApiError::internal(m),
        }
    }
}

impl From<crate::error::TealError> for ApiError {
    fn from(e: crate::error::TealError) -> Self {
        use crate::error::TealError::*;
        match e {
            Template(m) => ApiError::invalid("messages", format!("the chat template rejected the messages: {m}")),
            Tokenizer(m) => ApiError::invalid("prompt", format!("the prompt could not be tokenized: {m}")),
            other => ApiError::internal(other),
        }
    }
}
