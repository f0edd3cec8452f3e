//! Who is calling the admin listener and what they may do. Two tokens: the operator token (`--admin-token`) may
//! do everything, the viewer token (`--admin-viewer-token`) may look and change nothing. A caller proves one of
//! them either as `Authorization: Bearer <token>` (the JSON API, scripts, the CLI) or, in a browser, with the
//! session cookie that signing in on the dashboard exchanges the token for (HttpOnly, SameSite=Strict). A
//! cookie is ambient, so every mutation made with one must also carry the session's CSRF token in
//! `X-CSRF-Token` and must not come from another site (`Sec-Fetch-Site`, `Origin`). On a loopback listener only
//! requests addressed to a loopback name are answered (DNS rebinding; origin.rs). Wrong tokens, at sign-in or
//! as a bearer, are throttled per client address (sessions.rs). A mutation may say why in `X-Teal-Reason`; the
//! reason goes to the audit log with the caller's role, even if the client hangs up before the answer.

#![deny(clippy::indexing_slicing)]

use super::super::admin_state::AdminState;
use super::super::error::ApiError;
use super::origin::{loopback_host, same_origin};
use super::sessions::{Role, SESSION_COOKIE};
use crate::lifecycle::audit::Entry;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq;

/// Longest reason kept (characters); longer ones are cut.
const MAX_REASON_CHARS: usize = 1000;

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Bearer,
    /// The dashboard's session cookie, with the session's CSRF token.
    Session {
        id: String,
        csrf: String,
    },
}

/// The authenticated caller, put into the request's extensions for handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    pub via: Via,
}

/// True when `given` equals `token`. The comparison is of SHA-256 digests in constant time, so neither the
/// token's content nor its length shows in the timing; an empty token never matches.
pub fn token_matches(given: &str, token: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(token.as_bytes()));
    !token.is_empty() && bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// The role a presented token grants, if any.
pub fn role_of(s: &AdminState, given: &str) -> Option<Role> {
    // Both comparisons run whatever the first says, so timing tells nothing about which token was close.
    let operator = token_matches(given, &s.token);
    let viewer = s.viewer_token.as_deref().is_some_and(|v| token_matches(given, v));
    match (operator, viewer) {
        (true, _) => Some(Role::Operator),
        (false, true) => Some(Role::Viewer),
        _ => None,
    }
}

/// Every value of the session cookie in a request's Cookie headers (at most 8). A browser may send several:
/// cookies ignore ports, so another service on the same host could plant one with a more specific path.
pub fn session_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_string())
        .take(8)
        .collect()
}

/// The client's address, when the listener recorded it.
pub fn peer(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Whether a caller's credentials still hold: a session ends on sign-out or expiry; a bearer token does not.
pub fn still_signed_in(s: &AdminState, caller: &Caller) -> bool {
    match &caller.via {
        Via::Bearer => true,
        Via::Session { id, .. } => s.sessions.get(id).is_some(),
    }
}

/// Paths served to anyone: the sign-in page and the static assets it needs.
fn public(path: &str) -> bool {
    path == "/login" || path.starts_with("/ui/assets/")
}

fn is_mutation(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a request is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No or wrong credentials on an API route: 401.
    Unauthorized,
    /// No credentials on a dashboard page: to the sign-in page.
    SignIn,
    /// Known caller, not allowed: 403 with why.
    Forbidden(&'static str),
    /// Too many wrong tokens from this address: 429.
    Throttled,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized => unauthorized(),
            Refusal::SignIn => Redirect::to("/login").into_response(),
            Refusal::Forbidden(why) => forbidden(why),
            Refusal::Throttled => throttled(),
        }
    }
}

fn unauthorized() -> Response {
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the admin API needs Authorization: Bearer <token> with the server's admin or viewer token, or a \
         dashboard session (sign in at /login)",
    )
    .into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// 429 for an address that sent too many wrong tokens.
pub fn throttled() -> Response {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        "too many wrong tokens from this address; wait a minute",
    )
    .into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    resp
}

fn forbidden(message: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}

/// Who is calling, or the response that refuses them: a wrong bearer token is 401; no credentials at all is a
/// redirect to the sign-in page for the dashboard's pages and 401 for the API.
fn identify(s: &AdminState, req: &Request) -> Result<Caller, Refusal> {
    let headers = req.headers();
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let addr = peer(req);
        if !s.sessions.may_try(addr) {
            return Err(Refusal::Throttled);
        }
        let given = auth.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
        let role = role_of(s, given);
        if role.is_none() {
            s.sessions.note_failure(addr);
        }
        return role.map(|role| Caller { role, via: Via::Bearer }).ok_or(Refusal::Unauthorized);
    }
    for id in session_cookies(headers) {
        if let Some(sess) = s.sessions.get(&id) {
            return Ok(Caller { role: sess.role, via: Via::Session { id, csrf: sess.csrf } });
        }
    }
    match req.uri().path() {
        "/" | "/index.html" => Err(Refusal::SignIn),
        _ => Err(Refusal::Unauthorized),
    }
}

/// What a mutation by this caller needs besides its role: a cookie session must show its CSRF token and come
/// from this site.
fn check_csrf(caller: &Caller, headers: &HeaderMap) -> Result<(), Refusal> {
    let Via::Session { csrf, .. } = &caller.via else { return Ok(()) };
    let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !token_matches(given, csrf) {
        return Err(Refusal::Forbidden("a change made with a dashboard session needs its CSRF token in X-CSRF-Token"));
    }
    if !same_origin(headers) {
        return Err(Refusal::Forbidden(
            "a change made with a dashboard session must come from the dashboard's own origin",
        ));
    }
    Ok(())
}

/// The reason a mutation gives (`X-Teal-Reason`, percent-encoded UTF-8), cut to MAX_REASON_CHARS.
pub fn reason_of(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("x-teal-reason")?.to_str().ok()?;
    let text = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let text: String = text.chars().filter(|c| !c.is_control() || *c == '\n').take(MAX_REASON_CHARS).collect();
    let text = text.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The admin listener's gate: identifies the caller, refuses what their role or session may not do, and audits
/// every mutation that gives a reason.
pub async fn authorize(State(s): State<AdminState>, mut req: Request, next: Next) -> Response {
    if s.loopback_only && !loopback_host(req.headers()) {
        return forbidden("this admin listener is on a loopback address and answers only to localhost or 127.0.0.1");
    }
    if public(req.uri().path()) {
        return next.run(req).await;
    }
    let caller = match identify(&s, &req) {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    let mutation = is_mutation(req.method());
    if mutation {
        if let Err(refusal) = check_csrf(&caller, req.headers()) {
            return refusal.into_response();
        }
        // Signing out is the one change a viewer may make: to its own session.
        if caller.role == Role::Viewer && req.uri().path() != "/logout" {
            return forbidden("the viewer token can look at everything and change nothing");
        }
    }
    let reason = if mutation { reason_of(req.headers()) } else { None };
    let Some(reason) = reason else {
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let (role, via) = (caller.role, if matches!(caller.via, Via::Bearer) { "bearer" } else { "dashboard" });
    req.extensions_mut().insert(caller);
    // Run the action as a task of its own, so that it and its audit record finish together even when the
    // client hangs up before the answer (the connection's future is dropped then, a spawned task is not).
    let audit = s.lifecycle.audit.clone();
    let task = tokio::spawn(async move {
        let resp = next.run(req).await;
        let status = resp.status();
        let outcome = match status.as_u16() {
            200..=399 => "ok",
            400..=499 => "refused",
            _ => "failed",
        };
        let details = json!({"method": method, "path": path, "status": status.as_u16(), "role": role, "via": via});
        audit.record(Entry { action: "operator_action", outcome, reason: Some(reason), details, ..Default::default() });
        resp
    });
    task.await.unwrap_or_else(|e| ApiError::internal(format!("the admin action stopped: {e}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn tokens_must_match_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cret ", "s3cret"));
        assert!(!token_matches("", ""), "an empty token never matches");
    }

    #[test]
    fn every_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; teal_session=abc123; b=2")]);
        assert_eq!(session_cookies(&h), ["abc123"]);
        let h = headers(&[("cookie", "teal_session=planted; a=1"), ("cookie", "teal_session=x")]);
        assert_eq!(session_cookies(&h), ["planted", "x"]);
        assert!(session_cookies(&headers(&[("cookie", "teal_sessionx=1")])).is_empty());
    }

    #[test]
    fn reasons_are_decoded_and_bounded() {
        let h = headers(&[("x-teal-reason", "canary%20looks%20good%20%E2%9C%93")]);
        assert_eq!(reason_of(&h).as_deref(), Some("canary looks good ✓"));
        let long = "a".repeat(5000);
        assert_eq!(reason_of(&headers(&[("x-teal-reason", &long)])).unwrap().len(), MAX_REASON_CHARS);
        assert_eq!(reason_of(&headers(&[("x-teal-reason", "%20%0D")])), None, "blank after cleaning");
        assert_eq!(reason_of(&headers(&[])), None);
    }
}
