//! The lifecycle controller: the one task that owns both slots' state, the operations table and the rollback
//! target, and the only code that stores the live pointer. Every change goes through `state::transition`.
//! load.rs, flip.rs, park.rs and memory.rs hold the operations; ops.rs the operations table, cancels and
//! stage timeouts.

mod flip;
mod load;
mod memory;
mod ops;
mod park;

use super::audit::Entry;
use super::checks::config::WarmupConfig;
use super::checks::report::GateReport;
use super::checks::report::WarmupReport;
use super::prepare::FileSignature;
use super::state::{transition, SlotEvent, SlotState};
use super::views::{ParkTimes, SlotView, Slots, Status, Unloaded};
use super::{AdminError, Command, Context};
use crate::memory::budget::Need;
use crate::models::LanguageModel;
use crate::router::Resident;
use crate::slot::{ModelIdentity, SlotName};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// One slot: its state, its current (or last) operation, and what its load holds.
#[derive(Default)]
struct SlotEntry {
    state: SlotState,
    /// The running operation, or the last one.
    op: Option<String>,
    /// Everything the slot's current load brought; replaced whole when the slot empties, fails or loads again,
    /// so no field of it can outlive its load.
    load: LoadState,
}

/// What one load put into a slot, from admission to unload.
#[derive(Default)]
struct LoadState {
    resident: Option<Arc<Resident>>,
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
    /// The stage limits of the load (park and wake reuse them).
    timeouts: Option<crate::lifecycle::spec::Timeouts>,
    /// A parked standby's model, its weights in host memory.
    parked: Option<Arc<LanguageModel>>,
    park: ParkTimes,
}

/// One operation in the table, with the clocks of its run and its current phase.
struct OpRecord {
    op: super::Operation,
    started: Instant,
    phase_started: Instant,
    cancel: super::guard::CancelFlag,
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

/// Lets go of an unloaded version, then runs `then` (the answer) once its memory is free: the version's engine or
/// batcher thread owns the weights and the KV cache, so this waits on another thread for that thread to end
/// (unless something else, such as a request still running on the version, holds it: then it ends after that).
fn release_then(resident: Option<Arc<Resident>>, then: impl FnOnce() + Send + 'static) {
    let work = move || {
        if let Some(r) = resident.and_then(Arc::into_inner) {
            r.backend.shutdown();
        }
        then();
    };
    if let Err(e) = super::guard::spawn("teal-unload", work) {
        tracing::error!(error = %e, "could not start a thread to release an unloaded version");
    }
}

fn idx(s: SlotName) -> usize {
    match s {
        SlotName::Blue => 0,
        SlotName::Green => 1,
    }
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

    /// Serves commands until a shutdown (true) or until every sender is gone (false: nobody asked it to stop).
    pub async fn run(mut self, mut rx: UnboundedReceiver<Command>) -> bool {
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(self.take_all());
                        return true;
                    }
                    Some(c) => self.handle(c),
                    None => return false,
                },
                _ = tick.tick() => {
                    self.finish_draining();
                    self.enforce_timeouts();
                    self.refresh_memory_metrics();
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Load { slot, model, prepared, go_live, reply } => {
                let _ = reply.send(self.start_load(slot, model, *prepared, go_live));
            }
            Command::Cancel { id, reply } => {
                let _ = reply.send(self.cancel(&id));
            }
            Command::Flip { req, rollback, reply } => {
                let t0 = Instant::now();
                let out = self.flip(&req, rollback);
                self.ctx.metrics.flip_duration.observe(t0.elapsed().as_secs_f64());
                let _ = reply.send(out);
            }
            Command::Unload { slot, reply } => match self.unload(slot) {
                Ok((done, resident)) => release_then(resident, move || drop(reply.send(Ok(done)))),
                Err(e) => drop(reply.send(Err(e))),
            },
            Command::Status { reply } => {
                let _ = reply.send(Box::new(self.status()));
            }
            Command::Operation { id, reply } => {
                let _ = reply.send(self.view_of(&id));
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
            Command::Standby { slot, reply } => {
                let _ = reply.send(self.ready_standby(slot));
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

    /// The version a ready standby holds, with passed (or forced) gates: what a rollout may send traffic to.
    fn ready_standby(&self, slot: SlotName) -> Result<Arc<Resident>, AdminError> {
        let e = &self.slots[idx(slot)];
        if e.state != SlotState::Ready {
            return Err(AdminError::Conflict(format!("{slot} is {}, not a ready standby", e.state.name())));
        }
        if !e.load.gates.as_ref().is_some_and(|g| g.passed || g.forced) {
            return Err(AdminError::GateFailed(format!("{slot} has not passed its gates")));
        }
        e.load.resident.clone().ok_or_else(|| AdminError::Conflict(format!("{slot} holds no model")))
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
        let kind = self.view_of(&op).map(|o| o.kind.to_string()).unwrap_or_else(|| "operation".into());
        Err(AdminError::Conflict(format!(
            "{slot} is busy: operation {op} ({kind}, phase {}) is in progress",
            e.state.name()
        )))
    }

    /// Forgets a slot's version (its engine stops once the last request holding it finishes).
    /// Empties `slot`'s record; returns its version so that an unload can wait for its memory to be freed.
    fn drop_resident(&mut self, slot: SlotName) -> Option<Arc<Resident>> {
        if self.ctx.router.pinned_sessions().is_some_and(|(s, _)| s == slot) {
            self.ctx.router.end_drain();
        }
        let old = std::mem::take(&mut self.slots[idx(slot)].load);
        if let Some((_, load_id)) = &old.model {
            self.ctx.router.end_split_using(*load_id, &format!("{slot}'s version left the slot"));
        }
        if let Some((id, load_id)) = old.model {
            if self.prev_live.is_some_and(|(s, l)| s == slot && l == load_id) {
                self.prev_live = None;
            }
            self.ctx.metrics.forget_slot(&id.name, slot.as_str(), &id.version);
        }
        self.ctx.metrics.slot_gates_passed.with_label_values(&[slot.as_str()]).set(0);
        old.resident
    }

    fn unload(&mut self, slot: SlotName) -> Result<(Unloaded, Option<Arc<Resident>>), AdminError> {
        self.busy(slot)?;
        if self.slots[idx(slot)].state == SlotState::Live {
            return Err(AdminError::Conflict(format!("{slot} is live; flip to the other slot before unloading it")));
        }
        let version = self.slots[idx(slot)].load.model.as_ref().map(|(m, _)| m.version.clone());
        self.set_state(slot, SlotEvent::Unload)?;
        let resident = self.drop_resident(slot);
        self.ctx.audit.record(Entry {
            action: "unload",
            slot: Some(slot.to_string()),
            outcome: "ok",
            from_version: version.clone(),
            ..Default::default()
        });
        Ok((Unloaded { slot, state: "empty".into(), unloaded_version: version }, resident))
    }

    /// Draining slots whose last request finished and whose pinned sessions went idle become ready standbys.
    fn finish_draining(&mut self) {
        let pinned = self.ctx.router.pinned_sessions().map(|(slot, _)| slot);
        for s in SlotName::ALL {
            let e = &self.slots[idx(s)];
            let idle = e.load.resident.as_ref().is_some_and(|r| r.in_flight() == 0) && pinned != Some(s);
            if e.state == SlotState::Draining && idle {
                let _ = self.set_state(s, SlotEvent::Drained);
            }
        }
    }

    fn take_all(&mut self) -> Vec<Arc<Resident>> {
        self.ctx.router.clear();
        self.slots.iter_mut().filter_map(|e| e.load.resident.take()).collect()
    }

    fn slot_view(&self, s: SlotName) -> SlotView {
        let e = &self.slots[idx(s)];
        let reason = match &e.state {
            SlotState::Failed { reason } => Some(reason.clone()),
            _ => None,
        };
        let pinned = self.ctx.router.pinned_sessions().filter(|(p, _)| *p == s).map(|(_, n)| n).unwrap_or(0);
        SlotView {
            slot: s,
            state: e.state.name().into(),
            reason,
            live: e.state == SlotState::Live,
            operation: e.op.clone(),
            model: e.load.model.as_ref().map(|(m, _)| m.clone()),
            loaded_at: e.load.loaded_at.clone(),
            load_seconds: e.load.load_seconds,
            memory: self.slot_memory_view(s),
            in_flight: e.load.resident.as_ref().map(|r| r.in_flight()).unwrap_or(0),
            pinned_sessions: pinned,
            warmup: e.load.warmup.clone(),
            gates: e.load.gates.clone(),
            park: e.load.park.clone(),
            rollback_eta_s: self.rollback_eta(s),
        }
    }

    fn status(&self) -> Status {
        Status {
            live: self.live_slot(),
            previous_live: self.prev_live.map(|(s, _)| s),
            served_model_name: self.ctx.router.served_name().map(str::to_string),
            flips: self.flips,
            rollbacks: self.rollbacks,
            last_flip_at: self.last_flip.map(|t| humantime::format_rfc3339_millis(t).to_string()),
            seconds_since_last_flip: self.last_flip.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64()),
            slots: Slots { blue: self.slot_view(SlotName::Blue), green: self.slot_view(SlotName::Green) },
        }
    }
}
