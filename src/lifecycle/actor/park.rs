//! Park and wake on the controller's side: the checks, the state changes and the audit records; the work runs on
//! a blocking thread (lifecycle/park.rs) and reports back.

use super::{idx, now_rfc3339, Controller};
use crate::lifecycle::audit::Entry;
use crate::lifecycle::checks::report::WarmupReport;
use crate::lifecycle::park::{ParkJob, WakeJob};
use crate::lifecycle::report::WakeTimings;
use crate::lifecycle::state::{SlotEvent, SlotState};
use crate::lifecycle::{AdminError, OpKind, Operation, Phase};
use crate::models::LanguageModel;
use crate::router::Resident;
use crate::slot::SlotName;
use serde_json::json;
use std::sync::Arc;

impl Controller {
    pub(super) fn park(&mut self, slot: SlotName) -> Result<Operation, AdminError> {
        self.busy(slot)?;
        let e = &self.slots[idx(slot)];
        if e.state != SlotState::Ready {
            return Err(AdminError::Conflict(format!(
                "{slot} is {}; only a ready standby can be parked",
                e.state.name()
            )));
        }
        let Some(resident) = e.load.resident.clone() else {
            return Err(AdminError::Conflict(format!("{slot} holds no model")));
        };
        if resident.engine().is_none() {
            return Err(AdminError::Conflict(format!(
                "{slot} holds a {} model; parking is for text-generation models (the KV cache is what it frees)",
                resident.identity.kind
            )));
        }
        if resident.in_flight() > 0 {
            return Err(AdminError::Conflict(format!("{slot} still has {} requests running", resident.in_flight())));
        }
        self.set_state(slot, SlotEvent::Park)?;
        self.ctx.router.end_split_using(resident.load_id, &format!("{slot} was parked"));
        self.slots[idx(slot)].load.resident = None;
        let id = &resident.identity;
        self.ctx.metrics.forget_slot(&id.name, slot.as_str(), &id.version);
        let timeouts = self.slots[idx(slot)].load.timeouts;
        let (op, _) = self.new_op(OpKind::Park, Phase::Parking, slot, &id.name, false, timeouts);
        self.audit_park("park_started", slot, &op);
        let job = ParkJob { op: op.clone(), resident, tx: self.tx.clone() };
        if let Err(e) = crate::lifecycle::guard::spawn("teal-park", move || job.run()) {
            self.on_failed(&op, format!("cannot start the park thread: {e}"));
        }
        self.view_of(&op).ok_or_else(|| AdminError::NotFound(format!("no operation {op}")))
    }

    pub(super) fn on_parked(&mut self, op: &str, model: Arc<LanguageModel>, seconds: f64, moved: u64) {
        let Some(slot) = self.slot_of(op) else { return };
        if self.set_state(slot, SlotEvent::Parked).is_err() {
            return;
        }
        let e = &mut self.slots[idx(slot)];
        e.load.parked = Some(model);
        e.load.park.parked_at = Some(now_rfc3339());
        e.load.park.park_seconds = Some(seconds);
        e.load.park.moved_bytes = moved;
        self.finish_op(op, None);
        self.audit_park("parked", slot, op);
    }

    pub(super) fn wake(&mut self, slot: SlotName) -> Result<Operation, AdminError> {
        self.busy(slot)?;
        let e = &self.slots[idx(slot)];
        let (Some(model), Some((identity, load_id)), SlotState::Parked) = (&e.load.parked, &e.load.model, &e.state)
        else {
            return Err(AdminError::Conflict(format!("{slot} is {}; only a parked slot can wake", e.state.name())));
        };
        let device =
            crate::device::parse_device(&e.load.device).map_err(|err| AdminError::Conflict(err.to_string()))?;
        let moves = !model.llama.device().same_device(&device);
        self.admit_wake(slot, moves)?;
        let (model, identity, load_id) = (model.clone(), identity.clone(), *load_id);
        let warm = e.load.warm.clone().unwrap_or_default();
        self.set_state(slot, SlotEvent::Wake)?;
        self.slots[idx(slot)].load.parked = None;
        let timeouts = self.slots[idx(slot)].load.timeouts;
        let (op, _) = self.new_op(OpKind::Wake, Phase::Waking, slot, &identity.name, false, timeouts);
        self.audit_park("wake_started", slot, &op);
        let job = WakeJob {
            op: op.clone(),
            slot,
            load_id,
            identity,
            model,
            device,
            engine: self.ctx.defaults.engine.clone(),
            metrics: self.ctx.metrics.clone(),
            warm,
            tx: self.tx.clone(),
        };
        if let Err(e) = crate::lifecycle::guard::spawn("teal-wake", move || job.run()) {
            self.on_failed(&op, format!("cannot start the wake thread: {e}"));
        }
        self.view_of(&op).ok_or_else(|| AdminError::NotFound(format!("no operation {op}")))
    }

    pub(super) fn on_woken(&mut self, op: &str, resident: Arc<Resident>, warmup: WarmupReport, t: WakeTimings) {
        let Some(slot) = self.slot_of(op) else { return };
        if self.set_state(slot, SlotEvent::Woken).is_err() {
            return;
        }
        let e = &mut self.slots[idx(slot)];
        e.load.resident = Some(resident);
        e.load.warmup = Some(warmup);
        e.load.park.woken_at = Some(now_rfc3339());
        e.load.park.wake_seconds = Some(t.move_s + t.allocate_s + t.warm_s);
        e.load.park.wake = Some(t);
        e.load.park.moved_bytes = t.moved_bytes;
        self.finish_op(op, None);
        self.audit_park("woken", slot, op);
    }

    fn audit_park(&self, action: &'static str, slot: SlotName, op: &str) {
        let e = &self.slots[idx(slot)];
        self.ctx.audit.record(Entry {
            action,
            slot: Some(slot.to_string()),
            outcome: "ok",
            to_version: e.load.model.as_ref().map(|(m, _)| m.version.clone()),
            details: json!({"operation": op, "park": e.load.park}),
            ..Default::default()
        });
    }

    /// A flip or rollback to a parked slot: a rollback wakes it first when configured (the handle does that on
    /// `AdminError::Parked`); anything else is refused.
    pub(super) fn refuse_parked(&self, target: SlotName, rollback: bool) -> Result<(), AdminError> {
        if self.slots[idx(target)].state != SlotState::Parked {
            return Ok(());
        }
        if rollback && self.ctx.wake_on_rollback {
            return Err(AdminError::Parked(target));
        }
        Err(AdminError::Conflict(format!(
            "{target} is parked; wake it first (POST /admin/slots/{target}/wake){}",
            if rollback { ", rollbacks to a parked slot are set to refuse" } else { "" }
        )))
    }

    /// Seconds until a rollback to `slot` could serve: a swap when it is ready, its last wake time (else its load
    /// time) when parked; None when it cannot be rolled back to.
    pub(super) fn rollback_eta(&self, slot: SlotName) -> Option<f64> {
        let e = &self.slots[idx(slot)];
        match e.state {
            SlotState::Ready | SlotState::Draining => Some(0.0),
            SlotState::Parked => e.load.park.wake_seconds.or(e.load.load_seconds),
            _ => None,
        }
    }
}
