//! The HTTP layer without sockets: requests go straight into the axum routers with tower's `oneshot`, over a
//! server built in-process (`server::build`) around stories260K (260K parameters: it loads and answers in
//! milliseconds). Protocol shapes, error paths and the admin API's typed answers, checked quickly and exactly.

use crate::common::{stories_dir, ADMIN_TOKEN};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use teal::config::ServeArgs;
use teal::lifecycle::{LoadRequest, OpStatus, Phase, Status};
use teal::slot::SlotName;
use tower::ServiceExt;

struct App {
    api: axum::Router,
    admin: axum::Router,
    _state: tempfile::TempDir,
}

/// stories260K live in blue, loaded through the lifecycle as `teal serve` does; small body and prompt limits.
async fn app() -> App {
    let state = tempfile::tempdir().unwrap();
    let args =
        ServeArgs { state_dir: Some(state.path().to_path_buf()), max_body_bytes: Some(64 << 10), ..Default::default() };
    let config = args.resolve().unwrap();
    let signal = teal::net::shutdown::ShutdownSignal::never();
    let parts = teal::server::build(&config, ADMIN_TOKEN.into(), &signal).unwrap();
    let req = LoadRequest { model: stories_dir().display().to_string(), ..Default::default() };
    let op = parts.lifecycle.load(SlotName::Blue, req, true, true).await.unwrap();
    let done = parts.lifecycle.wait(&op.id).await.unwrap();
    assert_eq!((done.status, done.phase, done.gates_passed), (OpStatus::Succeeded, Phase::Done, Some(true)));
    assert!(done.timing(Phase::Loading).is_some() && done.timing(Phase::Gating).is_some(), "{done:?}");
    App { api: teal::api::router(parts.app), admin: teal::api::admin::router(parts.admin), _state: state }
}

/// (status, content type, body) of one request.
async fn send(router: &axum::Router, req: Request<Body>) -> (StatusCode, String, axum::http::HeaderMap, Vec<u8>) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap().to_vec();
    let ctype = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (parts.status, ctype, parts.headers, bytes)
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn routes_answer_in_their_protocols_shapes() {
    let app = app().await;
    let (status, ctype, _, body) = send(&app.api, get("/v1/models")).await;
    assert_eq!((status, ctype.as_str()), (StatusCode::OK, "application/json"));
    let v = json_of(&body);
    assert_eq!((v["object"].as_str(), v["data"][0]["id"].as_str()), (Some("list"), Some("stories260K")));
    assert_eq!(v["data"][0]["object"], "model");
    // KServe is for image classifiers: its error shape is {"error": "..."}.
    let (status, _, _, body) = send(&app.api, get("/v2/models/stories260K/ready")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json_of(&body)["error"].as_str().unwrap().contains("is a text-generation model"));
    let (status, _, _, _) = send(&app.api, get("/health/ready")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ctype, _, body) = send(&app.api, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = String::from_utf8(body).unwrap();
    assert_eq!(crate::common::metric_value(&text, "teal_slot_gates_passed{slot=\"blue\"}"), Some(1.0), "{text}");
    let (status, _, _, body) = send(&app.api, get("/v1/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error");
    let (status, _, _, _) = send(&app.api, Request::delete("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn bad_requests_get_precise_errors_and_keep_their_request_id() {
    let app = app().await;
    let chat = |body: &str| {
        Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", "req-123")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let cases: [(Request<Body>, StatusCode, &str); 5] = [
        (chat("{\"model\": "), StatusCode::BAD_REQUEST, "invalid_request_error"),
        (
            chat(r#"{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}"#),
            StatusCode::NOT_FOUND,
            "invalid_request_error",
        ),
        (chat(r#"{"model": "stories260K", "messages": []}"#), StatusCode::BAD_REQUEST, "invalid_request_error"),
        (
            chat(&format!(r#"{{"model": "x", "pad": "{}"}}"#, "a".repeat(70_000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
        ),
        (
            Request::post("/v1/chat/completions")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("hi"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
        ),
    ];
    for (i, (req, want, kind)) in cases.into_iter().enumerate() {
        let echoes = req.headers().contains_key("x-request-id");
        let (status, ctype, headers, body) = send(&app.api, req).await;
        assert_eq!(status, want, "case {i}: {}", String::from_utf8_lossy(&body));
        assert_eq!(ctype, "application/json", "case {i}");
        assert_eq!(json_of(&body)["error"]["type"], kind, "case {i}");
        if echoes {
            assert_eq!(headers["x-request-id"], "req-123", "case {i}");
        }
    }
    let (status, _, _, body) =
        send(&app.api, post("/v1/completions", r#"{"model": "stories260K", "prompt": "x", "n": 0}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&body)["error"]["param"], "n");
}

#[tokio::test]
async fn a_streamed_completion_carries_exactly_the_plain_one() {
    let app = app().await;
    let body = json!({"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0,
                      "ignore_eos": true});
    let (status, _, _, plain) = send(&app.api, post("/v1/completions", body.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    let plain = json_of(&plain);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, ctype, _, raw) = send(&app.api, post("/v1/completions", streamed.to_string())).await;
    assert_eq!((status, ctype.as_str()), (StatusCode::OK, "text/event-stream"));
    let raw = String::from_utf8(raw).unwrap();
    let events: Vec<&str> = raw.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| json_of(e.as_bytes())).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());
    let usage = chunks.iter().find(|c| !c["usage"].is_null()).expect("a usage chunk");
    assert_eq!(usage["usage"], plain["usage"]);
    assert_eq!(plain["usage"]["completion_tokens"], 24);
}

#[tokio::test]
async fn the_admin_api_answers_with_the_types_the_cli_reads() {
    let app = app().await;
    let (status, _, headers, _) = send(&app.admin, get("/admin/slots")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let authed = |method: Method, path: &str| {
        Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
    };
    let (status, _, _, body) = send(&app.admin, authed(Method::GET, "/admin/slots").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let s: Status = serde_json::from_slice(&body).unwrap();
    assert_eq!((s.live, s.flips, s.slots.blue.state.as_str()), (Some(SlotName::Blue), 0, "live"));
    let gates = s.slots.blue.gates.as_ref().expect("blue's gate report");
    assert!(gates.passed && !gates.forced, "{gates:?}");
    assert_eq!(s.slots.green.state, "empty");
    let (status, _, _, body) =
        send(&app.admin, authed(Method::DELETE, "/admin/slots/green").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let unloaded: teal::lifecycle::Unloaded = serde_json::from_slice(&body).unwrap();
    assert_eq!((unloaded.slot, unloaded.state.as_str(), unloaded.unloaded_version), (SlotName::Green, "empty", None));
    let (status, _, _, body) =
        send(&app.admin, authed(Method::DELETE, "/admin/slots/blue").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(json_of(&body)["error"]["message"].as_str().unwrap().contains("blue is live"));
}
