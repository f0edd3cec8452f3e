//! Loads on the controller's side: the checks and admission before a load starts (the request was resolved and
//! estimated off the controller, prepare.rs), the job started on its own guarded thread, and the state changes
//! as the job reports each stage.

use super::{idx, now_rfc3339, Controller};
use crate::lifecycle::audit::Entry;
use crate::lifecycle::checks::report::GateReport;
use crate::lifecycle::pipeline::Job;
use crate::lifecycle::prepare::Prepared;
use crate::lifecycle::report::Report;
use crate::lifecycle::state::{SlotEvent, SlotState};
use crate::lifecycle::{guard, AdminError, FlipRequest, OpKind, Operation, Phase};
use crate::slot::SlotName;
use serde_json::json;

impl Controller {
    pub(super) fn start_load(
        &mut self,
        slot: SlotName,
        model: String,
        p: Prepared,
        go_live: bool,
    ) -> Result<Operation, AdminError> {
        self.busy(slot)?;
        if self.slots[idx(slot)].state == SlotState::Live {
            return Err(AdminError::Conflict(format!(
                "{slot} is the live slot; load into the standby ({}) and flip",
                slot.other()
            )));
        }
        let estimate = self.admit_load(slot, p.estimate, &p.files, &p.device_label)?;
        let replaced = self.slots[idx(slot)].load.model.as_ref().map(|(m, _)| m.version.clone());
        self.set_state(slot, SlotEvent::Load)?;
        self.drop_resident(slot);
        let e = &mut self.slots[idx(slot)];
        (e.load.device, e.load.estimate, e.load.files) = (p.device_label.clone(), estimate, Some(p.files.clone()));
        e.load.timeouts = Some(p.settings.timeouts);
        let (id, cancel) = self.new_op(OpKind::Load, Phase::Loading, slot, &model, go_live, Some(p.settings.timeouts));
        self.ctx.audit.record(Entry {
            action: "load_started",
            slot: Some(slot.to_string()),
            outcome: "ok",
            from_version: replaced,
            to_version: p.settings.version.clone(),
            details: json!({"operation": id, "model": model, "device": p.device_label}),
            ..Default::default()
        });
        let job = Job {
            op: id.clone(),
            slot,
            load_id: self.next_load,
            prepared: p,
            engine: self.ctx.defaults.engine.clone(),
            batch: self.ctx.batch,
            metrics: self.ctx.metrics.clone(),
            router: self.ctx.router.clone(),
            registry: self.ctx.registry.clone(),
            cancel,
            tx: self.tx.clone(),
        };
        self.next_load += 1;
        if let Err(e) = guard::spawn("teal-load", move || job.run()) {
            self.on_failed(&id, format!("cannot start the load thread: {e}"));
        }
        self.view_of(&id).ok_or_else(|| AdminError::NotFound(format!("no operation {id}")))
    }

    pub(super) fn on_report(&mut self, r: Report) {
        match r {
            Report::Progress { op, progress } => {
                if let Some(rec) = super::ops::op_key(&op).and_then(|k| self.ops.get_mut(&k)) {
                    rec.op.progress = progress.clamp(0.0, 1.0);
                }
            }
            Report::Loaded { op, resident, seconds, weights_bytes, warm } => {
                let Some(slot) = self.slot_of(&op) else { return };
                if self.set_state(slot, SlotEvent::Loaded).is_ok() {
                    let e = &mut self.slots[idx(slot)];
                    e.load.model = Some((resident.identity.clone(), resident.load_id));
                    e.load.warm = Some(warm);
                    e.load.resident = Some(resident);
                    e.load.loaded_at = Some(now_rfc3339());
                    e.load.load_seconds = Some(seconds);
                    e.load.weights_bytes = weights_bytes;
                    self.advance(&op, Phase::Warming);
                }
            }
            Report::Warmed { op, report } => {
                let Some(slot) = self.slot_of(&op) else { return };
                if self.set_state(slot, SlotEvent::Warmed).is_ok() {
                    self.slots[idx(slot)].load.warmup = Some(report);
                    self.advance(&op, Phase::Gating);
                }
            }
            Report::Gated { op, report } => self.on_gated(&op, report),
            Report::Failed { op, error } => self.on_job_error(&op, error),
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
            self.ctx.metrics.gate_results.with_label_values(&[g.gate.as_str(), outcome]).inc();
        }
        let (passed, failure) = (report.passed, report.first_failure());
        self.ctx.metrics.slot_gates_passed.with_label_values(&[slot.as_str()]).set(i64::from(passed));
        self.slots[idx(slot)].load.gates = Some(report.clone());
        self.finish_op(op, None);
        let go_live = match super::ops::op_key(op).and_then(|k| self.ops.get_mut(&k)) {
            Some(r) => {
                r.op.gates_passed = Some(passed);
                r.op.go_live
            }
            None => false,
        };
        let version = self.slots[idx(slot)].load.resident.as_ref().map(|r| r.identity.version.clone());
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

    /// A job's failure: a cancelled job's slot was failed when it was cancelled, so only the others count.
    fn on_job_error(&mut self, op: &str, error: crate::lifecycle::report::JobError) {
        if error == crate::lifecycle::report::JobError::Cancelled {
            return;
        }
        let phase = error.phase().map(|p| p.as_str()).unwrap_or("internal");
        tracing::warn!(operation = op, phase, %error, "the operation failed");
        self.on_failed(op, error.to_string());
    }

    pub(super) fn on_failed(&mut self, op: &str, reason: String) {
        let Some(slot) = self.slot_of(op) else { return };
        let _ = self.set_state(slot, SlotEvent::Fail(reason.clone()));
        self.drop_resident(slot);
        self.finish_op(op, Some(reason.clone()));
        self.ctx.audit.record(Entry {
            action: "load_failed",
            slot: Some(slot.to_string()),
            outcome: "failed",
            reason: Some(reason),
            details: json!({"operation": op}),
            ..Default::default()
        });
    }
}
