//! The processes of a fleet test, each a real one on loopback: `teal serve` replicas (killed with SIGKILL and
//! restarted on the same ports and state directory), redis-server (optionally with an fsync-always append-only
//! file, so it can be killed and restarted without losing what it acknowledged), haproxy in front of the replicas,
//! and a TCP gate between one replica and Redis that can cut the connection (a partition).

use crate::common::Reaped;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const TOKEN: &str = "fleet-chaos-admin-token-0123456789";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what} did not listen on {port}");
}

/// redis-server on a fixed port; `durable` keeps an append-only file fsynced on every write.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    durable: bool,
    child: Option<Reaped>,
}

impl Redis {
    pub fn start(durable: bool) -> Redis {
        let mut r = Redis { port: free_port(), dir: tempfile::tempdir().unwrap(), durable, child: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let aof = if self.durable {
            ["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            ["--appendonly", "no", "--save", ""]
        };
        let child = Reaped::spawn(
            Command::new("redis-server")
                .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                .args(aof)
                .arg("--dir")
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_port(self.port, "redis-server");
        self.child = Some(child);
        self.wait_loaded();
    }

    /// Waits until redis-server answers PING with PONG (it accepts connections while it still loads its
    /// append-only file, and answers LOADING until it has).
    fn wait_loaded(&self) {
        use std::io::{Read, Write};
        for _ in 0..500 {
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut buf = [0u8; 64];
                let answered = c.write_all(b"PING\r\n").is_ok() && c.read(&mut buf).is_ok_and(|n| n > 0);
                if answered && buf.starts_with(b"+PONG") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on {} never finished loading", self.port);
    }

    /// SIGKILL: nothing is flushed beyond what the append-only file already holds.
    pub fn kill(&mut self) {
        drop(self.child.take());
    }
}

/// One `teal serve` process with blue = `base`, green = `copy` from its model root.
pub struct Replica {
    pub id: String,
    pub port: u16,
    pub admin_port: u16,
    pub state: PathBuf,
    root: PathBuf,
    redis_url: String,
    child: Option<Reaped>,
}

impl Replica {
    pub fn spawn(id: &str, root: &Path, state: &Path, redis_url: &str) -> Replica {
        let mut r = Replica {
            id: id.into(),
            port: free_port(),
            admin_port: free_port(),
            state: state.join(id),
            root: root.to_path_buf(),
            redis_url: redis_url.into(),
            child: None,
        };
        r.restart();
        r
    }

    /// Starts the process again on the same ports and state directory (or another model root).
    pub fn restart_with(&mut self, root: &Path) {
        self.root = root.to_path_buf();
        self.restart();
    }

    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.state).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.state.join("teal.log")).unwrap();
        let child = Reaped::spawn(
            Command::new(env!("CARGO_BIN_EXE_teal"))
                .arg("serve")
                .arg("--blue")
                .arg(self.root.join("base"))
                .arg("--green")
                .arg(self.root.join("copy"))
                .arg("--models-dir")
                .arg(&self.root)
                .arg("--state-dir")
                .arg(&self.state)
                .args(["--served-model-name", "story", "--threads", "1", "--admin-token", TOKEN])
                .args(["--port", &self.port.to_string(), "--admin-port", &self.admin_port.to_string()])
                .args(["--fleet-name", "chaos", "--fleet-redis-url", &self.redis_url, "--replica-id", &self.id])
                .args(["--fleet-prepare-timeout", "3"])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log),
        );
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Every audit event this replica's processes wrote (the file survives restarts).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.state.join("audit.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// haproxy in front of the replicas: round robin, health checked on /health/ready every 100 ms.
pub struct Haproxy {
    pub port: u16,
    _dir: tempfile::TempDir,
    _child: Reaped,
}

impl Haproxy {
    pub fn start(replicas: &[Replica]) -> Haproxy {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let servers: String =
            replicas.iter().map(|r| format!("  server {} 127.0.0.1:{} check\n", r.id, r.port)).collect();
        let cfg = format!(
            "global\n  maxconn 512\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  \
             retries 2\n  option redispatch\nfrontend api\n  bind 127.0.0.1:{port}\n  default_backend teal\n\
             backend teal\n  balance roundrobin\n  option httpchk GET /health/ready\n  http-check expect status 200\n  \
             default-server inter 100ms fall 1 rise 1\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Reaped::spawn(
            Command::new("haproxy").arg("-db").arg("-f").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()),
        );
        wait_port(port, "haproxy (install it: .ci/run does)");
        Haproxy { port, _dir: dir, _child: child }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A TCP relay between one replica and Redis. `cut()` drops its connections and holds new ones without
/// forwarding a byte (the replica's Redis calls time out, as in a partition); `heal()` lets them through again.
pub struct Gate {
    pub port: u16,
    cut: Arc<AtomicBool>,
    epoch: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(upstream: u16) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = tokio::sync::watch::Sender::new(0u64);
        let (cut2, epoch2) = (cut.clone(), epoch.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (cut, mut changed) = (cut2.clone(), epoch2.subscribe());
                tokio::spawn(async move {
                    if cut.load(Ordering::SeqCst) {
                        // Held, never answered: dropped when the gate heals (the client reconnects).
                        let _ = changed.changed().await;
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });
        Gate { port, cut, epoch, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
