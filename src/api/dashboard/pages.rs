//! The dashboard's pages and files: the sign-in page and its form (a token exchanged for a session cookie),
//! sign-out, the dashboard page itself (with the session's role and CSRF token written in), and the static
//! assets embedded in the binary (assets/dashboard/, uPlot vendored by scripts/vendor-dashboard.sh). Every
//! page goes out with a strict Content-Security-Policy: scripts and styles from this origin only.

#![deny(clippy::indexing_slicing)]

use super::super::admin_state::AdminState;
use super::auth::{role_of, session_cookies, throttled, Caller, Via};
use super::origin::same_origin;
use super::sessions::{SESSION_COOKIE, SESSION_TTL};
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use std::net::SocketAddr;

const INDEX: &str = include_str!("../../../assets/dashboard/index.html");
const LOGIN: &str = include_str!("../../../assets/dashboard/login.html");

/// (name, content type, bytes) of every asset under /ui/assets/.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../../assets/dashboard/app.js")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../../assets/dashboard/app.css")),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../assets/dashboard/vendor/uPlot.iife.min.js"),
    ),
    ("uPlot.min.css", "text/css; charset=utf-8", include_bytes!("../../../assets/dashboard/vendor/uPlot.min.css")),
    ("uPlot.LICENSE", "text/plain; charset=utf-8", include_bytes!("../../../assets/dashboard/vendor/uPlot.LICENSE")),
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// An HTML page with the dashboard's security headers; never cached.
fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn login_page(status: StatusCode, message: &str) -> Response {
    html(status, LOGIN.replace("{{MESSAGE}}", message))
}

/// GET /login.
pub async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// POST /login: a right token opens a session (ending the one the browser had, if any) and sets its cookie; a
/// wrong one shows the form again (401); too many wrong ones from one address get 429 for a minute.
pub async fn login(
    State(s): State<AdminState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let addr = peer.map(|Extension(ConnectInfo(a))| a.ip());
    if !same_origin(&headers) {
        return login_page(StatusCode::FORBIDDEN, "Sign in from the dashboard's own page.");
    }
    if !s.sessions.may_try(addr) {
        let mut resp = login_page(StatusCode::TOO_MANY_REQUESTS, "Too many wrong tokens; wait a minute.");
        if let Some(v) = throttled().headers().get(header::RETRY_AFTER) {
            resp.headers_mut().insert(header::RETRY_AFTER, v.clone());
        }
        return resp;
    }
    let given = form.map(|Form(f)| f.token).unwrap_or_default();
    let Some(role) = role_of(&s, given.trim()) else {
        s.sessions.note_failure(addr);
        tracing::warn!("dashboard sign-in with a wrong token");
        return login_page(StatusCode::UNAUTHORIZED, "That token is not the admin or the viewer token.");
    };
    for old in session_cookies(&headers) {
        s.sessions.remove(&old);
    }
    let id = s.sessions.create(role);
    tracing::info!(role = role.as_str(), "dashboard sign-in");
    let cookie = format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs());
    with_cookie(Redirect::to("/").into_response(), &cookie)
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// POST /logout: ends the session and clears its cookie.
pub async fn logout(State(s): State<AdminState>, Extension(caller): Extension<Caller>) -> Response {
    if let Via::Session { id, .. } = &caller.via {
        s.sessions.remove(id);
    }
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    with_cookie(Redirect::to("/login").into_response(), &cookie)
}

/// GET /: the dashboard, for a signed-in browser (the auth layer sends others to /login). A bearer caller gets
/// the page too, without a CSRF token (its actions then fail: the page is meant for sessions).
pub async fn index(Extension(caller): Extension<Caller>) -> Response {
    let csrf = match &caller.via {
        Via::Session { csrf, .. } => csrf.as_str(),
        Via::Bearer => "",
    };
    html(StatusCode::OK, INDEX.replace("{{CSRF}}", csrf).replace("{{ROLE}}", caller.role.as_str()))
}

/// GET /ui/assets/{name}.
pub async fn asset(Path(name): Path<String>) -> Response {
    let Some((_, kind, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut resp = bytes.to_vec().into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
