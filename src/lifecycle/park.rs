//! The blocking halves of park and wake. Park stops a standby's engine (its KV pool and workspace go) and, on a
//! device other than the host, moves its weights to host memory; wake moves them back, allocates a new KV pool
//! and warms the engine again, so the first request after a flip to a woken slot is as fast as after a load.
//! On CPU the weights are already in host memory: park frees the KV pool and workspace, wake re-allocates them.
//! Like pipeline.rs, these write no slot state: they report to the controller.

use super::checks::config::{GatesConfig, WarmupConfig};
use super::checks::{self, llm::LlmSubject};
use super::report::{JobError, Report, WakeTimings};
use super::views::Phase;
use super::Command;
use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig};
use crate::models::LanguageModel;
use crate::router::Resident;
use crate::slot::{ModelIdentity, SlotName};
use crate::telemetry::Metrics;
use candle_core::Device;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

fn send(tx: &UnboundedSender<Command>, r: Report) {
    let _ = tx.send(Command::Report(r));
}

/// Runs `f`, turning an error or a panic into a `Failed` report.
fn guarded(tx: &UnboundedSender<Command>, op: &str, phase: Phase, f: impl FnOnce() -> Result<Report, String>) {
    let error = match crate::error::catching(phase.as_str(), f) {
        Ok(Ok(r)) => return send(tx, r),
        Ok(Err(e)) => JobError::Stage { phase, reason: format!("{phase} failed: {e}") },
        Err(panic) => JobError::Internal(panic),
    };
    let report = Report::Failed { op: op.to_string(), error };
    send(tx, report);
}

pub(crate) struct ParkJob {
    pub op: String,
    pub resident: Arc<Resident>,
    pub tx: UnboundedSender<Command>,
}

impl ParkJob {
    pub fn run(self) {
        let (op, tx) = (self.op.clone(), self.tx.clone());
        guarded(&tx, &op, Phase::Parking, move || {
            let t0 = Instant::now();
            let engine = self.resident.engine().ok_or("only text-generation models can be parked")?;
            let model = engine.model().clone();
            // The engine thread owns the KV pool: joining it frees the pool.
            engine.shutdown();
            drop(self.resident);
            let model = wait_unique(model)?;
            let moved = if model.llama.device().is_cpu() { 0 } else { model.llama.weight_bytes() };
            let model = if moved > 0 { model.into_device(&Device::Cpu).map_err(|e| e.to_string())? } else { model };
            Ok(Report::Parked {
                op: self.op,
                model: Arc::new(model),
                seconds: t0.elapsed().as_secs_f64(),
                moved_bytes: moved,
            })
        });
    }
}

/// Takes sole ownership of a model once the last request holding its engine has let go (a standby has none;
/// this waits out a gate probe that is just finishing).
fn wait_unique(mut model: Arc<LanguageModel>) -> Result<LanguageModel, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Arc::try_unwrap(model) {
            Ok(m) => return Ok(m),
            Err(m) if Instant::now() < deadline => {
                model = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return Err("the model is still in use after 30 s".into()),
        }
    }
}

pub(crate) struct WakeJob {
    pub op: String,
    pub slot: SlotName,
    pub load_id: u64,
    pub identity: ModelIdentity,
    pub model: Arc<LanguageModel>,
    pub device: Device,
    pub engine: EngineConfig,
    pub metrics: Metrics,
    pub warm: WarmupConfig,
    pub tx: UnboundedSender<Command>,
}

impl WakeJob {
    pub fn run(self) {
        let (op, tx) = (self.op.clone(), self.tx.clone());
        guarded(&tx, &op, Phase::Waking, move || {
            let t0 = Instant::now();
            let same_device = self.model.llama.device().same_device(&self.device);
            let (model, moved) = if same_device {
                (self.model, 0)
            } else {
                let bytes = self.model.llama.weight_bytes();
                let model = wait_unique(self.model)?.into_device(&self.device).map_err(|e| e.to_string())?;
                (Arc::new(model), bytes)
            };
            let move_s = t0.elapsed().as_secs_f64();
            let id = &self.identity;
            let metrics = self.metrics.for_slot(&id.name, self.slot.as_str(), &id.version);
            let engine = Engine::start(model, self.engine, metrics).map_err(|e| e.to_string())?;
            let allocate_s = t0.elapsed().as_secs_f64() - move_s;
            let gates = GatesConfig::default();
            let subject = LlmSubject::new(&engine, &self.warm, &gates);
            let warmup = checks::warm(&subject, &self.warm, &|_| {}).map_err(|e| format!("warm-up: {e}"))?;
            let resident = Arc::new(Resident::new(self.load_id, self.slot, self.identity, Backend::Llm(engine)));
            let warm_s = t0.elapsed().as_secs_f64() - move_s - allocate_s;
            let timings = WakeTimings { move_s, allocate_s, warm_s, moved_bytes: moved };
            Ok(Report::Woken { op: self.op, resident, warmup, timings })
        });
    }
}
