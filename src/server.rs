//! Process wiring for `teal serve`: bind, serve the API at once (503 until ready), load and warm the model in
//! the background, and on shutdown stop accepting, let in-flight requests finish (up to a timeout), then stop
//! the engine.

use crate::api::{self, AppState};
use crate::config::Config;
use crate::engine::Engine;
use crate::models::{self, LoadOptions};
use crate::telemetry::Metrics;
use anyhow::Context;
use arc_swap::ArcSwapOption;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Loads the configured model, starts its engine and warms it. Blocking.
pub fn load_engine(config: &Config, metrics: &Metrics) -> anyhow::Result<Engine> {
    let path = config.model_path()?;
    let opts = LoadOptions {
        device: crate::device::parse_device(&config.device)?,
        dtype: crate::device::parse_dtype(&config.dtype)?,
    };
    let t0 = Instant::now();
    let model = models::load(&path, &opts).with_context(|| format!("loading {}", path.display()))?;
    let name = config.served_model_name.clone().unwrap_or_else(|| model.name.clone());
    tracing::info!(model = %name, format = %model.format, secs = t0.elapsed().as_secs_f64(), "model loaded");
    let engine = Engine::start(Arc::new(model), config.engine.clone(), metrics.for_model(&name))?;
    let t1 = Instant::now();
    engine.warm_up()?;
    tracing::info!(
        kv_tokens = engine.kv_capacity(),
        kv_mib = engine.kv_bytes() >> 20,
        warmup_secs = t1.elapsed().as_secs_f64(),
        "engine warmed and ready"
    );
    Ok(engine)
}

/// Serves until `shutdown` resolves. Returns an error if the model cannot be loaded.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(n) = config.threads {
        // Only the first call in a process takes effect; tests that start several servers share one pool.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    let metrics = Metrics::new();
    let state = AppState {
        engine: Arc::new(ArcSwapOption::empty()),
        metrics: metrics.clone(),
        served_model_name: config.served_model_name.clone(),
        max_body_bytes: config.max_body_bytes,
        log_prompts: config.log_prompts,
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let app = api::router(state.clone());
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (load_cfg, load_state) = (config.clone(), state.clone());
    let loader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let engine = load_engine(&load_cfg, &metrics)?;
        load_state.engine.store(Some(Arc::new(engine)));
        Ok(())
    });
    let mut stop_for_serve = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_for_serve.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });

    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: finishing in-flight requests");
        let _ = signal_tx.send(true);
    });
    let load_result = loader.await.context("model loader panicked")?;
    if let Err(e) = &load_result {
        tracing::error!(error = %format!("{e:#}"), "model failed to load; stopping");
        let _ = stop_tx.send(true);
    }
    let mut stopped = stop_rx.clone();
    let _ = stopped.wait_for(|s| *s).await;
    let timeout = Duration::from_secs(config.shutdown_timeout_s);
    if tokio::time::timeout(timeout, server).await.is_err() {
        tracing::warn!(secs = config.shutdown_timeout_s, "in-flight requests did not finish in time");
    }
    if let Some(engine) = state.engine.swap(None) {
        tokio::task::spawn_blocking(move || engine.shutdown()).await.ok();
    }
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
