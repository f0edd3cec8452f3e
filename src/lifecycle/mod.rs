//! The slot lifecycle: load -> warm -> gate -> flip / rollback / unload. One controller task (actor/) owns
//! all slot state and is its only writer; admin operations are commands sent to it over a channel and answered
//! over oneshots, so two operations can never both pass the same check. Long work (loading, warm-up, gates)
//! runs on a blocking thread (pipeline.rs) that reports back to the controller as further commands.
//!
//! state.rs: the pure transition function. views.rs: what the admin API answers (operations, slot status),
//! typed. spec.rs: model paths and per-model settings. prepare.rs: what a load
//! request resolves to, worked out off the controller (model files are untrusted). guard.rs: the threads that
//! touch model files. checks/: warm-up and gates, what runs on a standby before it may go live, for every model
//! kind. audit.rs: the persisted audit log.
//!
//! The controller cannot die silently: `Lifecycle::start` watches its task, and `ControllerHealth` tells the
//! server (which then exits non-zero, and /health/live answers 503) if it ever stops without being asked to.

mod actor;
pub mod audit;
pub mod caps;
pub mod checks;
pub mod guard;
pub mod memory_report;
pub mod park;
mod pipeline;
pub mod prepare;
mod report;
pub mod spec;
pub mod state;
pub mod views;

use crate::router::{LiveRouter, Resident};
use crate::slot::SlotName;
use crate::telemetry::Metrics;
use audit::AuditLog;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
pub use views::{OpKind, OpStatus, Operation, Phase, Status, Unloaded};

/// Why an admin operation was refused; api/admin.rs maps each to its HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    /// 409: the slot is busy, live, not ready, or the expected live slot differs.
    #[error("{0}")]
    Conflict(String),
    /// 409 with type gate_failed: the standby's gates did not pass.
    #[error("{0}")]
    GateFailed(String),
    /// 403: a path outside the model root.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    /// 409 with type insufficient_memory: the load does not fit the device's budget.
    #[error("{0}")]
    InsufficientMemory(String),
    /// A rollback whose target is parked and must wake first (handled by `Lifecycle::rollback`).
    #[error("{0} is parked; wake it before it can go live")]
    Parked(SlotName),
}

impl From<spec::PathError> for AdminError {
    fn from(e: spec::PathError) -> Self {
        match e {
            spec::PathError::OutsideRoot(_) => AdminError::Forbidden(e.to_string()),
            spec::PathError::NotFound(_) => AdminError::NotFound(e.to_string()),
            spec::PathError::Invalid(_) => AdminError::BadRequest(e.to_string()),
        }
    }
}

/// POST /admin/slots/{slot}/load.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// A name in the model root, or a path under it.
    pub model: String,
    /// Default: the model's teal.toml `version`, else the first 12 hex digits of its digest.
    pub version: Option<String>,
    /// Default: the slot's device (`--blue-device` / `--green-device`, else `--device`).
    pub device: Option<String>,
    pub dtype: Option<String>,
    /// Overrides of the model's `[warmup]` settings.
    pub warmup: Option<Value>,
    /// Overrides of the model's `[gates.*]` settings.
    pub gates: Option<Value>,
    /// Overrides of the model's `[timeouts]` (load_s, warmup_s, gates_s).
    pub timeouts: Option<Value>,
}

/// POST /admin/flip.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlipRequest {
    /// Refuse unless this slot is live now (guards against two operators flipping at once).
    pub expect_live: Option<SlotName>,
    /// The slot to make live; default: the standby.
    pub to: Option<SlotName>,
    /// Skip the gates (audited).
    #[serde(default)]
    pub force: bool,
    /// Keep sessions active on the old slot there until they go idle (`drain_idle_s`, default 10) or
    /// `drain_timeout_s` (default 60) ends; new sessions go to the new slot.
    #[serde(default)]
    pub drain_sessions: bool,
    pub drain_timeout_s: Option<f64>,
    pub drain_idle_s: Option<f64>,
    /// Set by a rollout for its own promotion or rollback flips (never from JSON): any other flip ends the
    /// running rollout.
    #[serde(skip)]
    pub rollout: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlipOutcome {
    pub live: SlotName,
    pub previous: Option<SlotName>,
    pub version: String,
    pub previous_version: Option<String>,
    /// The atomic pointer swap alone.
    pub swap_us: f64,
    pub forced: bool,
    pub rollback: bool,
    /// Sessions kept on the old slot by `drain_sessions`.
    pub pinned_sessions: usize,
}

/// What the controller needs from the server.
pub struct Context {
    pub router: Arc<LiveRouter>,
    pub audit: Arc<AuditLog>,
    pub metrics: Metrics,
    /// Dynamic batching of the embedding and image kinds.
    pub batch: crate::batcher::BatchConfig,
    /// The model root, default devices and dtype, and the engine settings every load starts from.
    pub defaults: Arc<prepare::LoadDefaults>,
    pub budgets: crate::memory::Budgets,
    /// Identical weights are held once per device.
    pub registry: crate::models::shared::TensorRegistry,
    /// A rollback to a parked slot wakes it (else it is refused).
    pub wake_on_rollback: bool,
}

pub(crate) enum Command {
    Load {
        slot: SlotName,
        model: String,
        prepared: Box<prepare::Prepared>,
        go_live: bool,
        reply: oneshot::Sender<Result<Operation, AdminError>>,
    },
    /// Cancel a running operation (an operator's request, or a stage timeout inside the controller).
    Cancel {
        id: String,
        reply: oneshot::Sender<Result<Operation, AdminError>>,
    },
    Flip {
        req: FlipRequest,
        rollback: bool,
        reply: oneshot::Sender<Result<FlipOutcome, AdminError>>,
    },
    Unload {
        slot: SlotName,
        reply: oneshot::Sender<Result<Unloaded, AdminError>>,
    },
    Status {
        reply: oneshot::Sender<Box<Status>>,
    },
    Operation {
        id: String,
        reply: oneshot::Sender<Option<Operation>>,
    },
    Park {
        slot: SlotName,
        reply: oneshot::Sender<Result<Operation, AdminError>>,
    },
    Wake {
        slot: SlotName,
        reply: oneshot::Sender<Result<Operation, AdminError>>,
    },
    Memory {
        reply: oneshot::Sender<memory_report::MemoryReport>,
    },
    Standby {
        slot: SlotName,
        reply: oneshot::Sender<Result<Arc<Resident>, AdminError>>,
    },
    Report(report::Report),
    Shutdown {
        reply: oneshot::Sender<Vec<Arc<Resident>>>,
    },
}

/// Whether the controller task still runs. If it stops without a shutdown, the reason is kept and every waiter
/// of `stopped` wakes: the server then exits non-zero (an orchestrator restarts it) instead of serving with a dead
/// control plane.
#[derive(Default)]
pub struct ControllerHealth {
    dead: std::sync::Mutex<Option<String>>,
    notify: tokio::sync::Notify,
    /// Why the server must not report ready although a slot is live (a fleet replica that has not adopted the
    /// fleet's committed version yet).
    hold: std::sync::Mutex<Option<String>>,
}

impl ControllerHealth {
    /// Holds readiness back (`Some(why)`) or releases it (`None`).
    pub fn hold_ready(&self, why: Option<String>) {
        if let Ok(mut h) = self.hold.lock() {
            *h = why;
        }
    }

    /// Why readiness is held back, if it is.
    pub fn ready_hold(&self) -> Option<String> {
        self.hold.lock().ok().and_then(|h| h.clone())
    }

    pub fn alive(&self) -> bool {
        self.dead.lock().map(|d| d.is_none()).unwrap_or(false)
    }

    /// Records that the controller stopped, and why.
    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "the lifecycle controller stopped");
        if let Ok(mut d) = self.dead.lock() {
            d.get_or_insert(reason);
        }
        self.notify.notify_waiters();
    }

    /// Resolves with the reason once the controller has stopped unexpectedly.
    pub async fn stopped(&self) -> String {
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.dead.lock().ok().and_then(|d| d.clone()) {
                return r;
            }
            notified.await;
        }
    }
}

/// Watches the controller's task: a panic or a return that was not a requested shutdown marks it dead.
fn supervise(task: tokio::task::JoinHandle<bool>, health: Arc<ControllerHealth>) {
    tokio::spawn(async move {
        match task.await {
            Ok(true) => {}
            Ok(false) => health.fail("the controller's command channel closed".into()),
            Err(e) if e.is_panic() => {
                health.fail(format!("the controller panicked: {}", guard::panic_text(e.into_panic().as_ref())))
            }
            Err(e) => health.fail(format!("the controller task ended: {e}")),
        }
    });
}

/// The handle the admin API and the server hold; cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    tx: mpsc::UnboundedSender<Command>,
    pub router: Arc<LiveRouter>,
    pub audit: Arc<AuditLog>,
    pub health: Arc<ControllerHealth>,
    defaults: Arc<prepare::LoadDefaults>,
}

impl Lifecycle {
    /// Starts the controller task and its supervisor.
    pub fn start(ctx: Context) -> Lifecycle {
        let (tx, rx) = mpsc::unbounded_channel();
        let health = Arc::new(ControllerHealth::default());
        let handle = Lifecycle {
            tx: tx.clone(),
            router: ctx.router.clone(),
            audit: ctx.audit.clone(),
            health: health.clone(),
            defaults: ctx.defaults.clone(),
        };
        supervise(tokio::spawn(actor::Controller::new(ctx, tx).run(rx)), health);
        handle
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, AdminError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| AdminError::Unavailable("the server is shutting down".into()))?;
        rx.await.map_err(|_| AdminError::Unavailable("the server is shutting down".into()))
    }

    /// Starts a load into `slot`; `trusted` skips the model-root check (paths from the command line). The
    /// request is resolved and the model's headers read off the controller first (prepare.rs).
    pub async fn load(
        &self,
        slot: SlotName,
        req: LoadRequest,
        trusted: bool,
        go_live: bool,
    ) -> Result<Operation, AdminError> {
        let model = req.model.clone();
        let index = usize::from(slot == SlotName::Green);
        let prepared = Box::new(prepare::prepare(self.defaults.clone(), index, req, trusted).await?);
        self.ask(|reply| Command::Load { slot, model, prepared, go_live, reply }).await?
    }

    /// Cancels a running operation: its slot fails with "cancelled by the operator" and frees what it held.
    pub async fn cancel(&self, id: String) -> Result<Operation, AdminError> {
        self.ask(|reply| Command::Cancel { id, reply }).await?
    }

    pub async fn flip(&self, req: FlipRequest) -> Result<FlipOutcome, AdminError> {
        self.ask(|reply| Command::Flip { req, rollback: false, reply }).await?
    }

    /// Rolls back to the previous live version; a parked target is woken first (when so configured), so the
    /// call then takes as long as the wake.
    pub async fn rollback(&self) -> Result<FlipOutcome, AdminError> {
        let first = self.ask(|reply| Command::Flip { req: FlipRequest::default(), rollback: true, reply }).await?;
        let Err(AdminError::Parked(slot)) = first else { return first };
        let op = self.wake(slot).await?;
        let done = self.wait(&op.id).await?;
        if let Some(e) = done.error {
            return Err(AdminError::Conflict(format!("cannot roll back: waking {slot} failed: {e}")));
        }
        self.ask(|reply| Command::Flip { req: FlipRequest::default(), rollback: true, reply }).await?
    }

    /// A rollout's flip back to the version that was live before its promotion (no gate check, like any
    /// rollback; the rollout's own split is left for it to remove).
    pub async fn rollback_for(&self, rollout: &str) -> Result<FlipOutcome, AdminError> {
        let req = FlipRequest { rollout: Some(rollout.to_string()), ..Default::default() };
        self.ask(|reply| Command::Flip { req, rollback: true, reply }).await?
    }

    /// The version in a ready standby whose gates passed (409 otherwise): what a rollout may route to.
    pub async fn ready_standby(&self, slot: SlotName) -> Result<Arc<Resident>, AdminError> {
        self.ask(|reply| Command::Standby { slot, reply }).await?
    }

    /// Frees a ready standby's device memory (weights to host memory, KV pool released).
    pub async fn park(&self, slot: SlotName) -> Result<Operation, AdminError> {
        self.ask(|reply| Command::Park { slot, reply }).await?
    }

    /// Brings a parked standby back to its device and warms it.
    pub async fn wake(&self, slot: SlotName) -> Result<Operation, AdminError> {
        self.ask(|reply| Command::Wake { slot, reply }).await?
    }

    pub async fn memory(&self) -> Result<memory_report::MemoryReport, AdminError> {
        self.ask(|reply| Command::Memory { reply }).await
    }

    pub async fn unload(&self, slot: SlotName) -> Result<Unloaded, AdminError> {
        self.ask(|reply| Command::Unload { slot, reply }).await?
    }

    pub async fn status(&self) -> Result<Status, AdminError> {
        self.ask(|reply| Command::Status { reply }).await.map(|s| *s)
    }

    pub async fn operation(&self, id: String) -> Result<Option<Operation>, AdminError> {
        self.ask(|reply| Command::Operation { id, reply }).await
    }

    /// Polls an operation until it finishes.
    pub async fn wait(&self, id: &str) -> Result<Operation, AdminError> {
        loop {
            match self.operation(id.to_string()).await? {
                Some(op) if op.finished() => return Ok(op),
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                None => return Err(AdminError::NotFound(format!("no operation {id}"))),
            }
        }
    }

    /// Stops routing and hands back every resident version so the caller can stop their engines.
    pub async fn shutdown(&self) -> Vec<Arc<Resident>> {
        self.ask(|reply| Command::Shutdown { reply }).await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_controller_that_panics_or_ends_unasked_is_reported_dead() {
        let health = Arc::new(ControllerHealth::default());
        assert!(health.alive());
        supervise(tokio::spawn(async { panic!("a bug") }), health.clone());
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), health.stopped()).await.unwrap();
        assert!(why.contains("panicked: a bug"), "{why}");
        assert!(!health.alive());
        let ended = Arc::new(ControllerHealth::default());
        supervise(tokio::spawn(async { false }), ended.clone());
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), ended.stopped()).await.unwrap();
        assert!(why.contains("channel closed"), "{why}");
        let asked = Arc::new(ControllerHealth::default());
        supervise(tokio::spawn(async { true }), asked.clone());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(asked.alive(), "a requested shutdown is not a death");
    }
}
