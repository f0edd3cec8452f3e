//! The operations table: every load, park and wake as GET /admin/operations/{id} shows it (phases with their
//! timings, progress, outcome), and the two ways a running operation ends early: an operator's cancel, and a
//! stage that overran its timeout. Either fails the operation's slot with the reason, stops the standby's
//! engine (so a thread waiting on it returns at once) and tells the blocking job to stop at its next check.

use super::{idx, now_rfc3339, Controller, OpRecord};
use crate::lifecycle::audit::Entry;
use crate::lifecycle::spec::Timeouts;
use crate::lifecycle::state::SlotEvent;
use crate::lifecycle::{AdminError, OpKind, OpStatus, Operation, Phase};
use crate::slot::SlotName;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Finished operations kept for GET /admin/operations/{id}.
const KEEP_OPS: usize = 256;

use crate::lifecycle::guard::CancelFlag;

pub(super) fn op_key(id: &str) -> Option<u64> {
    id.strip_prefix("op-")?.parse().ok()
}

impl Controller {
    /// Records a new running operation; returns its id and cancel flag.
    pub(super) fn new_op(
        &mut self,
        kind: OpKind,
        phase: Phase,
        slot: SlotName,
        model: &str,
        go_live: bool,
        timeouts: Option<Timeouts>,
    ) -> (String, CancelFlag) {
        let key = self.next_op;
        self.next_op += 1;
        let id = format!("op-{key}");
        let op = Operation {
            id: id.clone(),
            kind,
            slot,
            model: model.to_string(),
            status: OpStatus::Running,
            phase,
            progress: 0.0,
            started_at: now_rfc3339(),
            elapsed_s: 0.0,
            timings: Default::default(),
            error: None,
            gates_passed: None,
            go_live,
            timeouts,
        };
        let now = Instant::now();
        let cancel = CancelFlag::default();
        self.ops.insert(key, OpRecord { op, started: now, phase_started: now, cancel: cancel.clone() });
        while self.ops.len() > KEEP_OPS {
            let Some((&oldest, _)) = self.ops.iter().find(|(_, r)| r.op.finished()) else { break };
            self.ops.remove(&oldest);
        }
        self.slots[idx(slot)].op = Some(id.clone());
        (id, cancel)
    }

    pub(super) fn op_view(&self, r: &OpRecord) -> Operation {
        let mut op = r.op.clone();
        if !op.finished() {
            op.elapsed_s = r.started.elapsed().as_secs_f64();
        }
        op
    }

    pub(super) fn view_of(&self, id: &str) -> Option<Operation> {
        op_key(id).and_then(|k| self.ops.get(&k)).map(|r| self.op_view(r))
    }

    /// Ends the current phase of an operation (recording its time) and starts `next`.
    pub(super) fn advance(&mut self, id: &str, next: Phase) {
        let Some(r) = op_key(id).and_then(|k| self.ops.get_mut(&k)) else { return };
        let secs = r.phase_started.elapsed().as_secs_f64();
        r.op.timings.insert(r.op.phase.to_string(), secs);
        r.op.phase = next;
        r.op.progress = 0.0;
        r.phase_started = Instant::now();
        if next == Phase::Done {
            r.op.elapsed_s = r.started.elapsed().as_secs_f64();
            r.op.timings.insert("total".into(), r.op.elapsed_s);
            r.op.progress = 1.0;
        }
    }

    /// Marks an operation finished.
    pub(super) fn finish_op(&mut self, id: &str, error: Option<String>) {
        self.advance(id, Phase::Done);
        if let Some(r) = op_key(id).and_then(|k| self.ops.get_mut(&k)) {
            r.op.status = if error.is_some() { OpStatus::Failed } else { OpStatus::Succeeded };
            r.op.error = error;
        }
    }

    /// The slot an operation runs on, if it is still that slot's current operation.
    pub(super) fn slot_of(&self, id: &str) -> Option<SlotName> {
        SlotName::ALL
            .into_iter()
            .find(|&s| self.slots[idx(s)].op.as_deref() == Some(id) && self.slots[idx(s)].state.busy())
    }

    /// POST /admin/operations/{id}/cancel.
    pub(super) fn cancel(&mut self, id: &str) -> Result<Operation, AdminError> {
        let running = self.view_of(id).ok_or_else(|| AdminError::NotFound(format!("no operation {id}")))?;
        if running.finished() {
            return Err(AdminError::Conflict(format!("operation {id} has already {}", running.status)));
        }
        self.abort(id, "cancelled by the operator".into(), "operation_cancelled");
        self.view_of(id).ok_or_else(|| AdminError::NotFound(format!("no operation {id}")))
    }

    /// Fails a running operation now: its slot becomes failed with `reason`, its standby's engine stops (so a
    /// warm-up or gate waiting on it returns), and the job stops at its next check.
    pub(super) fn abort(&mut self, id: &str, reason: String, action: &'static str) {
        if let Some(r) = op_key(id).and_then(|k| self.ops.get(&k)) {
            r.cancel.store(true, Ordering::Release);
        }
        let slot = self.slot_of(id);
        if let Some(resident) = slot.and_then(|s| self.slots[idx(s)].load.resident.clone()) {
            resident.backend.abort();
        }
        if let Some(slot) = slot {
            let _ = self.set_state(slot, SlotEvent::Fail(reason.clone()));
            self.drop_resident(slot);
        }
        self.finish_op(id, Some(reason.clone()));
        self.ctx.audit.record(Entry {
            action,
            slot: slot.map(|s| s.to_string()),
            outcome: "failed",
            reason: Some(reason),
            details: json!({"operation": id}),
            ..Default::default()
        });
    }

    /// Aborts every running operation whose current phase has run past its timeout.
    pub(super) fn enforce_timeouts(&mut self) {
        let late: Vec<(String, String)> = self
            .ops
            .values()
            .filter(|r| !r.op.finished())
            .filter_map(|r| {
                let (limit, key) = r.op.phase.limit(&r.op.timeouts.unwrap_or_default())?;
                (r.phase_started.elapsed().as_secs_f64() > limit)
                    .then(|| (r.op.id.clone(), format!("{} timed out after {limit} s (timeouts.{key})", r.op.phase)))
            })
            .collect();
        for (id, reason) in late {
            self.abort(&id, reason, "operation_timed_out");
        }
    }
}
