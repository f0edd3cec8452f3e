//! The dashboard's sign-in, sessions and roles over plain HTTP against a real server: no cookie goes to the
//! sign-in page; a token becomes an HttpOnly SameSite=Strict cookie; a cookie mutation needs its CSRF token and
//! this origin; the viewer token (bearer or session) reads everything and changes nothing; reasons reach the
//! audit log; sign-out ends the session and its live feed; a planted cookie does not hide the real one; a
//! request addressed to a foreign host name (DNS rebinding) is refused; guessing is throttled per address. The
//! browser test (tests/dashboard_browser.rs) drives the page itself.

use crate::common;

use common::{stories_dir, TestServer, ADMIN_TOKEN};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use teal::config::ServeArgs;

const VIEWER: &str = "viewer-token-0123456789abcdef";

async fn server() -> (tempfile::TempDir, TestServer) {
    let root = tempfile::tempdir().unwrap();
    common::copy_dir(&stories_dir(), &root.path().join("stories"));
    let s = TestServer::start_args(ServeArgs {
        blue: Some(root.path().join("stories")),
        green: Some(root.path().join("stories")),
        models_dir: Some(root.path().to_path_buf()),
        admin_viewer_token: Some(VIEWER.into()),
        ..Default::default()
    })
    .await;
    s.wait_slot("green", "ready").await;
    (root, s)
}

fn client() -> Client {
    Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in with `token`; returns the cookie pair ("teal_session=...") and the page's CSRF token.
async fn sign_in(s: &TestServer, token: &str) -> (String, String) {
    let r = client().post(format!("{}/login", s.admin_url)).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let page = client().get(format!("{}/", s.admin_url)).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    let csrf = html.split("name=\"teal-csrf\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (cookie, csrf)
}

async fn send(
    s: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut r = client().request(method, format!("{}{path}", s.admin_url));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let (status, h) = (resp.status(), resp.headers().clone());
    (status, h, resp.text().await.unwrap())
}

#[tokio::test]
async fn no_session_means_the_sign_in_page() {
    let (_root, s) = server().await;
    let (status, h, _) = send(&s, Method::GET, "/", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[LOCATION], "/login");
    let (status, h, body) = send(&s, Method::GET, "/login", &[]).await;
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(body.contains("name=\"token\""));
    // The page's assets are public; nothing else is.
    let (status, h, _) = send(&s, Method::GET, "/ui/assets/uPlot.iife.min.js", &[]).await;
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert_eq!(send(&s, Method::GET, "/ui/assets/..%2Fapp.js", &[]).await.0, 404);
    assert_eq!(send(&s, Method::GET, "/ui/stream", &[]).await.0, 401);
    assert_eq!(send(&s, Method::GET, "/admin/models", &[]).await.0, 401);
    let (status, _, body) = send(&s, Method::GET, "/", &[("cookie", "teal_session=forged")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    // DNS rebinding: a page whose name points at 127.0.0.1 still says its own name in Host.
    let port = s.admin_url.rsplit(':').next().unwrap().to_string();
    let evil = format!("evil.example:{port}");
    let (status, _, body) = send(&s, Method::GET, "/login", &[("host", &evil)]).await;
    assert_eq!(status, 403, "{body}");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(send(&s, Method::GET, "/admin/slots", &[("host", &evil), ("authorization", &bearer)]).await.0, 403);
    let local = format!("localhost:{port}");
    assert_eq!(send(&s, Method::GET, "/admin/slots", &[("host", &local), ("authorization", &bearer)]).await.0, 200);
    // A wrong token shows the form again; one from another site is refused.
    let r = client().post(format!("{}/login", s.admin_url)).form(&[("token", "nope")]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get(SET_COOKIE).is_none());
    let r = client()
        .post(format!("{}/login", s.admin_url))
        .header("origin", "http://evil.example")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a sign-in posted from another site");
    let r = client()
        .post(format!("{}/login", s.admin_url))
        .header("sec-fetch-site", "same-site")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a sign-in posted from another port of this host");
}

#[tokio::test]
async fn a_session_needs_its_csrf_token_to_change_anything() {
    let (_root, s) = server().await;
    let (cookie, csrf) = sign_in(&s, ADMIN_TOKEN).await;
    let c = ("cookie", cookie.as_str());
    assert_eq!(send(&s, Method::GET, "/admin/slots", &[c]).await.0, 200);
    let (status, _, body) = send(&s, Method::GET, "/admin/models", &[c]).await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["models"][0]["name"], "stories");
    // A planted cookie first in line does not hide the real one.
    let planted = format!("teal_session=planted; {cookie}");
    assert_eq!(send(&s, Method::GET, "/admin/slots", &[("cookie", &planted)]).await.0, 200);
    // Without, with a wrong, or with a right token from another site: 403, and green stays loaded.
    for extra in [vec![], vec![("x-csrf-token", "0".repeat(64))], vec![("x-csrf-token", csrf.clone())]] {
        let mut h: Vec<(&str, &str)> = vec![c, ("content-type", "application/json")];
        h.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        if extra.first().is_some_and(|(_, v)| *v == csrf) {
            h.push(("sec-fetch-site", "cross-site"));
        }
        assert_eq!(send(&s, Method::DELETE, "/admin/slots/green", &h).await.0, 403, "{h:?}");
    }
    let h = [c, ("x-csrf-token", csrf.as_str()), ("origin", "http://evil.example")];
    assert_eq!(send(&s, Method::DELETE, "/admin/slots/green", &h).await.0, 403);
    assert_eq!(s.admin_json("/admin/slots").await["slots"]["green"]["state"], "ready");
    // The right token from this origin (an Origin naming the Host it was sent to) unloads green.
    let h = [c, ("x-csrf-token", csrf.as_str()), ("origin", s.admin_url.as_str()), ("x-teal-reason", "tidy%20up")];
    let (status, _, body) = send(&s, Method::DELETE, "/admin/slots/green", &h).await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(s.admin_json("/admin/slots").await["slots"]["green"]["state"], "empty");
    let events = s.admin_json("/admin/events").await;
    let ev = events["events"].as_array().unwrap().iter().find(|e| e["action"] == "operator_action").unwrap().clone();
    assert_eq!(ev["reason"], "tidy up");
    assert_eq!(ev["details"]["role"], "operator");
    assert_eq!(ev["details"]["via"], "dashboard");
    assert_eq!(ev["details"]["path"], "/admin/slots/green");
    // Sign out: the cookie no longer works, and the live feed it opened ends.
    let mut feed = client().get(format!("{}/ui/stream", s.admin_url)).header(COOKIE, &cookie).send().await.unwrap();
    assert_eq!(feed.status(), 200);
    assert!(feed.chunk().await.unwrap().is_some(), "the first state event");
    let (status, h, _) = send(&s, Method::POST, "/logout", &[c, ("x-csrf-token", csrf.as_str())]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(h[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(send(&s, Method::GET, "/admin/slots", &[c]).await.0, 401);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Ok(Some(_)) = feed.chunk().await {}
    });
    assert!(ended.await.is_ok(), "the signed-out session's feed ended");
}

#[tokio::test]
async fn the_viewer_sees_everything_and_changes_nothing() {
    let (_root, s) = server().await;
    let bearer = format!("Bearer {VIEWER}");
    let b = ("authorization", bearer.as_str());
    for path in ["/admin/slots", "/admin/memory", "/admin/events", "/admin/models"] {
        assert_eq!(send(&s, Method::GET, path, &[b]).await.0, 200, "GET {path} as a viewer");
    }
    let json = ("content-type", "application/json");
    for (method, path) in [
        (Method::POST, "/admin/flip"),
        (Method::POST, "/admin/rollback"),
        (Method::POST, "/admin/slots/green/load"),
        (Method::DELETE, "/admin/slots/blue"),
        (Method::POST, "/admin/rollouts"),
        (Method::POST, "/admin/operations/op-1/cancel"),
        (Method::PATCH, "/admin/flip"),
    ] {
        let (status, _, body) = send(&s, method.clone(), path, &[b, json, ("x-teal-reason", "x")]).await;
        assert_eq!(status, 403, "{method} {path} as a viewer: {body}");
        assert!(body.contains("viewer"), "{body}");
    }
    let refused = s.admin_json("/admin/events").await;
    let n = refused["events"].as_array().unwrap().iter().filter(|e| e["action"] == "operator_action").count();
    assert_eq!(n, 0, "refused before reaching the API, so nothing to audit");
    assert_eq!(s.admin_json("/admin/slots").await["slots"]["blue"]["state"], "live");
    // A viewer's session: the same, and its page says so.
    let (cookie, csrf) = sign_in(&s, VIEWER).await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str()), json];
    assert_eq!(send(&s, Method::POST, "/admin/flip", &h).await.0, 403);
    let (_, _, page) = send(&s, Method::GET, "/", &h[..1]).await;
    assert!(page.contains("data-role=\"viewer\""));
    // The live feed's first event has the whole picture.
    let v = s.dashboard_state(VIEWER).await;
    assert_eq!(v["first"], true);
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["status"]["live"], "blue");
    assert!(v["memory"]["devices"].is_array());
    assert!(v["events"].as_array().unwrap().iter().any(|e| e["action"] == "flip" || e["action"] == "load_succeeded"));
}

#[tokio::test]
async fn guessing_the_token_is_throttled_per_address() {
    let (_root, s) = server().await;
    let (cookie, _) = sign_in(&s, ADMIN_TOKEN).await;
    let mut statuses = Vec::new();
    for i in 0..25 {
        let r = client().post(format!("{}/login", s.admin_url)).form(&[("token", format!("guess-{i}"))]);
        statuses.push(r.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20, "{statuses:?}");
    assert_eq!(*statuses.last().unwrap(), 429);
    // From this address, every token waits until the minute is over, at sign-in and as a bearer alike.
    let r = client().post(format!("{}/login", s.admin_url)).form(&[("token", ADMIN_TOKEN)]).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    assert_eq!(s.admin(Method::GET, "/admin/slots", None).await.status(), 429);
    // A session opened before keeps working: it holds no token to guess.
    assert_eq!(send(&s, Method::GET, "/admin/slots", &[("cookie", &cookie)]).await.0, 200);
}
