//! The lifecycle controller: the one task that owns both slots' state, the operations table and the rollback
//! target, and the only code that stores the live pointer. Every change goes through `state::transition`.

mod memory;
mod park;

use super::audit::Entry;
use super::gates::GateReport;
use super::pipeline::{Job, Report};
use super::state::{transition, SlotEvent, SlotState};
use super::warmup::{WarmupConfig, WarmupReport};
use super::{AdminError, Command, Context, FlipOutcome, FlipRequest, LoadRequest, Operation};
use crate::memory::budget::Need;
use crate::models::Model;
use crate::router::{ModelIdentity, Resident, SlotName};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Finished operations kept for GET /admin/operations/{id}.
const KEEP_OPS: usize = 256;

#[derive(Default)]
struct SlotEntry {
    state: SlotState,
    resident: Option<Arc<Resident>>,
    /// The running operation, or the last one.
    op: Option<String>,
    loaded_at: Option<String>,
    load_seconds: Option<f64>,
    weights_bytes: u64,
    warmup: Option<WarmupReport>,
    gates: Option<GateReport>,
    /// The version the slot holds (live, standby or parked) and its load id (rollback checks it).
    model: Option<(ModelIdentity, u64)>,
    /// The device the slot's model is on (`cpu`, `cuda:N`) and what admission estimated for it.
    device: String,
    estimate: Option<Need>,
    /// The weight files (path, size, mtime) and dtype of the load: the same files in the other slot on the same
    /// device share their weights, which admission credits.
    files: Option<FileSignature>,
    warm: Option<WarmupConfig>,
    /// A parked standby's model, its weights in host memory.
    parked: Option<Arc<Model>>,
    park: park::ParkTimes,
}

type FileSignature = (Vec<(std::path::PathBuf, u64, Option<SystemTime>)>, Option<candle_core::DType>);

struct OpRecord {
    op: Operation,
    started: Instant,
    phase_started: Instant,
}

pub(super) struct Controller {
    ctx: Context,
    tx: UnboundedSender<Command>,
    slots: [SlotEntry; 2],
    /// The slot that was live before the current one, and which load it held then (rollback target).
    prev_live: Option<(SlotName, u64)>,
    ops: BTreeMap<u64, OpRecord>,
    next_op: u64,
    next_load: u64,
    /// Flips from one live slot to the other (a first slot going live is not one), and rollbacks.
    flips: u64,
    rollbacks: u64,
    last_flip: Option<SystemTime>,
    /// When the memory gauges were last set.
    memory_observed: Option<Instant>,
}

fn idx(s: SlotName) -> usize {
    match s {
        SlotName::Blue => 0,
        SlotName::Green => 1,
    }
}

fn op_key(id: &str) -> Option<u64> {
    id.strip_prefix("op-")?.parse().ok()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Controller {
    pub fn new(ctx: Context, tx: UnboundedSender<Command>) -> Self {
        for s in SlotName::ALL {
            ctx.metrics.set_slot_state(s.as_str(), "empty");
        }
        Controller {
            ctx,
            tx,
            slots: Default::default(),
            prev_live: None,
            ops: BTreeMap::new(),
            next_op: 1,
            next_load: 1,
            flips: 0,
            rollbacks: 0,
            last_flip: None,
            memory_observed: None,
        }
    }

    pub async fn run(mut self, mut rx: UnboundedReceiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(self.take_all());
                        break;
                    }
                    Some(c) => self.handle(c),
                    None => break,
                },
                _ = tick.tick() => {
                    self.finish_draining();
                    self.refresh_memory_metrics();
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Load { slot, req, trusted, go_live, reply } => {
                let _ = reply.send(self.start_load(slot, req, trusted, go_live));
            }
            Command::Flip { req, rollback, reply } => {
                let t0 = Instant::now();
                let out = self.flip(&req, rollback);
                self.ctx.metrics.flip_duration.observe(t0.elapsed().as_secs_f64());
                let _ = reply.send(out);
            }
            Command::Unload { slot, reply } => {
                let _ = reply.send(self.unload(slot));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Operation { id, reply } => {
                let op = op_key(&id).and_then(|k| self.ops.get(&k)).map(|r| self.op_view(r));
                let _ = reply.send(op);
            }
            Command::Park { slot, reply } => {
                let _ = reply.send(self.park(slot));
            }
            Command::Wake { slot, reply } => {
                let _ = reply.send(self.wake(slot));
            }
            Command::Memory { reply } => {
                let _ = reply.send(self.memory_report());
            }
            Command::Report(r) => self.on_report(r),
            Command::Shutdown { .. } => {}
        }
    }

    fn set_state(&mut self, slot: SlotName, event: SlotEvent) -> Result<(), AdminError> {
        let e = &mut self.slots[idx(slot)];
        let next = transition(&e.state, &event).map_err(|r| AdminError::Conflict(format!("{slot}: {r}")))?;
        e.state = next;
        self.ctx.metrics.set_slot_state(slot.as_str(), e.state.name());
        Ok(())
    }

    fn live_slot(&self) -> Option<SlotName> {
        SlotName::ALL.into_iter().find(|&s| self.slots[idx(s)].state == SlotState::Live)
    }

    /// 409 naming the operation in progress, if the slot is busy.
    fn busy(&self, slot: SlotName) -> Result<(), AdminError> {
        let e = &self.slots[idx(slot)];
        if !e.state.busy() {
            return Ok(());
        }
        let op = e.op.clone().unwrap_or_default();
        Err(AdminError::Conflict(format!(
            "{slot} is busy: operation {op} (load, phase {}) is in progress",
            e.state.name()
        )))
    }

    fn start_load(
        &mut self,
        slot: SlotName,
        req: LoadRequest,
        trusted: bool,
        go_live: bool,
    ) -> Result<Operation, AdminError> {
        self.busy(slot)?;
        if self.slots[idx(slot)].state == SlotState::Live {
            return Err(AdminError::Conflict(format!(
                "{slot} is the live slot; load into the standby ({}) and flip",
                slot.other()
            )));
        }
        let path = if trusted {
            std::path::PathBuf::from(&req.model)
        } else {
            super::spec::resolve_in_root(&self.ctx.models_dir, &req.model)?
        };
        // Request overrides must parse on their own; the model's own file is checked by the load.
        super::spec::effective_settings(&Default::default(), req.warmup.clone(), req.gates.clone())
            .map_err(AdminError::BadRequest)?;
        let device_label = req.device.clone().unwrap_or_else(|| self.ctx.devices[idx(slot)].clone());
        let device = crate::device::parse_device(&device_label).map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let dtype = crate::device::parse_dtype(req.dtype.as_deref().unwrap_or(&self.ctx.dtype))
            .map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let device_label = crate::device::label(&device);
        let (estimate, files) = self.admit_load(slot, &path, dtype, &device_label)?;
        let replaced = self.slots[idx(slot)].model.as_ref().map(|(m, _)| m.version.clone());
        self.set_state(slot, SlotEvent::Load)?;
        self.drop_resident(slot);
        let e = &mut self.slots[idx(slot)];
        (e.device, e.estimate, e.files) = (device_label.clone(), estimate, Some(files));
        let id = self.new_op(slot, &req.model, go_live);
        self.slots[idx(slot)].op = Some(id.clone());
        self.ctx.audit.record(Entry {
            action: "load_started",
            slot: Some(slot.to_string()),
            outcome: "ok",
            from_version: replaced,
            to_version: req.version.clone(),
            details: json!({"operation": id, "model": req.model, "device": device_label}),
            ..Default::default()
        });
        let job = Job {
            op: id.clone(),
            slot,
            load_id: self.next_load,
            path,
            version: req.version,
            device_label,
            device,
            dtype,
            engine: self.ctx.engine.clone(),
            batch: self.ctx.batch,
            metrics: self.ctx.metrics.clone(),
            warmup_over: req.warmup,
            gates_over: req.gates,
            router: self.ctx.router.clone(),
            registry: self.ctx.registry.clone(),
            tx: self.tx.clone(),
        };
        self.next_load += 1;
        tokio::task::spawn_blocking(move || job.run());
        Ok(self.op_view(&self.ops[&op_key(&id).unwrap_or_default()]))
    }

    fn new_op(&mut self, slot: SlotName, model: &str, go_live: bool) -> String {
        self.new_op_of("load", "loading", slot, model, go_live)
    }

    fn new_op_of(
        &mut self,
        kind: &'static str,
        phase: &'static str,
        slot: SlotName,
        model: &str,
        go_live: bool,
    ) -> String {
        let key = self.next_op;
        self.next_op += 1;
        let id = format!("op-{key}");
        let op = Operation {
            id: id.clone(),
            kind,
            slot,
            model: model.to_string(),
            status: "running",
            phase,
            progress: 0.0,
            started_at: now_rfc3339(),
            elapsed_s: 0.0,
            timings: Default::default(),
            error: None,
            gates_passed: None,
            go_live,
        };
        let now = Instant::now();
        self.ops.insert(key, OpRecord { op, started: now, phase_started: now });
        while self.ops.len() > KEEP_OPS {
            let Some((&oldest, _)) = self.ops.iter().find(|(_, r)| r.op.finished()) else { break };
            self.ops.remove(&oldest);
        }
        id
    }

    fn op_view(&self, r: &OpRecord) -> Operation {
        let mut op = r.op.clone();
        if !op.finished() {
            op.elapsed_s = r.started.elapsed().as_secs_f64();
        }
        op
    }

    /// Ends the current phase of an operation (recording its time) and starts `next`.
    fn advance(&mut self, id: &str, next: &'static str) {
        let Some(r) = op_key(id).and_then(|k| self.ops.get_mut(&k)) else { return };
        let secs = r.phase_started.elapsed().as_secs_f64();
        r.op.timings.insert(r.op.phase.to_string(), json!(secs));
        r.op.phase = next;
        r.op.progress = 0.0;
        r.phase_started = Instant::now();
        if next == "done" {
            r.op.elapsed_s = r.started.elapsed().as_secs_f64();
            r.op.timings.insert("total".into(), json!(r.op.elapsed_s));
            r.op.progress = 1.0;
        }
    }

    /// The slot an operation runs on, if it is still that slot's current operation.
    fn slot_of(&self, id: &str) -> Option<SlotName> {
        SlotName::ALL
            .into_iter()
            .find(|&s| self.slots[idx(s)].op.as_deref() == Some(id) && self.slots[idx(s)].state.busy())
    }

    fn on_report(&mut self, r: Report) {
        match r {
            Report::Progress { op, progress } => {
                if let Some(rec) = op_key(&op).and_then(|k| self.ops.get_mut(&k)) {
                    rec.op.progress = progress.clamp(0.0, 1.0);
                }
            }
            Report::Loaded { op, resident, seconds, weights_bytes, warm } => {
                let Some(slot) = self.slot_of(&op) else { return };
                if self.set_state(slot, SlotEvent::Loaded).is_ok() {
                    let e = &mut self.slots[idx(slot)];
                    e.model = Some((resident.identity.clone(), resident.load_id));
                    e.warm = Some(warm);
                    e.resident = Some(resident);
                    e.loaded_at = Some(now_rfc3339());
                    e.load_seconds = Some(seconds);
                    e.weights_bytes = weights_bytes;
                    self.advance(&op, "warming");
                }
            }
            Report::Warmed { op, report } => {
                let Some(slot) = self.slot_of(&op) else { return };
                if self.set_state(slot, SlotEvent::Warmed).is_ok() {
                    self.slots[idx(slot)].warmup = Some(report);
                    self.advance(&op, "gating");
                }
            }
            Report::Gated { op, report } => self.on_gated(&op, report),
            Report::Failed { op, reason } => self.on_failed(&op, reason),
            Report::Parked { op, model, seconds, moved_bytes } => self.on_parked(&op, model, seconds, moved_bytes),
            Report::Woken { op, resident, warmup, timings } => self.on_woken(&op, resident, warmup, timings),
        }
    }

    fn on_gated(&mut self, op: &str, report: GateReport) {
        let Some(slot) = self.slot_of(op) else { return };
        if self.set_state(slot, SlotEvent::Gated).is_err() {
            return;
        }
        for g in &report.results {
            let outcome = if g.skipped {
                "skipped"
            } else if g.passed {
                "passed"
            } else {
                "failed"
            };
            self.ctx.metrics.gate_results.with_label_values(&[g.gate, outcome]).inc();
        }
        let (passed, failure) = (report.passed, report.first_failure());
        self.ctx.metrics.slot_gates_passed.with_label_values(&[slot.as_str()]).set(i64::from(passed));
        self.slots[idx(slot)].gates = Some(report.clone());
        self.advance(op, "done");
        let go_live = match op_key(op).and_then(|k| self.ops.get_mut(&k)) {
            Some(r) => {
                r.op.status = "succeeded";
                r.op.gates_passed = Some(passed);
                r.op.go_live
            }
            None => false,
        };
        let version = self.slots[idx(slot)].resident.as_ref().map(|r| r.identity.version.clone());
        self.ctx.audit.record(Entry {
            action: "load_succeeded",
            slot: Some(slot.to_string()),
            outcome: "ok",
            reason: failure,
            to_version: version,
            details: json!({"operation": op, "gates_passed": passed, "gates": report}),
            ..Default::default()
        });
        if go_live && passed {
            let req = FlipRequest { to: Some(slot), ..Default::default() };
            if let Err(e) = self.flip(&req, false) {
                tracing::error!(error = %e, %slot, "could not make the loaded slot live");
            }
        }
    }

    fn on_failed(&mut self, op: &str, reason: String) {
        let Some(slot) = self.slot_of(op) else { return };
        let _ = self.set_state(slot, SlotEvent::Fail(reason.clone()));
        self.drop_resident(slot);
        self.advance(op, "done");
        if let Some(r) = op_key(op).and_then(|k| self.ops.get_mut(&k)) {
            r.op.status = "failed";
            r.op.error = Some(reason.clone());
        }
        self.ctx.audit.record(Entry {
            action: "load_failed",
            slot: Some(slot.to_string()),
            outcome: "failed",
            reason: Some(reason),
            details: json!({"operation": op}),
            ..Default::default()
        });
    }

    /// Forgets a slot's version (its engine stops once the last request holding it finishes).
    fn drop_resident(&mut self, slot: SlotName) {
        if self.ctx.router.pinned_sessions().is_some_and(|(s, _)| s == slot) {
            self.ctx.router.end_drain();
        }
        let e = &mut self.slots[idx(slot)];
        if let Some((id, load_id)) = e.model.take() {
            if self.prev_live.is_some_and(|(s, l)| s == slot && l == load_id) {
                self.prev_live = None;
            }
            self.ctx.metrics.forget_slot(&id.name, slot.as_str(), &id.version);
        }
        e.resident = None;
        e.parked = None;
        e.park = Default::default();
        e.estimate = None;
        e.files = None;
        e.warm = None;
        e.warmup = None;
        e.gates = None;
        e.loaded_at = None;
        e.load_seconds = None;
        e.weights_bytes = 0;
        self.ctx.metrics.slot_gates_passed.with_label_values(&[slot.as_str()]).set(0);
    }

    fn flip_target(&self, req: &FlipRequest, rollback: bool, live: Option<SlotName>) -> Result<SlotName, AdminError> {
        if rollback {
            let Some((slot, load_id)) = self.prev_live else {
                return Err(AdminError::Conflict(
                    "nothing to roll back to: no earlier live version is resident".into(),
                ));
            };
            let same = self.slots[idx(slot)].model.as_ref().is_some_and(|(_, l)| *l == load_id);
            if !same {
                return Err(AdminError::Conflict(format!(
                    "cannot roll back: {slot} no longer holds the previous version"
                )));
            }
            return Ok(slot);
        }
        match (req.to, live) {
            (Some(t), Some(l)) if t == l => Err(AdminError::Conflict(format!("{t} is already live"))),
            (Some(t), _) => Ok(t),
            (None, Some(l)) => Ok(l.other()),
            (None, None) => SlotName::ALL
                .into_iter()
                .find(|&s| self.slots[idx(s)].state == SlotState::Ready)
                .ok_or_else(|| AdminError::Conflict("no slot is ready to go live".into())),
        }
    }

    fn flip(&mut self, req: &FlipRequest, rollback: bool) -> Result<FlipOutcome, AdminError> {
        let live = self.live_slot();
        if let Some(expected) = req.expect_live {
            if Some(expected) != live {
                let now = live.map(|s| s.as_str()).unwrap_or("none");
                return Err(AdminError::Conflict(format!(
                    "expected {expected} to be live, but the live slot is {now}"
                )));
            }
        }
        let target = self.flip_target(req, rollback, live)?;
        self.busy(target)?;
        self.refuse_parked(target, rollback)?;
        let entry = &self.slots[idx(target)];
        let Some(resident) =
            entry.resident.clone().filter(|_| matches!(entry.state, SlotState::Ready | SlotState::Draining))
        else {
            return Err(AdminError::Conflict(format!("{target} is {}, not ready to go live", entry.state.name())));
        };
        if let Some(now) = self.ctx.router.peek().filter(|r| r.identity.kind != resident.identity.kind) {
            // Clients of the live model speak its kind's API; a flip must not pull that API from under them.
            return Err(AdminError::Conflict(format!(
                "{target} holds a {} model but the live slot serves a {} model; a flip cannot change the kind",
                resident.identity.kind, now.identity.kind
            )));
        }
        let gates_ok = entry.gates.as_ref().is_some_and(|g| g.passed || g.forced);
        let forced = req.force && !gates_ok;
        if !gates_ok && !req.force && !rollback {
            let why =
                entry.gates.as_ref().and_then(GateReport::first_failure).unwrap_or_else(|| "no gate report".into());
            self.record_refusal(target, &why);
            return Err(AdminError::GateFailed(format!("flip to {target} refused: {why}")));
        }
        let t0 = Instant::now();
        let old = self.ctx.router.swap(resident.clone());
        let swap_us = t0.elapsed().as_secs_f64() * 1e6;
        self.set_state(target, SlotEvent::GoLive)?;
        if let Some(prev) = live {
            self.set_state(prev, SlotEvent::StepDown)?;
        }
        if forced {
            if let Some(g) = self.slots[idx(target)].gates.as_mut() {
                g.forced = true;
            }
        }
        self.prev_live = old.as_ref().map(|o| (o.slot, o.load_id));
        let pinned = self.drain(req, old.as_ref());
        self.after_flip(target, old.as_ref(), rollback);
        let outcome = FlipOutcome {
            live: target,
            previous: old.as_ref().map(|o| o.slot),
            version: resident.identity.version.clone(),
            previous_version: old.as_ref().map(|o| o.identity.version.clone()),
            swap_us,
            forced,
            rollback,
            pinned_sessions: pinned,
        };
        self.ctx.audit.record(Entry {
            action: if rollback { "rollback" } else { "flip" },
            slot: Some(target.to_string()),
            outcome: "ok",
            reason: forced.then(|| "forced: gates skipped".to_string()),
            from_version: outcome.previous_version.clone(),
            to_version: Some(outcome.version.clone()),
            forced,
            details: json!({"swap_us": swap_us, "previous": outcome.previous, "pinned_sessions": pinned}),
        });
        Ok(outcome)
    }

    /// Starts (or ends) session draining for a flip; returns how many sessions stay on the old slot.
    fn drain(&self, req: &FlipRequest, old: Option<&Arc<Resident>>) -> usize {
        match old.filter(|_| req.drain_sessions) {
            Some(old) => {
                let secs = |v: Option<f64>, d: f64| Duration::from_secs_f64(v.unwrap_or(d).clamp(0.0, 86_400.0));
                let idle = secs(req.drain_idle_s, 10.0);
                let timeout = secs(req.drain_timeout_s, 60.0);
                self.ctx.router.start_drain(old.clone(), idle, timeout)
            }
            None => {
                self.ctx.router.end_drain();
                0
            }
        }
    }

    fn after_flip(&mut self, target: SlotName, old: Option<&Arc<Resident>>, rollback: bool) {
        let m = &self.ctx.metrics;
        m.live_slot.with_label_values(&[target.as_str()]).set(1);
        m.live_slot.with_label_values(&[target.other().as_str()]).set(0);
        if rollback {
            m.rollbacks.inc();
            self.rollbacks += 1;
        } else if old.is_some() {
            m.flips.inc();
            self.flips += 1;
        }
        self.last_flip = Some(SystemTime::now());
        m.set_last_flip(SystemTime::now());
    }

    fn record_refusal(&self, slot: SlotName, why: &str) {
        self.ctx.audit.record(Entry {
            action: "flip",
            slot: Some(slot.to_string()),
            outcome: "refused",
            reason: Some(why.to_string()),
            ..Default::default()
        });
    }

    fn unload(&mut self, slot: SlotName) -> Result<Value, AdminError> {
        self.busy(slot)?;
        if self.slots[idx(slot)].state == SlotState::Live {
            return Err(AdminError::Conflict(format!("{slot} is live; flip to the other slot before unloading it")));
        }
        let version = self.slots[idx(slot)].model.as_ref().map(|(m, _)| m.version.clone());
        self.set_state(slot, SlotEvent::Unload)?;
        self.drop_resident(slot);
        self.ctx.audit.record(Entry {
            action: "unload",
            slot: Some(slot.to_string()),
            outcome: "ok",
            from_version: version.clone(),
            ..Default::default()
        });
        Ok(json!({"slot": slot, "state": "empty", "unloaded_version": version}))
    }

    /// Draining slots whose last request finished and whose pinned sessions went idle become ready standbys.
    fn finish_draining(&mut self) {
        let pinned = self.ctx.router.pinned_sessions().map(|(slot, _)| slot);
        for s in SlotName::ALL {
            let e = &self.slots[idx(s)];
            let idle = e.resident.as_ref().is_some_and(|r| r.in_flight() == 0) && pinned != Some(s);
            if e.state == SlotState::Draining && idle {
                let _ = self.set_state(s, SlotEvent::Drained);
            }
        }
    }

    fn take_all(&mut self) -> Vec<Arc<Resident>> {
        self.ctx.router.clear();
        self.slots.iter_mut().filter_map(|e| e.resident.take()).collect()
    }

    fn slot_view(&self, s: SlotName) -> Value {
        let e = &self.slots[idx(s)];
        let reason = match &e.state {
            SlotState::Failed { reason } => Some(reason.clone()),
            _ => None,
        };
        let model = e.model.as_ref().map(|(m, _)| serde_json::to_value(m).unwrap_or_default());
        let memory = self.slot_memory_view(s);
        json!({
            "slot": s, "state": e.state.name(), "reason": reason, "live": e.state == SlotState::Live,
            "operation": e.op, "model": model, "loaded_at": e.loaded_at, "load_seconds": e.load_seconds,
            "memory": memory, "in_flight": e.resident.as_ref().map(|r| r.in_flight()).unwrap_or(0),
            "pinned_sessions": self.ctx.router.pinned_sessions().filter(|(p, _)| *p == s).map(|(_, n)| n).unwrap_or(0),
            "warmup": e.warmup, "gates": e.gates, "park": e.park,
            "rollback_eta_s": self.rollback_eta(s),
        })
    }

    fn status(&self) -> Value {
        let since = self.last_flip.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64());
        json!({
            "live": self.live_slot(),
            "previous_live": self.prev_live.map(|(s, _)| s),
            "served_model_name": self.ctx.router.served_name(),
            "flips": self.flips,
            "rollbacks": self.rollbacks,
            "last_flip_at": self.last_flip.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            "seconds_since_last_flip": since,
            "slots": {"blue": self.slot_view(SlotName::Blue), "green": self.slot_view(SlotName::Green)},
        })
    }
}
