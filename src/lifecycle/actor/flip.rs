//! Flips and rollbacks on the controller's side: which slot to go to, the checks (expected live slot, busy,
//! parked, kind, gates), the one pointer swap, session draining, the metrics and the audit record.

use super::{idx, Controller};
use crate::lifecycle::audit::Entry;
use crate::lifecycle::checks::report::GateReport;
use crate::lifecycle::state::{SlotEvent, SlotState};
use crate::lifecycle::{AdminError, FlipOutcome, FlipRequest};
use crate::router::Resident;
use crate::slot::SlotName;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

impl Controller {
    fn flip_target(&self, req: &FlipRequest, rollback: bool, live: Option<SlotName>) -> Result<SlotName, AdminError> {
        if rollback {
            let Some((slot, load_id)) = self.prev_live else {
                return Err(AdminError::Conflict(
                    "nothing to roll back to: no earlier live version is resident".into(),
                ));
            };
            let same = self.slots[idx(slot)].load.model.as_ref().is_some_and(|(_, l)| *l == load_id);
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

    pub(super) fn flip(&mut self, req: &FlipRequest, rollback: bool) -> Result<FlipOutcome, AdminError> {
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
            entry.load.resident.clone().filter(|_| matches!(entry.state, SlotState::Ready | SlotState::Draining))
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
        let gates_ok = entry.load.gates.as_ref().is_some_and(|g| g.passed || g.forced);
        let forced = req.force && !gates_ok;
        if !gates_ok && !req.force && !rollback {
            let why = entry
                .load
                .gates
                .as_ref()
                .and_then(GateReport::first_failure)
                .unwrap_or_else(|| "no gate report".into());
            self.record_refusal(target, &why);
            return Err(AdminError::GateFailed(format!("flip to {target} refused: {why}")));
        }
        let why = if rollback { "a manual rollback ended the rollout" } else { "a manual flip ended the rollout" };
        self.ctx.router.end_split(why, req.rollout.as_deref());
        let t0 = Instant::now();
        let old = self.ctx.router.swap(resident.clone());
        let swap_us = t0.elapsed().as_secs_f64() * 1e6;
        self.set_state(target, SlotEvent::GoLive)?;
        if let Some(prev) = live {
            self.set_state(prev, SlotEvent::StepDown)?;
        }
        if forced {
            if let Some(g) = self.slots[idx(target)].load.gates.as_mut() {
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
}
