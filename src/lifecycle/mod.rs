//! The slot lifecycle: load -> warm -> gate -> flip / rollback / unload. One controller task (actor.rs) owns
//! all slot state and is its only writer; admin operations are commands sent to it over a channel and answered
//! over oneshots, so two operations can never both pass the same check. Long work (loading, warm-up, gates)
//! runs on a blocking thread (pipeline.rs) that reports back to the controller as further commands.
//!
//! state.rs: the pure transition function. spec.rs: model paths and per-model settings. warmup.rs, gates.rs,
//! probe.rs: what runs on a standby before it may go live. audit.rs: the persisted audit log.

mod actor;
pub mod audit;
pub mod batch_checks;
pub mod gates;
pub mod park;
mod pipeline;
pub mod probe;
pub mod spec;
pub mod state;
pub mod warmup;

use crate::engine::EngineConfig;
use crate::router::{LiveRouter, Resident, SlotName};
use crate::telemetry::Metrics;
use audit::AuditLog;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

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

/// A long-running admin operation (a load) as GET /admin/operations/{id} shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub id: String,
    pub kind: &'static str,
    pub slot: SlotName,
    pub model: String,
    /// running, succeeded or failed.
    pub status: &'static str,
    /// loading, warming, gating, done.
    pub phase: &'static str,
    /// Share of the current phase done (0..=1).
    pub progress: f64,
    pub started_at: String,
    pub elapsed_s: f64,
    /// Seconds each finished phase took.
    pub timings: serde_json::Map<String, Value>,
    pub error: Option<String>,
    pub gates_passed: Option<bool>,
    /// Whether the load asked the slot to go live when its gates pass (startup loads).
    pub go_live: bool,
}

impl Operation {
    pub fn finished(&self) -> bool {
        self.status != "running"
    }
}

/// What the controller needs from the server.
pub struct Context {
    pub router: Arc<LiveRouter>,
    pub audit: Arc<AuditLog>,
    pub metrics: Metrics,
    pub engine: EngineConfig,
    /// Dynamic batching of the embedding and image kinds.
    pub batch: crate::batcher::BatchConfig,
    pub models_dir: PathBuf,
    /// Default device per slot (blue, green) and dtype.
    pub devices: [String; 2],
    pub dtype: String,
    pub budgets: crate::memory::Budgets,
    /// Identical weights are held once per device.
    pub registry: crate::models::shared::TensorRegistry,
    /// A rollback to a parked slot wakes it (else it is refused).
    pub wake_on_rollback: bool,
}

pub(crate) enum Command {
    Load {
        slot: SlotName,
        req: LoadRequest,
        trusted: bool,
        go_live: bool,
        reply: oneshot::Sender<Result<Operation, AdminError>>,
    },
    Flip {
        req: FlipRequest,
        rollback: bool,
        reply: oneshot::Sender<Result<FlipOutcome, AdminError>>,
    },
    Unload {
        slot: SlotName,
        reply: oneshot::Sender<Result<Value, AdminError>>,
    },
    Status {
        reply: oneshot::Sender<Value>,
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
        reply: oneshot::Sender<crate::memory::report::MemoryReport>,
    },
    Report(pipeline::Report),
    Shutdown {
        reply: oneshot::Sender<Vec<Arc<Resident>>>,
    },
}

/// The handle the admin API and the server hold; cheap to clone.
#[derive(Clone)]
pub struct Lifecycle {
    tx: mpsc::UnboundedSender<Command>,
    pub router: Arc<LiveRouter>,
    pub audit: Arc<AuditLog>,
}

impl Lifecycle {
    /// Starts the controller task.
    pub fn start(ctx: Context) -> Lifecycle {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = Lifecycle { tx: tx.clone(), router: ctx.router.clone(), audit: ctx.audit.clone() };
        tokio::spawn(actor::Controller::new(ctx, tx).run(rx));
        handle
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, AdminError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| AdminError::Unavailable("the server is shutting down".into()))?;
        rx.await.map_err(|_| AdminError::Unavailable("the server is shutting down".into()))
    }

    /// Starts a load into `slot`; `trusted` skips the model-root check (paths from the command line).
    pub async fn load(
        &self,
        slot: SlotName,
        req: LoadRequest,
        trusted: bool,
        go_live: bool,
    ) -> Result<Operation, AdminError> {
        self.ask(|reply| Command::Load { slot, req, trusted, go_live, reply }).await?
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

    /// Frees a ready standby's device memory (weights to host memory, KV pool released).
    pub async fn park(&self, slot: SlotName) -> Result<Operation, AdminError> {
        self.ask(|reply| Command::Park { slot, reply }).await?
    }

    /// Brings a parked standby back to its device and warms it.
    pub async fn wake(&self, slot: SlotName) -> Result<Operation, AdminError> {
        self.ask(|reply| Command::Wake { slot, reply }).await?
    }

    pub async fn memory(&self) -> Result<crate::memory::report::MemoryReport, AdminError> {
        self.ask(|reply| Command::Memory { reply }).await
    }

    pub async fn unload(&self, slot: SlotName) -> Result<Value, AdminError> {
        self.ask(|reply| Command::Unload { slot, reply }).await?
    }

    pub async fn status(&self) -> Result<Value, AdminError> {
        self.ask(|reply| Command::Status { reply }).await
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
