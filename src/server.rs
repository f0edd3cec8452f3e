//! Process wiring for `teal serve`: serve the API and the admin API at once (503 until a slot is live), load the
//! startup models through the lifecycle (blue goes live once warmed and gated; green becomes the standby), and
//! on shutdown stop accepting, let in-flight requests finish (up to a timeout), then stop every engine.

use crate::api::admin::AdminState;
use crate::api::{self, AppState};
use crate::config::Config;
use crate::lifecycle::audit::AuditLog;
use crate::lifecycle::{Context, Lifecycle, LoadRequest, Operation};
use crate::router::{LiveRouter, SlotName};
use crate::sessions::{memory::MemoryStore, redis::RedisStore, SessionStore};
use crate::telemetry::Metrics;
use anyhow::{bail, Context as _};
use axum::serve::ListenerExt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The two sockets teal serves: the public API and the admin API.
pub struct Listeners {
    pub api: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses the configuration names.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |host: &str, port: u16| {
            let addr = format!("{host}:{port}");
            async move { TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}")) }
        };
        Ok(Listeners {
            api: bind(&config.host, config.port).await?,
            admin: bind(&config.admin_host, config.admin_port).await?,
        })
    }
}

/// The admin token: TEAL_ADMIN_TOKEN / --admin-token, else the token file, else (loopback only) a new random
/// token written to <state-dir>/admin.token with owner-only permissions.
pub fn admin_token(config: &Config, admin_addr: SocketAddr) -> anyhow::Result<String> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    if let Some(f) = &config.admin_token_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading the admin token file {}", f.display()))?;
        let t = t.trim().to_string();
        if t.is_empty() {
            bail!("the admin token file {} is empty", f.display());
        }
        return Ok(t);
    }
    if !admin_addr.ip().is_loopback() {
        bail!(
            "refusing to serve the admin API on {admin_addr} without a token: set TEAL_ADMIN_TOKEN or \
             --admin-token-file, or keep the admin API on a loopback address"
        );
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let path = config.state_dir.join("admin.token");
    write_private(&path, &token).with_context(|| format!("writing the admin token to {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

/// Starts the startup loads and waits for them; blue must end live (a failure stops the server), a failed green
/// is reported and left failed.
async fn load_startup_models(config: &Config, lifecycle: &Lifecycle) -> anyhow::Result<()> {
    let blue = config.blue_path()?;
    let mut ops: Vec<(SlotName, PathBuf, Operation)> = vec![];
    for (slot, path, go_live) in
        std::iter::once((SlotName::Blue, blue, true)).chain(config.green_path().map(|g| (SlotName::Green, g, false)))
    {
        let req = LoadRequest { model: path.display().to_string(), ..Default::default() };
        let op = lifecycle.load(slot, req, true, go_live).await.map_err(|e| anyhow::anyhow!("{slot}: {e}"))?;
        ops.push((slot, path, op));
    }
    for (slot, path, op) in ops {
        let done = lifecycle.wait(&op.id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let problem = match (done.error, done.gates_passed) {
            (Some(e), _) => Some(format!("loading {} into {slot}: {e}", path.display())),
            (None, Some(false)) => {
                let status = lifecycle.status().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let gates = &status["slots"][slot.as_str()]["gates"];
                Some(format!("{} in {slot} failed its gates: {gates}", path.display()))
            }
            _ => None,
        };
        match problem {
            // Without a live blue there is nothing to serve.
            Some(p) if slot == SlotName::Blue => bail!(p),
            // A bad standby must not take the live slot down: it stays failed (or gated out) for the operator.
            Some(p) => tracing::error!(problem = %p, "the startup standby is not ready"),
            None => {}
        }
    }
    if lifecycle.router.peek().is_none() {
        bail!("the blue slot did not go live");
    }
    Ok(())
}

/// Serves until `shutdown` resolves. Returns an error if a startup model cannot be loaded.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(n) = config.threads {
        // Only the first call in a process takes effect; tests that start several servers share one pool.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    let token = admin_token(&config, listeners.admin.local_addr()?)?;
    let audit_path = config.state_dir.join("audit.jsonl");
    let audit =
        Arc::new(AuditLog::open(Some(&audit_path)).with_context(|| format!("opening {}", audit_path.display()))?);
    let metrics = Metrics::new();
    let router = Arc::new(LiveRouter::new(config.served_model_name.clone()));
    let lifecycle = Lifecycle::start(Context {
        router: router.clone(),
        audit,
        metrics: metrics.clone(),
        engine: config.engine.clone(),
        batch: config.batch,
        models_dir: config.models_dir.clone(),
        devices: config.slot_devices.clone(),
        dtype: config.dtype.clone(),
        budgets: crate::memory::Budgets::new(
            config.memory_budget.clone(),
            Arc::new(crate::memory::probe::SystemProbe::default()),
        ),
        registry: crate::models::shared::TensorRegistry::new(),
        wake_on_rollback: config.wake_on_rollback,
    });
    let ttl = Duration::from_secs(config.session_ttl_s);
    let sessions: Arc<dyn SessionStore> = match &config.redis_url {
        Some(url) => Arc::new(RedisStore::new(url, ttl).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => Arc::new(MemoryStore::new(ttl, config.max_sessions)),
    };
    tracing::info!(store = sessions.kind(), "sessions");
    let state = AppState {
        router,
        metrics,
        sessions,
        session_fail_open: config.session_fail_open,
        max_session_bytes: config.max_session_bytes,
        max_body_bytes: config.max_body_bytes,
        max_image_pixels: config.max_image_pixels,
        log_prompts: config.log_prompts,
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    tracing::info!(api = %listeners.api.local_addr()?, admin = %listeners.admin.local_addr()?, "listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serve = |listener: TcpListener, app: axum::Router| {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            // No Nagle delay on small writes: every streamed token leaves at once.
            axum::serve(listener.tap_io(|tcp| drop(tcp.set_nodelay(true))), app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let api_server = serve(listeners.api, api::router(state));
    let admin_server =
        serve(listeners.admin, api::admin::router(AdminState { lifecycle: lifecycle.clone(), token: Arc::new(token) }));
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: finishing in-flight requests");
        let _ = signal_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    let load_result = tokio::select! {
        r = load_startup_models(&config, &lifecycle) => r,
        _ = stopped.wait_for(|s| *s) => Ok(()),
    };
    if let Err(e) = &load_result {
        tracing::error!(error = %format!("{e:#}"), "startup model failed to load; stopping");
        let _ = stop_tx.send(true);
    }
    let _ = stopped.wait_for(|s| *s).await;
    let timeout = Duration::from_secs(config.shutdown_timeout_s);
    if tokio::time::timeout(timeout, async { futures::join!(api_server, admin_server) }).await.is_err() {
        tracing::warn!(secs = config.shutdown_timeout_s, "in-flight requests did not finish in time");
    }
    let residents = lifecycle.shutdown().await;
    tokio::task::spawn_blocking(move || residents.iter().for_each(|r| r.backend.shutdown())).await.ok();
    load_result
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
