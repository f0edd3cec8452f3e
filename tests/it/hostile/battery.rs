//! A server under attack and the checks every case ends with.

use crate::common::{self, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use teal::config::ServeArgs;

/// The prompt whose greedy continuation must never change.
const PROBE: &str = "Once upon a time, there was a";

pub struct Battery {
    pub s: TestServer,
    /// The server's model root: cases write their hostile models here.
    pub models: tempfile::TempDir,
    baseline: String,
    /// Names of the cases checked so far.
    pub cases: Vec<String>,
    /// The route and request that probe the live slot.
    probe: (String, Value),
}

/// Settings every battery server shares: short network deadlines so the cases run fast.
pub fn fast_args() -> ServeArgs {
    ServeArgs {
        header_timeout: Some(2.0),
        write_timeout: Some(2.0),
        body_timeout: Some(3.0),
        shutdown_timeout: Some(2),
        ..Default::default()
    }
}

impl Battery {
    /// stories260K live in blue, an empty model root for the cases' files.
    pub async fn start(args: ServeArgs) -> Battery {
        let models = tempfile::tempdir().unwrap();
        let args = ServeArgs {
            blue: Some(common::stories_dir()),
            models_dir: Some(models.path().to_path_buf()),
            served_model_name: Some("stories".into()),
            ..args
        };
        let probe = json!({"model": "stories", "prompt": PROBE, "max_tokens": 12, "temperature": 0});
        Self::with(TestServer::start_args(args).await, models, ("/v1/completions".into(), probe)).await
    }

    /// A battery around a server already started (another model kind), probed with `probe` on `path`.
    pub async fn with(s: TestServer, models: tempfile::TempDir, probe: (String, Value)) -> Battery {
        let mut b = Battery { s, models, baseline: String::new(), cases: vec![], probe };
        b.baseline = b.answer().await;
        assert!(!b.baseline.is_empty());
        b
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let d = self.models.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The live slot's answer to the probe (the whole body, minus the fields that change per request).
    async fn answer(&self) -> String {
        let (path, body) = (&self.probe.0, &self.probe.1);
        let r = reqwest::Client::new().post(format!("{}{path}", self.s.url)).json(body).send().await.unwrap();
        assert_eq!(r.status(), 200, "the live slot must answer");
        let mut v: Value = r.json().await.unwrap();
        for k in ["id", "created"] {
            v.as_object_mut().map(|o| o.remove(k));
        }
        if let Some(choices) = v.get("choices") {
            return choices.to_string();
        }
        v["outputs"].to_string()
    }

    /// Ends a case: the server task runs, the admin API answers within a second, the live answer is unchanged.
    pub async fn check(&mut self, case: &str) {
        assert!(!self.s.task.as_ref().is_some_and(|t| t.is_finished()), "{case}: the server stopped");
        let admin = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
        let r = admin
            .get(format!("{}/admin/slots", self.s.admin_url))
            .bearer_auth(common::ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{case}: the admin API did not answer within 1 s: {e}"));
        assert_eq!(r.status(), 200, "{case}: admin status");
        assert_eq!(self.answer().await, self.baseline, "{case}: the live slot's greedy answer changed");
        self.cases.push(case.to_string());
    }

    /// POSTs raw bytes with the given content type to the public API.
    pub async fn send(&self, path: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let mut r = reqwest::Client::new().post(format!("{}{path}", self.s.url)).body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Asks to load `model` (a name in the model root) into green with `extra` settings; returns the HTTP status
    /// and, when the load started, the finished operation.
    pub async fn load(&self, model: &str, extra: Value) -> (u16, Value) {
        let mut body = json!({"model": model});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self.s.admin(Method::POST, "/admin/slots/green/load", Some(body)).await;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status != 202 {
            return (status, v);
        }
        (status, self.s.wait_op(v["operation"]["id"].as_str().unwrap()).await)
    }

    /// A load that must end as a failed standby whose reason names `reason`.
    pub async fn load_fails(&mut self, case: &str, model: &str, reason: &str) {
        let (status, op) = self.load(model, json!({})).await;
        assert_eq!(status, 202, "{case}: {op}");
        assert_eq!(op["status"], "failed", "{case}: {op}");
        let error = op["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{case}: expected {reason:?} in {error:?}");
        let slots = self.s.admin_json("/admin/slots").await;
        assert_eq!(slots["slots"]["green"]["state"], "failed", "{case}: {slots}");
        assert!(slots["slots"]["green"]["reason"].as_str().unwrap_or_default().contains(reason), "{case}");
        assert_eq!(slots["live"], "blue", "{case}");
        self.check(case).await;
    }

    /// A load refused at once with `status` and a message naming `reason`.
    pub async fn load_refused(&mut self, case: &str, model: &str, extra: Value, status: u16, reason: &str) {
        let (got, v) = self.load(model, extra).await;
        assert_eq!(got, status, "{case}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(reason), "{case}: expected {reason:?} in {msg:?}");
        self.check(case).await;
    }

    /// Prints the cases (the battery's count is the sum over its tests).
    pub fn report(&self, group: &str) {
        eprintln!("{group}: {} cases passed: {}", self.cases.len(), self.cases.join("; "));
    }
}
