//! Request bodies and request ids, shared by the public and admin routers. A JSON body must say it is JSON
//! (`Content-Type: application/json`, else 415: a web page cannot send that cross-origin without a CORS
//! preflight, which teal never grants), arrive within the body deadline (408) and fit the size limit (413).
//! Every request carries an `x-request-id`: the client's when it is well-formed, else a new one; it is echoed
//! on the response and recorded on every log line of the request.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tracing::Instrument;

/// The body limits in force for a request (inserted by each router's middleware).
#[derive(Clone, Copy, Debug)]
pub struct BodyRules {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// 415
    NotJson,
    /// 413
    TooLarge(usize),
    /// 408
    TooSlow(Duration),
    /// 400
    Unreadable,
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Unreadable => StatusCode::BAD_REQUEST,
        }
    }

    pub fn message(&self) -> String {
        match self {
            BodyError::NotJson => "the request body must be JSON with Content-Type: application/json".into(),
            BodyError::TooLarge(n) => format!("request body is larger than the limit of {n} bytes"),
            BodyError::TooSlow(t) => format!("the request body did not arrive within {} s", t.as_secs_f64()),
            BodyError::Unreadable => "the request body could not be read".into(),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let code = match e {
            BodyError::NotJson => "unsupported_media_type",
            BodyError::TooLarge(_) => "request_too_large",
            BodyError::TooSlow(_) => "request_timeout",
            BodyError::Unreadable => "invalid_body",
        };
        ApiError::new(e.status(), "invalid_request_error", e.message()).with_code(code)
    }
}

/// `application/json`, or any `application/*+json`, with parameters.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let mime = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The whole body under the request's rules; `json` requires a JSON content type (an empty body without one is
/// accepted when `allow_empty`).
pub async fn read(req: Request, json: bool, allow_empty: bool) -> Result<Bytes, BodyError> {
    let rules = req.extensions().get::<BodyRules>().copied();
    let rules = rules.unwrap_or(BodyRules { max_bytes: 1 << 20, timeout: Duration::from_secs(30) });
    let typed = is_json(req.headers());
    // No early refusal on Content-Length: reading up to the limit first lets the client finish sending and see
    // the 413 (closing on unread data makes the kernel reset the connection, and the client sees only that).
    let read = axum::body::to_bytes(req.into_body(), rules.max_bytes);
    let bytes = match tokio::time::timeout(rules.timeout, read).await {
        Err(_) => return Err(BodyError::TooSlow(rules.timeout)),
        Ok(Err(e)) if is_length_limit(&e) => return Err(BodyError::TooLarge(rules.max_bytes)),
        Ok(Err(_)) => return Err(BodyError::Unreadable),
        Ok(Ok(b)) => b,
    };
    if json && !typed && !(allow_empty && bytes.iter().all(u8::is_ascii_whitespace)) {
        return Err(BodyError::NotJson);
    }
    Ok(bytes)
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A JSON body with OpenAI-shaped rejections: 415 without a JSON content type, 413 past the size limit, 408
/// when it arrives too slowly, 400 for malformed JSON.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read(req, true, false).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ApiError::bad_json(format!("invalid JSON body: {e}")))
    }
}

/// Middleware: an error answered in plain text (axum's own rejections: a path or query that does not parse, a
/// missing header) is rewritten into the protocol's JSON error shape, `{"error": "..."}` under /v2 and OpenAI's
/// elsewhere, keeping its status.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let v2 = req.uri().path() == "/v2" || req.uri().path().starts_with("/v2/");
    let resp = next.run(req).await;
    let plain = resp.headers().get(header::CONTENT_TYPE).is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(resp.status().is_client_error() && plain) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message =
        if message.is_empty() { parts.status.canonical_reason().unwrap_or("error").to_string() } else { message };
    let mut out = if v2 {
        axum::response::IntoResponse::into_response((parts.status, axum::Json(serde_json::json!({"error": message}))))
    } else {
        axum::response::IntoResponse::into_response(ApiError::new(parts.status, "invalid_request_error", message))
    };
    for (k, v) in parts.headers.iter().filter(|(k, _)| *k != header::CONTENT_TYPE && *k != header::CONTENT_LENGTH) {
        out.headers_mut().insert(k.clone(), v.clone());
    }
    out
}

/// The request's id (`x-request-id`), in its extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn valid_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Middleware: takes a well-formed `x-request-id` or makes one, runs the request inside a span naming it, and
/// echoes it on the response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let given = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|s| valid_request_id(s));
    let id = given.map(String::from).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ct: Option<&str>, body: &'static str) -> Request {
        let mut b = axum::http::Request::builder().uri("/");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let mut r = b.body(axum::body::Body::from(body)).unwrap();
        r.extensions_mut().insert(BodyRules { max_bytes: 8, timeout: Duration::from_secs(5) });
        r
    }

    #[tokio::test]
    async fn json_bodies_need_a_json_type_and_fit_the_limit() {
        assert!(read(req(Some("application/json"), "{}"), true, false).await.is_ok());
        assert!(read(req(Some("Application/JSON; charset=utf-8"), "{}"), true, false).await.is_ok());
        assert!(read(req(Some("application/vnd.api+json"), "{}"), true, false).await.is_ok());
        assert_eq!(read(req(Some("text/plain"), "{}"), true, false).await, Err(BodyError::NotJson));
        assert_eq!(read(req(None, "{}"), true, false).await, Err(BodyError::NotJson));
        assert!(read(req(None, ""), true, true).await.is_ok(), "an empty body may come without a type");
        let big = read(req(Some("application/json"), "{\"a\": 12345678}"), true, false).await;
        assert_eq!(big, Err(BodyError::TooLarge(8)));
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(valid_request_id("abc-123_x.y:z"));
        for bad in ["", "a b", "é", "a\nb", &"x".repeat(129)] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }
}
