//! Chat sessions against a real redis-server started by the test (on a free port, so it can be killed and
//! restarted): conversations continue across a flip with their whole history, two teal processes share one
//! Redis, Redis going away gives 503 (or, configured, an answer without history) and coming back needs no
//! restart; the in-memory store and the request guards.

use crate::common;

use common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use teal::config::ServeArgs;

/// A redis-server of the test's own, stopped on drop.
pub(super) struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let r = Redis { port, child: Some(child) };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on {port}");
    }

    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port)
    }

    /// Sends a signal to redis-server (STOP: it stays up, its socket accepts, it answers nobody; CONT: it goes on).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().map(|c| c.id()).expect("redis-server is running").to_string();
        assert!(Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap().success());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The stored messages of a session, read with redis-cli.
    pub fn messages(&self, id: &str) -> Vec<Value> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "LRANGE", &format!("teal:session:{id}:messages"), "0", "-1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) async fn chat(s: &TestServer, session: Option<&str>, body: Value) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.url)).json(&body);
    if let Some(id) = session {
        r = r.header("x-teal-session", id);
    }
    r.send().await.unwrap()
}

/// Creates a session with this id (sessions are never created implicitly).
pub(super) async fn create(s: &TestServer, id: &str) {
    let r = reqwest::Client::new().post(format!("{}/v1/sessions", s.url)).json(&json!({"id": id})).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 201, "creating session {id}");
}

pub(super) fn turn(content: &str) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": content}], "max_tokens": 3, "temperature": 0})
}

/// SmolLM2 again in green as version "v2" (quick: no warm-up, smoke or agreement), ready to flip to.
pub(super) async fn load_v2(s: &TestServer) {
    let gates = json!({"smoke": {"enabled": false}, "agreement": {"enabled": false}});
    let op = s
        .load("green", json!({"model": "smollm2", "version": "v2", "warmup": {"enabled": false}, "gates": gates}))
        .await;
    assert_eq!(op["status"], "succeeded", "{op}");
}

pub(super) fn args(redis: Option<&Redis>) -> ServeArgs {
    ServeArgs {
        blue: Some(common::smollm_dir()),
        served_model_name: Some("chat".into()),
        redis_url: redis.map(Redis::url),
        max_total_tokens: Some(8192),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_sessions_continue_across_a_flip_with_their_whole_history() {
    let redis = Redis::start();
    let s = TestServer::start_args(args(Some(&redis))).await;
    load_v2(&s).await;
    let blue_version =
        s.admin_json("/admin/slots").await["slots"]["blue"]["model"]["version"].as_str().unwrap().to_string();
    let mut ids = vec![];
    for i in 0..50 {
        let r = chat(
            &s,
            None,
            json!({"model": "chat", "session": true, "max_tokens": 3, "temperature": 0,
                                      "messages": [{"role": "user", "content": format!("Hello, I am user {i}.")}]}),
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-teal-slot"], "blue");
        ids.push(r.headers()["x-teal-session"].to_str().unwrap().to_string());
    }
    assert_eq!(s.admin(Method::POST, "/admin/flip", Some(json!({"expect_live": "blue"}))).await.status(), 200);
    for round in 2..=3 {
        let futs = ids.iter().enumerate().map(|(i, id)| {
            let s = &s;
            async move {
                let r = chat(s, Some(id), turn(&format!("Turn {round} from user {i}."))).await;
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers()["x-teal-slot"], "green");
                r.json::<Value>().await.unwrap()
            }
        });
        for (i, v) in futures::future::join_all(futs).await.into_iter().enumerate() {
            // The prompt the model received is the whole conversation: the same as sending it all at once.
            let msgs: Vec<Value> =
                redis.messages(&ids[i]).iter().map(|m| json!({"role": m["role"], "content": m["content"]})).collect();
            let last_user = msgs.len() - 2;
            let stateless =
                chat(&s, None, json!({"model": "chat", "messages": msgs[..=last_user].to_vec(), "max_tokens": 1}))
                    .await;
            let stateless: Value = stateless.json().await.unwrap();
            assert_eq!(v["usage"]["prompt_tokens"], stateless["usage"]["prompt_tokens"], "session {i} round {round}");
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let stored = redis.messages(id);
        assert_eq!(stored.len(), 6, "three turns of user + assistant");
        let users: Vec<&str> = stored.iter().step_by(2).map(|m| m["content"].as_str().unwrap()).collect();
        assert_eq!(
            users,
            [format!("Hello, I am user {i}."), format!("Turn 2 from user {i}."), format!("Turn 3 from user {i}.")]
        );
        let versions: Vec<&str> = stored.iter().skip(1).step_by(2).map(|m| m["version"].as_str().unwrap()).collect();
        assert_eq!(versions, [blue_version.as_str(), "v2", "v2"], "who answered each turn");
        let via_api: Value = s.get(&format!("/v1/sessions/{id}")).await.json().await.unwrap();
        assert_eq!(via_api["messages"].as_array().unwrap().len(), 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_fails_closed_then_recovers_and_two_processes_share_sessions() {
    let mut redis = Redis::start();
    let a = TestServer::start_args(args(Some(&redis))).await;
    let b = TestServer::start_args(args(Some(&redis))).await;
    create(&a, "shared-1").await;
    let r = chat(&a, Some("shared-1"), turn("My name is Ada.")).await;
    assert_eq!(r.status(), 200);
    let r = chat(&b, Some("shared-1"), turn("What is my name?")).await;
    assert_eq!(r.status(), 200, "process b continues the session process a started");
    assert_eq!(redis.messages("shared-1").len(), 4);

    redis.stop();
    let r = chat(&a, Some("shared-1"), turn("Still there?")).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "session_store_unavailable", "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().contains("os error"), "no Redis error text reaches a client: {v}");
    let plain = chat(&a, None, turn("No session needed.")).await;
    assert_eq!(plain.status(), 200, "requests without a session do not need Redis");
    assert!(a.metric("teal_session_store_errors_total{op=\"get\"}").await.unwrap() >= 1.0);

    // Redis comes back (empty: it keeps nothing on disk here); teal reconnects by itself.
    let redis = Redis::start_on(redis.port);
    let mut ok = false;
    for _ in 0..50 {
        let created = reqwest::Client::new()
            .post(format!("{}/v1/sessions", a.url))
            .json(&json!({"id": "shared-2"}))
            .send()
            .await
            .unwrap();
        if created.status() == 201 && chat(&a, Some("shared-2"), turn("Back again.")).await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "sessions work again without restarting teal");
    assert_eq!(redis.messages("shared-2").len(), 2, "the acknowledged turn is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_open_serves_without_history_and_says_so() {
    let mut redis = Redis::start();
    let s = TestServer::start_args(ServeArgs { session_fail_open: Some(true), ..args(Some(&redis)) }).await;
    redis.stop();
    let r = chat(&s, Some("open-1"), turn("Hello?")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-teal-session-warning"].to_str().unwrap().contains("without session history"));
    assert!(s.metric("teal_sessions_served_without_history_total").await.unwrap() >= 1.0);
    // A streamed answer says so in the stream too, just before [DONE].
    let mut body = turn("Streamed?");
    body["stream"] = json!(true);
    let r = chat(&s, Some("open-1"), body).await;
    assert_eq!(r.status(), 200);
    let events = common::sse_events(r).await;
    let warning: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(warning["choices"], json!([]), "{warning}");
    assert!(warning["teal"]["session_warning"].as_str().unwrap().contains("without session history"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_sessions_stream_store_and_guard_their_inputs() {
    let s = TestServer::start_args(ServeArgs { max_session_bytes: Some(400), ..args(None) }).await;
    // A streamed turn is stored before [DONE] is sent.
    let mut body = turn("Hi there.");
    body["stream"] = json!(true);
    body["session_id"] = json!("mem-1");
    create(&s, "mem-1").await;
    let r = chat(&s, None, body).await;
    assert_eq!((r.status().as_u16(), r.headers()["x-teal-session"].to_str().unwrap()), (200, "mem-1"));
    let events = common::sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let v: Value = s.get("/v1/sessions/mem-1").await.json().await.unwrap();
    let stored = v["messages"].as_array().unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0]["content"], "Hi there.");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(String::from))
        .collect();
    assert_eq!(stored[1]["content"], streamed.as_str(), "the stored reply is what was streamed");
    assert_eq!(stored[1]["slot"], "blue");

    for bad in ["a b", "../x", &"x".repeat(129)] {
        let mut body = turn("x");
        body["session_id"] = json!(bad);
        assert_eq!(chat(&s, None, body).await.status(), 400, "{bad:?}");
    }
    let r = chat(
        &s,
        Some("mem-2"),
        json!({"model": "chat", "session_id": "other", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 400, "header and body disagree");
    let big = "y".repeat(500);
    let r = chat(&s, Some("mem-1"), turn(&big)).await;
    assert_eq!(r.status(), 413);
    assert_eq!(s.get("/v1/sessions/nope").await.status(), 404);
    let del = reqwest::Client::new().delete(format!("{}/v1/sessions/mem-1", s.url)).send().await.unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(s.get("/v1/sessions/mem-1").await.status(), 404);
}

async fn slot_of(s: &TestServer, session: Option<&str>) -> String {
    let r = chat(s, session, turn("Hello again.")).await;
    assert_eq!(r.status(), 200);
    r.headers()["x-teal-slot"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_keeps_active_sessions_on_the_old_slot_until_idle_or_timeout() {
    let s = TestServer::start_args(args(None)).await;
    load_v2(&s).await;
    for id in ["drain-a", "drain-b"] {
        create(&s, id).await;
    }
    assert_eq!(slot_of(&s, Some("drain-a")).await, "blue");
    // Windows far longer than anything below takes; the drain then ends at its deadline. (The idle and deadline
    // arithmetic itself is tested on an explicit clock in router/pins.rs.)
    let flip = json!({"expect_live": "blue", "drain_sessions": true, "drain_idle_s": 120, "drain_timeout_s": 4});
    let v: Value = s.admin(Method::POST, "/admin/flip", Some(flip)).await.json().await.unwrap();
    assert_eq!(v["flip"]["pinned_sessions"], 1, "{v}");
    let slots = s.admin_json("/admin/slots").await;
    assert_eq!(
        (slots["slots"]["blue"]["state"].as_str(), slots["slots"]["blue"]["pinned_sessions"].as_u64()),
        (Some("draining"), Some(1))
    );
    assert_eq!(slot_of(&s, Some("drain-a")).await, "blue", "a session active before the flip stays on the old slot");
    assert_eq!(slot_of(&s, Some("drain-b")).await, "green", "new sessions go to the new slot");
    assert_eq!(slot_of(&s, None).await, "green");
    assert_eq!(slot_of(&s, Some("drain-a")).await, "blue", "and it stays while it keeps talking");
    // The deadline ends the drain: blue becomes a ready standby, and the session moves to the new slot.
    s.wait_slot("blue", "ready").await;
    assert_eq!(slot_of(&s, Some("drain-a")).await, "green");
    let history: Value = s.get("/v1/sessions/drain-a").await.json().await.unwrap();
    let versions: Vec<&str> =
        history["messages"].as_array().unwrap().iter().filter_map(|m| m["version"].as_str()).collect();
    assert_eq!(&versions[1..], ["b179c9523d0e", "b179c9523d0e", "v2"], "blue answered while pinned, then green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_turns_on_one_session_are_all_kept_and_an_oversized_history_says_so() {
    let redis = Redis::start();
    let s = TestServer::start_args(ServeArgs { max_total_tokens: Some(256), ..args(Some(&redis)) }).await;
    create(&s, "busy").await;
    create(&s, "long").await;
    let futs = (0..8).map(|i| chat(&s, Some("busy"), turn(&format!("Message {i}."))));
    for r in futures::future::join_all(futs).await {
        assert_eq!(r.status(), 200);
    }
    let stored = redis.messages("busy");
    assert_eq!(stored.len(), 16, "eight turns, none lost");
    for pair in stored.chunks(2) {
        assert_eq!((pair[0]["role"].as_str(), pair[1]["role"].as_str()), (Some("user"), Some("assistant")));
    }
    // The stored history no longer fits this model's context: the error says why.
    let long = "word ".repeat(60);
    let mut last = None;
    for _ in 0..4 {
        let r = chat(&s, Some("long"), turn(&long)).await;
        if r.status() != 200 {
            last = Some((r.status(), r.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (status, v) = last.expect("the history outgrew the context");
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("stored history"), "{v}");
}
