//! Shared test helpers: model locations, and a real teal server on 127.0.0.1:0.
#![allow(dead_code)]

pub mod direct;
pub mod rollout;

use std::path::PathBuf;

/// stories260K from the shared folder beside the checkout (or `TEAL_STORIES_DIR`, for a test binary run elsewhere,
/// such as on a GPU machine).
pub fn stories_dir() -> PathBuf {
    let p = std::env::var_os("TEAL_STORIES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K"));
    assert!(p.join("config.json").is_file(), "stories260K not found at {}", p.display());
    p
}

/// SmolLM2 Q4_1 as scripts/fetch-models.sh puts it (or `TEAL_SMOLLM_PATH`).
pub fn smollm_path() -> PathBuf {
    let p = std::env::var_os("TEAL_SMOLLM_PATH").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(p.is_file(), "SmolLM2 not found at {}: run scripts/fetch-models.sh", p.display());
    p
}

/// Gemma 3 270M Q4_K_M as scripts/fetch-models.sh reassembles it (or `TEAL_GEMMA_PATH`).
pub fn gemma_path() -> PathBuf {
    let p = std::env::var_os("TEAL_GEMMA_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/gemma3/gemma-3-270m-q4_k_m.gguf"));
    assert!(p.is_file(), "Gemma 3 not found at {}: run scripts/fetch-models.sh", p.display());
    p
}

/// A GGUF vocab file of another model family (`name`: qwen2, phi-3, ...), with its `.inp` texts and `.out` ids
/// beside it, as scripts/fetch-models.sh puts them.
pub fn vocab_path(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/vocab/ggml-vocab-{name}.gguf"));
    assert!(p.is_file(), "{} not found: run scripts/fetch-models.sh", p.display());
    p
}

use teal::config::{Config, ServeArgs};
use tokio::sync::oneshot;

/// The admin token every test server uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A real teal server (API and admin API) on 127.0.0.1:<free ports>, with its own state directory, stopped
/// (gracefully) on drop or by `stop()`.
pub struct TestServer {
    pub url: String,
    pub admin_url: String,
    pub state_dir: PathBuf,
    _state: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts serving `model` in the blue slot with the given args and waits until it is live.
    pub async fn start(model: PathBuf, args: ServeArgs) -> TestServer {
        Self::start_args(ServeArgs { model: Some(model), ..args }).await
    }

    /// Starts a server as `args` say (ports, token and, unless set, the state directory are chosen here) and
    /// waits until a slot is live.
    pub async fn start_args(args: ServeArgs) -> TestServer {
        let server = Self::spawn(args).await;
        server.wait_ready().await;
        server
    }

    /// Starts a server without waiting for it.
    pub async fn spawn(args: ServeArgs) -> TestServer {
        let (state, state_dir) = match &args.state_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let args = ServeArgs {
            admin_token: Some(ADMIN_TOKEN.into()),
            state_dir: Some(state_dir.clone()),
            threads: args.threads.or(Some(2)),
            ..args
        };
        let config: Config = args.resolve().unwrap();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", api.local_addr().unwrap());
        let admin_url = format!("http://{}", admin.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let listeners = teal::server::Listeners { api, admin };
        let task = tokio::spawn(teal::server::run(config, listeners, async move {
            let _ = rx.await;
        }));
        TestServer { url, admin_url, state_dir, _state: state, stop: Some(tx), task: Some(task) }
    }

    /// An admin API request with the right token.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut r =
            reqwest::Client::new().request(method, format!("{}{path}", self.admin_url)).bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    /// GET on the admin API, as JSON (panics on a non-2xx answer).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = self.admin(reqwest::Method::GET, path, None).await;
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// The first event of the dashboard's live feed (GET /ui/stream) as `token` sees it.
    pub async fn dashboard_state(&self, token: &str) -> serde_json::Value {
        let mut resp = reqwest::Client::new()
            .get(format!("{}/ui/stream", self.admin_url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut buf = String::new();
        while !buf.contains("\n\n") {
            buf.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().expect("an event")));
        }
        let data = buf.lines().find_map(|l| l.strip_prefix("data: ")).expect("a data line");
        serde_json::from_str(data).unwrap()
    }

    /// Waits for an admin operation to finish and returns it.
    pub async fn wait_op(&self, id: &str) -> serde_json::Value {
        for _ in 0..6000 {
            let op = self.admin_json(&format!("/admin/operations/{id}")).await;
            if op["status"] != "running" {
                return op;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("operation {id} never finished");
    }

    /// Waits until `slot` is in `state` (e.g. the startup standby becoming ready).
    pub async fn wait_slot(&self, slot: &str, state: &str) {
        for _ in 0..6000 {
            let v = self.admin_json("/admin/slots").await;
            if v["slots"][slot]["state"] == state {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{slot} never became {state}");
    }

    /// Starts a load into `slot` and waits for it to finish; returns the finished operation.
    pub async fn load(&self, slot: &str, body: serde_json::Value) -> serde_json::Value {
        let r = self.admin(reqwest::Method::POST, &format!("/admin/slots/{slot}/load"), Some(body)).await;
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 202, "{v}");
        self.wait_op(v["operation"]["id"].as_str().unwrap()).await
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..2400 {
            assert!(
                !self.task.as_ref().is_some_and(|t| t.is_finished()),
                "server at {} stopped while starting",
                self.url
            );
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

    /// One value of a Prometheus metric: `query` is `name` or `name{k="v",...}`, and a line matches when it has
    /// that name and at least those labels (in any order, others allowed).
    pub async fn metric(&self, query: &str) -> Option<f64> {
        let text = self.get("/metrics").await.text().await.unwrap();
        metric_value(&text, query)
    }
}

/// The value of the first sample line of `text` that matches `query` (see `TestServer::metric`).
pub fn metric_value(text: &str, query: &str) -> Option<f64> {
    let (name, labels) = match query.split_once('{') {
        Some((n, l)) => (n, l.trim_end_matches('}')),
        None => (query, ""),
    };
    let wanted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let have: Vec<&str> = l.split(',').collect();
        (n == name && wanted.iter().all(|w| have.contains(w))).then(|| value.parse().ok()).flatten()
    })
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

/// Runs `teal bench ARGS` (the real binary) off the async runtime; returns (success, stdout + stderr).
pub async fn bench(args: Vec<String>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .arg("bench")
            .args(&args)
            .env_remove("TEAL_ADMIN_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn s(v: &str) -> String {
    v.to_string()
}

/// A child process that is killed and reaped when dropped, so a test that fails half-way leaves no server
/// (or Redis) running behind it.
pub struct Reaped(Option<std::process::Child>);

impl Reaped {
    pub fn spawn(cmd: &mut std::process::Command) -> Reaped {
        Reaped(Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for the process to exit by itself (off the async runtime) and returns how it exited.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("a child");
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Copies the files of a model directory (not recursive: model directories are flat).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
