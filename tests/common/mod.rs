//! Shared test helpers: model locations, and a real teal server on 127.0.0.1:0.
#![allow(dead_code)]

use std::path::PathBuf;

/// stories260K from the shared folder beside the checkout.
pub fn stories_dir() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K");
    assert!(p.join("config.json").is_file(), "stories260K not found at {}", p.display());
    p
}

/// SmolLM2 Q4_1 as scripts/fetch-models.sh puts it.
pub fn smollm_path() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "SmolLM2 not found at {}: run scripts/fetch-models.sh", p.display());
    p
}

use teal::config::{Config, ServeArgs};
use tokio::sync::oneshot;

/// A real teal server on 127.0.0.1:<free port>, stopped (gracefully) on drop or by `stop()`.
pub struct TestServer {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts serving `model` with the given args (port and host are chosen here) and waits until ready.
    pub async fn start(model: PathBuf, args: ServeArgs) -> TestServer {
        let config: Config = ServeArgs { model: Some(model), ..args }.resolve().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(teal::server::run(config, listener, async move {
            let _ = rx.await;
        }));
        let server = TestServer { url, stop: Some(tx), task: Some(task) };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(r) = client.get(format!("{}/health/ready", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("server at {} never became ready", self.url);
    }

    /// Requests a graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }

    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        reqwest::Client::new().post(format!("{}{path}", self.url)).json(&body).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new().get(format!("{}{path}", self.url)).send().await.unwrap()
    }

    /// Polls a metric until it equals `want` (up to 10 s); gauges update after the engine step that
    /// answered the client, so a read right after a response can be one step stale.
    pub async fn wait_metric(&self, prefix: &str, want: f64) -> bool {
        for _ in 0..200 {
            if self.metric(prefix).await == Some(want) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    /// One value of a Prometheus metric line that starts with `prefix` (name plus labels).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads an SSE body into its `data:` payloads (the last one is `[DONE]`).
pub async fn sse_events(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ").map(String::from)).collect()
}

/// The directory holding SmolLM2 (served as "smollm2", as `teal serve` names it by default).
pub fn smollm_dir() -> PathBuf {
    smollm_path().parent().unwrap().to_path_buf()
}
