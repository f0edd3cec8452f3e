//! The dashboard in a real browser: headless Chromium driven over WebDriver (Debian's chromium and
//! chromium-driver, fantoccini as the client) against a real teal server serving stories260K variants. An
//! operator signs in, loads a model into green from the picker, watches it become ready, flips (and sees a flip
//! made by another client through the API appear within 2 s), rolls back, starts and aborts a rollout; a viewer
//! sees the same views without a single action and has every mutation refused; a replica in fleet mode (with
//! its own redis-server) shows the fleet matrix. Screenshots of each view go to target/dashboard-screenshots/
//! (and to docs/dashboard/ with TEAL_UPDATE_SCREENSHOTS=1).
//!
//! Its own binary: the browser needs the CPU for the 2-second check, so no other test may share it.

#[path = "common/mod.rs"]
mod common;

use common::rollout::{root_with_base, LoadGen};
use common::{Reaped, TestServer, ADMIN_TOKEN};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use teal::config::ServeArgs;

const VIEWER_TOKEN: &str = "test-viewer-token-abcdef012345";

/// chromedriver on a free port, killed on drop.
struct Driver {
    _child: Reaped,
    url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn driver() -> Driver {
    let port = free_port();
    assert!(
        std::process::Command::new("chromedriver").arg("--version").output().is_ok(),
        "chromedriver is not installed: apt-get install chromium chromium-driver (see README)"
    );
    let child = Reaped::spawn(
        std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if reqwest::get(format!("{url}/status")).await.is_ok() {
            return Driver { _child: child, url };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not start");
}

async fn browser(d: &Driver, width: u32, height: u32) -> Client {
    let mut caps = serde_json::Map::new();
    let args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"];
    caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a Chromium session");
    c.set_window_size(width, height).await.unwrap();
    c
}

fn shots_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Saves a PNG of the element (or the viewport) as `name`.png.
async fn shot(c: &Client, css: Option<&str>, name: &str) {
    let png = match css {
        Some(css) => {
            // Element shots keep only what is in the viewport: bring the element to the top first.
            let js = "document.querySelector(arguments[0]).scrollIntoView({block: 'start'})";
            c.execute(js, vec![json!(css)]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.find(Locator::Css(css)).await.unwrap().screenshot().await.unwrap()
        }
        None => c.screenshot().await.unwrap(),
    };
    assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    std::fs::write(shots_dir().join(format!("{name}.png")), &png).unwrap();
    if std::env::var("TEAL_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
    }
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Polls until the element's text contains `want`; returns how long it took.
async fn wait_text(c: &Client, css: &str, want: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if text(c, css).await.contains(want) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{css} never showed {want:?} (it shows {:?})", text(c, css).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The page's script ran without an error (app.js records the first in data-script-error).
async fn no_script_error(c: &Client) {
    let err = c.execute("return document.body.dataset.scriptError || null", vec![]).await.unwrap();
    assert!(err.is_null(), "the dashboard's script failed: {err}");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
}

async fn sign_in(c: &Client, admin_url: &str, token: &str) {
    c.goto(&format!("{admin_url}/")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/login", "no cookie: the sign-in page");
    c.find(Locator::Css("#token")).await.unwrap().send_keys(token).await.unwrap();
    click(c, "#sign-in").await;
    wait_text(c, "#conn", "live", Duration::from_secs(20)).await;
}

/// Confirms the open dialog with a reason.
async fn confirm(c: &Client, reason: &str) {
    let r = c.wait().at_most(Duration::from_secs(5)).for_element(Locator::Css("#confirm-reason")).await.unwrap();
    r.send_keys(reason).await.unwrap();
    click(c, "#confirm-ok").await;
    // The dialog closes when the action succeeded; an error would stay in it.
    let t0 = Instant::now();
    while c.find(Locator::Css("#confirm[open]")).await.is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the action failed: {}", text(c, "#confirm-error").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fetch from inside the page (the session's cookie goes along); returns the status.
async fn page_fetch(c: &Client, method: &str, path: &str, csrf: bool) -> u64 {
    let js = r#"
        const [method, path, csrf, done] = arguments;
        const headers = {'Content-Type': 'application/json'};
        if (csrf) headers['X-CSRF-Token'] = document.querySelector('meta[name="teal-csrf"]').content;
        fetch(path, {method, headers, body: '{}'}).then(r => done(r.status), e => done(String(e)));
    "#;
    let v = c.execute_async(js, vec![json!(method), json!(path), json!(csrf)]).await.unwrap();
    v.as_u64().unwrap_or_else(|| panic!("fetch {path}: {v}"))
}

async fn live_slot(s: &TestServer) -> Value {
    s.admin_json("/admin/slots").await["live"].clone()
}

async fn operator_flow(c: &Client, s: &TestServer) {
    sign_in(c, &s.admin_url, ADMIN_TOKEN).await;
    assert_eq!(text(c, "#live-slot").await, "blue");
    assert_eq!(text(c, "#role").await, "operator");
    // Load the copy into green from the picker.
    c.wait().for_element(Locator::Css("#load-model option[value=\"copy\"]")).await.unwrap();
    c.find(Locator::Css("#load-model")).await.unwrap().select_by_value("copy").await.unwrap();
    c.find(Locator::Css("#load-slot")).await.unwrap().select_by_value("green").await.unwrap();
    click(c, "#load-submit").await;
    confirm(c, "ship the copy").await;
    wait_text(c, "#slot-green .state", "ready", Duration::from_secs(120)).await;
    wait_text(c, "#slot-green", "copy", Duration::from_secs(5)).await;
    // Traffic for the charts, then the views as they look now.
    let load = LoadGen::start(&s.url, 2, 8);
    tokio::time::sleep(Duration::from_secs(6)).await;
    no_script_error(c).await;
    shot(c, Some("#slots"), "slots").await;
    shot(c, Some("#traffic"), "traffic").await;
    shot(c, Some("#memory"), "memory").await;
    // Flip from the page.
    click(c, "#act-flip").await;
    confirm(c, "green passed its gates").await;
    wait_text(c, "#live-slot", "green", Duration::from_secs(2)).await;
    assert_eq!(live_slot(s).await, "green");
    // Roll back from the page.
    click(c, "#act-rollback").await;
    confirm(c, "rolling back to compare").await;
    wait_text(c, "#live-slot", "blue", Duration::from_secs(2)).await;
    // A flip by another client shows up within 2 s, without touching the page.
    let r = s.admin(reqwest::Method::POST, "/admin/flip", Some(json!({"to": "green"}))).await;
    assert_eq!(r.status(), 200);
    let seen = wait_text(c, "#live-slot", "green", Duration::from_secs(2)).await;
    eprintln!("an API flip reached the page in {seen:?}");
    let r = s.admin(reqwest::Method::POST, "/admin/rollback", Some(json!({}))).await;
    assert_eq!(r.status(), 200);
    wait_text(c, "#live-slot", "blue", Duration::from_secs(2)).await;
    rollout_flow(c).await;
    load.stop().await;
    // Every action above is in the audit log with its reason, and on the page.
    wait_text(c, "#audit-list", "ship the copy", Duration::from_secs(3)).await;
    let events = s.admin_json("/admin/events").await;
    let reasons: Vec<&str> = events["events"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    for want in ["ship the copy", "green passed its gates", "rolling back to compare", "try the canary", "abort it"] {
        assert!(reasons.contains(&want), "{want:?} not audited: {reasons:?}");
    }
    shot(c, Some("#audit"), "audit").await;
    // A mutation without the CSRF token is refused, with it (and the operator's session) it is not.
    assert_eq!(page_fetch(c, "POST", "/admin/flip", false).await, 403);
    assert_eq!(live_slot(s).await, "blue", "the refused flip changed nothing");
    no_script_error(c).await;
    shot(c, None, "overview").await;
}

async fn rollout_flow(c: &Client) {
    c.find(Locator::Css("#rollout-steps")).await.unwrap().clear().await.unwrap();
    c.find(Locator::Css("#rollout-steps")).await.unwrap().send_keys("50, 100").await.unwrap();
    c.find(Locator::Css("#rollout-interval")).await.unwrap().clear().await.unwrap();
    c.find(Locator::Css("#rollout-interval")).await.unwrap().send_keys("600").await.unwrap();
    click(c, "#rollout-start").await;
    confirm(c, "try the canary").await;
    wait_text(c, "#rollout-state", "progressing", Duration::from_secs(5)).await;
    wait_text(c, "#rollout-weight", "50.0%", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    shot(c, Some("#rollout"), "rollout").await;
    click(c, "#act-abort").await;
    confirm(c, "abort it").await;
    wait_text(c, "#rollout-state", "aborted", Duration::from_secs(5)).await;
}

async fn viewer_flow(c: &Client, s: &TestServer) {
    sign_in(c, &s.admin_url, VIEWER_TOKEN).await;
    assert_eq!(text(c, "#role").await, "viewer");
    wait_text(c, "#slot-green .state", "ready", Duration::from_secs(5)).await;
    wait_text(c, "#rollout-state", "aborted", Duration::from_secs(5)).await;
    // Everything is there to see; no action is shown.
    for css in ["#act-flip", "#act-rollback", "#load-submit", "#rollout-start", "#act-abort"] {
        let shown = c.find(Locator::Css(css)).await.unwrap().is_displayed().await.unwrap();
        assert!(!shown, "{css} is hidden from a viewer");
    }
    assert!(c.find(Locator::Css("#slot-green button")).await.is_err(), "no slot buttons for a viewer");
    // And every mutation is refused, even with the session's CSRF token.
    for (method, path) in [
        ("POST", "/admin/flip"),
        ("POST", "/admin/rollback"),
        ("POST", "/admin/slots/green/load"),
        ("POST", "/admin/slots/green/park"),
        ("DELETE", "/admin/slots/green"),
        ("POST", "/admin/rollouts"),
        ("POST", "/admin/rollouts/current/abort"),
    ] {
        assert_eq!(page_fetch(c, method, path, true).await, 403, "{method} {path} as a viewer");
    }
    assert_eq!(live_slot(s).await, "blue");
    no_script_error(c).await;
    shot(c, None, "viewer").await;
    // Sign out: back to the sign-in page, and the old session is gone.
    click(c, "#sign-out").await;
    wait_text(c, "#sign-in", "Sign in", Duration::from_secs(5)).await;
    c.goto(&format!("{}/", s.admin_url)).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/login");
}

/// A replica of a one-member fleet (its Redis on a free port): the page shows the fleet matrix.
async fn fleet_flow(c: &Client, root: &std::path::Path) {
    let port = free_port();
    let _redis = Reaped::spawn(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = TestServer::start_args(ServeArgs {
        blue: Some(root.join("base")),
        green: Some(root.join("copy")),
        models_dir: Some(root.to_path_buf()),
        served_model_name: Some("story".into()),
        fleet_name: Some("dash".into()),
        fleet_redis_url: Some(format!("redis://127.0.0.1:{port}/")),
        replica_id: Some("replica-a".into()),
        ..Default::default()
    })
    .await;
    sign_in(c, &s.admin_url, ADMIN_TOKEN).await;
    let shown = c.find(Locator::Css("#fleet")).await.unwrap().is_displayed().await.unwrap();
    assert!(shown, "fleet mode shows the fleet view");
    wait_text(c, "#fleet-members", "replica-a", Duration::from_secs(10)).await;
    wait_text(c, "#fleet-view", "dash", Duration::from_secs(2)).await;
    no_script_error(c).await;
    shot(c, Some("#fleet"), "fleet").await;
    c.delete_all_cookies().await.unwrap();
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_viewers_in_a_real_browser() {
    let root = root_with_base();
    let s = TestServer::start_args(ServeArgs {
        blue: Some(root.path().join("base")),
        models_dir: Some(root.path().to_path_buf()),
        served_model_name: Some("story".into()),
        admin_viewer_token: Some(VIEWER_TOKEN.into()),
        ..Default::default()
    })
    .await;
    let d = driver().await;
    let c = browser(&d, 1280, 1000).await;
    // The sign-in page, and a wrong token.
    c.goto(&format!("{}/", s.admin_url)).await.unwrap();
    shot(&c, None, "sign-in").await;
    c.find(Locator::Css("#token")).await.unwrap().send_keys("not-the-token-at-all").await.unwrap();
    click(&c, "#sign-in").await;
    wait_text(&c, "#message", "not the admin or the viewer token", Duration::from_secs(5)).await;
    operator_flow(&c, &s).await;
    // A phone-width look at the same page.
    c.set_window_size(390, 844).await.unwrap();
    c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    shot(&c, None, "phone").await;
    let fits = c.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![]).await.unwrap();
    assert_eq!(fits, json!(true), "the page fits a phone's width without scrolling sideways");
    c.set_window_size(1280, 1000).await.unwrap();
    c.delete_all_cookies().await.unwrap();
    viewer_flow(&c, &s).await;
    s.stop().await.unwrap();
    fleet_flow(&c, root.path()).await;
    c.close().await.unwrap();
}
