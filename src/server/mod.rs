//! Process wiring for `teal serve`: serve the API and the admin API at once (503 until a slot is live), load the
//! startup models through the lifecycle (blue goes live once warmed and gated; green becomes the standby), and
//! on shutdown stop accepting, let in-flight requests finish (up to a timeout), then end what is left and stop
//! every engine. If the lifecycle controller ever stops, the server shuts down with an error (so the process
//! exits non-zero and an orchestrator restarts it). token.rs: the admin token.

#![deny(clippy::indexing_slicing)]

pub mod token;

use crate::api::admin::AdminState;
use crate::api::limits::CpuPool;
use crate::api::{self, AppState};
use crate::config::Config;
use crate::lifecycle::audit::AuditLog;
use crate::lifecycle::{Context, Lifecycle, LoadRequest, Operation};
use crate::net::{self, shutdown::Phase, shutdown::Shutdown, shutdown::ShutdownSignal};
use crate::router::LiveRouter;
use crate::sessions::{memory::MemoryStore, redis::RedisStore, SessionStore};
use crate::slot::SlotName;
use crate::telemetry::Metrics;
use anyhow::{bail, Context as _};
use std::future::Future;
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
                let gates = status.slots.get(slot).gates.as_ref().and_then(|g| g.first_failure());
                let gates = gates.unwrap_or_else(|| "no gate report".into());
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

/// Everything the server runs, built from the configuration: the lifecycle (its controller started, no slot
/// loaded yet) and the state of both routers (`api::router(app)`, `api::admin::router(admin)`). `run` serves
/// them on sockets; tests drive them in-process with tower's `oneshot`.
pub struct Parts {
    pub lifecycle: Lifecycle,
    pub app: AppState,
    pub admin: AdminState,
}

pub fn build(config: &Config, token: String, shutdown: &ShutdownSignal) -> anyhow::Result<Parts> {
    let viewer_token =
        token::viewer_token(config.admin_viewer_token.as_deref(), config.admin_viewer_token_file.as_deref(), &token)?;
    let audit_path = config.state_dir.join("audit.jsonl");
    let audit =
        Arc::new(AuditLog::open(Some(&audit_path)).with_context(|| format!("opening {}", audit_path.display()))?);
    let metrics = Metrics::new();
    let router = Arc::new(LiveRouter::new(config.served_model_name.clone()));
    let lifecycle = Lifecycle::start(Context {
        router: router.clone(),
        audit,
        metrics: metrics.clone(),
        batch: config.batch,
        defaults: Arc::new(crate::lifecycle::prepare::LoadDefaults {
            models_dir: config.models_dir.clone(),
            devices: config.slot_devices.clone(),
            dtype: config.dtype.clone(),
            engine: config.engine.clone(),
        }),
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
    let rollouts = crate::rollout::Rollouts::new(lifecycle.clone(), metrics.clone());
    let fleet = match &config.fleet {
        Some(f) => {
            tracing::info!(fleet = %f.name, replica = %f.replica_id, "fleet mode");
            Some(
                crate::fleet::Fleet::start(f.clone(), lifecycle.clone(), rollouts.clone(), metrics.clone())
                    .map_err(|e| anyhow::anyhow!(e))?,
            )
        }
        None => None,
    };
    let traffic = crate::api::dashboard::traffic::Traffic::default();
    traffic.start_sampler(metrics.clone(), &router, shutdown.clone());
    let app = AppState {
        router,
        metrics,
        rollouts: Some(rollouts.clone()),
        sessions,
        session_fail_open: config.session_fail_open,
        max_session_bytes: config.max_session_bytes,
        limits: Arc::new(config.limits.clone()),
        cpu: CpuPool::new(config.preprocess_threads, config.preprocess_queue),
        control: lifecycle.health.clone(),
        shutdown: shutdown.clone(),
        log_prompts: config.log_prompts,
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let admin = AdminState {
        lifecycle: lifecycle.clone(),
        rollouts,
        fleet,
        token: Arc::new(token),
        viewer_token: viewer_token.map(Arc::new),
        sessions: Default::default(),
        traffic,
        models_dir: config.models_dir.clone(),
        loopback_only: admin_is_loopback(&config.admin_host),
        feeds: Arc::new(tokio::sync::Semaphore::new(crate::api::dashboard::feed::MAX_FEEDS)),
        shutdown: shutdown.clone(),
    };
    Ok(Parts { lifecycle, app, admin })
}

/// Whether the admin listener's configured host is a loopback address or name.
fn admin_is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Serves until `shutdown` resolves (or the lifecycle controller stops, an error). Returns an error if a startup
/// model cannot be loaded. Shutdown is bounded: in-flight requests get `shutdown_timeout`, then streams end with
/// an error event and connections close; this returns within about two seconds after that, whatever a load or
/// gate thread is doing.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(n) = config.threads {
        // Only the first call in a process takes effect; tests that start several servers share one pool.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    let admin_addr = listeners.admin.local_addr()?;
    let token = token::admin_token(
        config.admin_token.as_deref(),
        config.admin_token_file.as_deref(),
        &config.state_dir,
        admin_addr,
    )?;
    let (phases, signal) = Shutdown::new();
    let Parts { lifecycle, app, admin } = build(&config, token, &signal)?;
    let fleet = admin.fleet.clone();
    tracing::info!(api = %listeners.api.local_addr()?, admin = %admin_addr, "listening");
    let api_server = tokio::spawn(net::serve(listeners.api, api::router(app), config.api_conns, signal.clone()));
    let admin_server =
        tokio::spawn(net::serve(listeners.admin, api::admin::router(admin), config.admin_conns, signal.clone()));
    let (stop_tx, mut stopped) = tokio::sync::watch::channel(None::<String>);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: finishing in-flight requests");
        request_stop(&on_signal, String::new());
    });
    let health = lifecycle.health.clone();
    let on_death = stop_tx.clone();
    tokio::spawn(async move {
        let why = health.stopped().await;
        request_stop(&on_death, why);
    });
    let load_result = tokio::select! {
        r = load_startup_models(&config, &lifecycle) => r,
        _ = stopped.wait_for(Option::is_some) => Ok(()),
    };
    if let Err(e) = &load_result {
        tracing::error!(error = %format!("{e:#}"), "startup model failed to load; stopping");
        request_stop(&stop_tx, String::new());
    } else if let Some(f) = &fleet {
        f.begin();
    }
    let reason = stopped.wait_for(Option::is_some).await.ok().and_then(|r| r.clone()).unwrap_or_default();
    if let Some(f) = &fleet {
        let _ = tokio::time::timeout(Duration::from_secs(1), f.leave()).await;
    }
    drain(&config, &phases, api_server, admin_server).await;
    let residents = tokio::time::timeout(Duration::from_millis(500), lifecycle.shutdown()).await.unwrap_or_default();
    // Engines finish their current step and stop; a hung one is not waited for.
    let stop_engines = tokio::task::spawn_blocking(move || residents.iter().for_each(|r| r.backend.shutdown()));
    let _ = tokio::time::timeout(Duration::from_secs(1), stop_engines).await;
    if !reason.is_empty() {
        anyhow::bail!("the lifecycle controller stopped: {reason}");
    }
    load_result
}

/// Asks the server to stop, once: `why` is empty for a requested shutdown, else the reason it must.
fn request_stop(tx: &tokio::sync::watch::Sender<Option<String>>, why: String) {
    tx.send_if_modified(|s| {
        if s.is_some() {
            return false;
        }
        *s = Some(why);
        true
    });
}

/// Stops accepting, lets in-flight requests finish up to the shutdown timeout, then ends what is left.
async fn drain(
    config: &Config,
    phases: &Shutdown,
    api: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
) {
    phases.enter(Phase::Draining);
    let both = async {
        let _ = api.await;
        let _ = admin.await;
    };
    tokio::pin!(both);
    let timeout = Duration::from_secs(config.shutdown_timeout_s);
    if tokio::time::timeout(timeout, &mut both).await.is_err() {
        tracing::warn!(secs = config.shutdown_timeout_s, "in-flight requests did not finish in time; ending them");
        phases.enter(Phase::Deadline);
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut both).await;
    }
    phases.enter(Phase::Deadline);
}

/// Raises the soft limit on open files to the hard limit (as nginx and Go do), so the connection caps, not the
/// default of 1024 descriptors, decide when connections are refused: a flood on the API port must not leave the
/// admin listener unable to accept. Warns when the limit is still below what the caps allow.
pub fn raise_open_files_limit(config: &Config) {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct; no other state is touched.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        if ok && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max.min(1 << 20), rlim_max: lim.rlim_max };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
        let wanted = (config.api_conns.max_connections + config.admin_conns.max_connections + 256) as libc::rlim_t;
        if ok && lim.rlim_cur < wanted {
            tracing::warn!(
                open_files = lim.rlim_cur,
                wanted,
                "the open-file limit is below the connection caps plus model files; lower --max-connections or \
                 raise the limit (ulimit -n)"
            );
        }
    }
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
