//! Progressive delivery inside the server: a rollout moves a share of requests from the live version (the
//! baseline) to a ready standby (the canary) in steps, mirrors some baseline requests to the canary (shadow),
//! compares the two arms continuously and rolls back by itself on a breach, then promotes (a flip) and bakes.
//!
//! Owns: the running rollout and the last finished ones (`Rollouts`), each rollout's state and decisions
//! (run.rs), its statistics (window.rs, stats.rs, analysis.rs, guards.rs), its task (task.rs) and its report
//! (report.rs). The router owns the split itself (router/split.rs): requests read the weight there without
//! touching this module; the API reports each outcome here. The lifecycle stays the only writer of the live
//! pointer: promotion and the flip back are lifecycle flips marked with the rollout's id, and any other flip,
//! or the canary leaving its slot, ends the rollout.

pub mod analysis;
pub mod config;
pub mod guards;
pub mod report;
pub mod run;
pub mod stats;
mod task;
pub mod teacher;
pub mod views;
pub mod window;

use crate::lifecycle::audit::Entry;
use crate::lifecycle::{AdminError, Lifecycle};
use crate::router::Split;
use crate::slot::{ModelKind, SlotName};
use crate::telemetry::Metrics;
use run::{arm_info, Run};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use views::{DecisionKind, RolloutView};

/// Finished rollouts kept for `GET /admin/rollouts/{id}`.
const KEEP_FINISHED: usize = 32;

/// The handle the API and the server hold; cheap to clone.
#[derive(Clone)]
pub struct Rollouts {
    inner: Arc<Registry>,
}

struct Registry {
    lifecycle: Lifecycle,
    metrics: Metrics,
    runs: Mutex<VecDeque<Arc<Run>>>,
}

impl Rollouts {
    pub fn new(lifecycle: Lifecycle, metrics: Metrics) -> Self {
        Rollouts { inner: Arc::new(Registry { lifecycle, metrics, runs: Mutex::new(VecDeque::new()) }) }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Run>>> {
        self.inner.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rollout that is running now (progressing or paused).
    pub fn active(&self) -> Option<Arc<Run>> {
        self.runs().back().filter(|r| !r.state().finished()).cloned()
    }

    /// The rollout with this id, or "current" for the latest.
    pub fn get(&self, id: &str) -> Option<Arc<Run>> {
        let runs = self.runs();
        if id == "current" {
            return runs.back().cloned();
        }
        runs.iter().find(|r| r.id == id).cloned()
    }

    /// The run a request's split belongs to.
    pub fn of_split(&self, split: &Split) -> Option<Arc<Run>> {
        self.active().filter(|r| r.id == split.rollout_id)
    }

    /// Starts a rollout: `body` is the POST body (`to` and any settings). 409 when one runs or the standby is
    /// not ready; 400 for bad settings.
    pub async fn start(&self, mut body: serde_json::Value) -> Result<RolloutView, AdminError> {
        let obj =
            body.as_object_mut().ok_or_else(|| AdminError::BadRequest("the body must be a JSON object".into()))?;
        let to = match obj.remove("to") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(
                SlotName::parse(&s)
                    .ok_or_else(|| AdminError::BadRequest(format!("to: no slot {s:?}; use blue or green")))?,
            ),
            Some(_) => return Err(AdminError::BadRequest("to must be \"blue\" or \"green\"".into())),
        };
        if let Some(r) = self.active() {
            return Err(AdminError::Conflict(format!("rollout {} is {}", r.id, r.state().as_str())));
        }
        let lifecycle = &self.inner.lifecycle;
        let baseline = lifecycle.router.peek().ok_or_else(|| AdminError::Conflict("no slot is live".into()))?;
        let to = to.unwrap_or(baseline.slot.other());
        if to == baseline.slot {
            return Err(AdminError::Conflict(format!("{to} is live; a rollout goes to the standby")));
        }
        let canary = lifecycle.ready_standby(to).await?;
        for r in [&baseline, &canary] {
            if r.identity.kind != ModelKind::TextGeneration {
                return Err(AdminError::Conflict(format!(
                    "{} holds a {} model; rollouts compare text-generation models",
                    r.slot, r.identity.kind
                )));
            }
        }
        let source = canary.identity.source.clone();
        let file = tokio::task::spawn_blocking(move || crate::lifecycle::spec::read_model_toml(&source))
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?
            .map_err(AdminError::BadRequest)?;
        let config = config::effective(file.rollout.as_ref(), body).map_err(AdminError::BadRequest)?;
        let id = format!("ro-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let split = Arc::new(Split::new(id.clone(), baseline.clone(), canary.clone()));
        split.set_weight_bp(run::bp(config.steps.first().copied().unwrap_or(100.0)));
        let run = Arc::new(Run::new(id.clone(), config, split.clone()));
        {
            let mut runs = self.runs();
            if let Some(r) = runs.back().filter(|r| !r.state().finished()) {
                return Err(AdminError::Conflict(format!("rollout {} is {}", r.id, r.state().as_str())));
            }
            runs.push_back(run.clone());
            while runs.len() > KEEP_FINISHED {
                runs.pop_front();
            }
        }
        lifecycle.router.install_split(split.clone());
        // The standby may have changed between the check and the install: check again, now that a change
        // would end the split.
        match lifecycle.ready_standby(to).await {
            Ok(r) if r.load_id == canary.load_id => {}
            _ => split.end("the standby changed while the rollout started"),
        }
        self.audit_start(&run);
        tokio::spawn(task::drive(run.clone(), lifecycle.clone(), self.inner.metrics.clone()));
        Ok(report::view(&run))
    }

    fn audit_start(&self, run: &Run) {
        let mut inner = run.lock();
        let d = run.decision(
            &inner,
            DecisionKind::Start,
            format!("steps {:?} %, shadow rate {}", run.config.steps, run.config.shadow_rate),
        );
        Run::push(&mut inner, d);
        drop(inner);
        self.inner.lifecycle.audit.record(Entry {
            action: "rollout_started",
            slot: Some(run.split.canary.slot.to_string()),
            outcome: "ok",
            reason: None,
            from_version: Some(run.split.baseline.identity.version.clone()),
            to_version: Some(run.split.canary.identity.version.clone()),
            forced: false,
            details: serde_json::json!({"rollout": run.id, "config": run.config, "baseline": arm_info(&run.split.baseline), "canary": arm_info(&run.split.canary)}),
        });
    }

    /// pause, resume, promote or abort.
    pub fn command(&self, id: &str, kind: DecisionKind) -> Result<RolloutView, AdminError> {
        let run = self.get(id).ok_or_else(|| AdminError::NotFound(format!("no rollout {id}")))?;
        run.command(kind, "the operator").map_err(AdminError::Conflict)?;
        Ok(report::view(&run))
    }
}
