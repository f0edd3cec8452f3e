//! A rollout's task: every tick it asks the run what to do (run.rs decides) and carries it out against the
//! lifecycle: the promotion flip, the flip back after a breach in the bake, removing the split at the end. It
//! writes every new decision to the audit log and keeps the rollout metrics current.

use super::run::{Action, Run};
use super::views::{DecisionKind, RolloutState};
use crate::lifecycle::audit::{AuditLog, Entry};
use crate::lifecycle::{FlipRequest, Lifecycle};
use crate::router::split::FULL;
use crate::telemetry::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const TICK: Duration = Duration::from_millis(50);

pub(super) async fn drive(run: Arc<Run>, lifecycle: Lifecycle, metrics: Metrics) {
    let mut audited = 0usize;
    loop {
        tokio::select! {
            _ = run.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let action = run.decide(Instant::now());
        let end = match action {
            Action::Nothing | Action::Advance => None,
            Action::Promote => promote(&run, &lifecycle).await,
            Action::Revert { state, reason } => Some(revert(&run, &lifecycle, state, reason).await),
            Action::Complete => Some((RolloutState::Promoted, "the bake passed; the canary stays live".into())),
            Action::Ended(why) => Some((RolloutState::Aborted, why)),
        };
        if let Some((state, reason)) = end {
            finish(&run, &lifecycle, state, reason);
        }
        audited = audit_new(&run, &lifecycle.audit, &metrics, audited);
        publish(&run, &metrics);
        if run.state().finished() {
            return;
        }
    }
}

/// Flips the canary live (the last step passed, or an operator promoted it) and starts the bake.
async fn promote(run: &Run, lifecycle: &Lifecycle) -> Option<(RolloutState, String)> {
    run.split.set_weight_bp(FULL);
    let req = FlipRequest {
        to: Some(run.split.canary.slot),
        expect_live: Some(run.split.baseline.slot),
        rollout: Some(run.id.clone()),
        ..Default::default()
    };
    match lifecycle.flip(req).await {
        Ok(out) => {
            let mut inner = run.lock();
            Run::start_bake(&mut inner, Instant::now(), run.config.steps.len().saturating_sub(1));
            let d = run.decision(
                &inner,
                DecisionKind::Promote,
                format!("{} is live (swap {:.1} us); baking for {} s", out.live, out.swap_us, run.config.bake_s),
            );
            Run::push(&mut inner, d);
            None
        }
        Err(e) => {
            run.split.set_weight_bp(0);
            Some((RolloutState::Aborted, format!("the promotion flip failed: {e}")))
        }
    }
}

/// All traffic back to the baseline: the weight is 0 already; a promoted canary is flipped back.
async fn revert(run: &Run, lifecycle: &Lifecycle, state: RolloutState, reason: String) -> (RolloutState, String) {
    run.split.set_weight_bp(0);
    let promoted = run.lock().promoted;
    if promoted {
        if let Err(e) = lifecycle.rollback_for(&run.id).await {
            return (state, format!("{reason}; the flip back to {} failed: {e}", run.split.baseline.slot));
        }
    }
    (state, reason)
}

fn finish(run: &Run, lifecycle: &Lifecycle, state: RolloutState, reason: String) {
    lifecycle.router.remove_split(&run.id);
    run.split.end(&format!("the rollout ended: {reason}"));
    let mut inner = run.lock();
    if inner.state.finished() {
        return;
    }
    let kind = match state {
        RolloutState::Promoted => DecisionKind::Complete,
        RolloutState::RolledBack => DecisionKind::Rollback,
        _ => DecisionKind::Abort,
    };
    // A guard's or the analysis's rollback was recorded with its evidence when it was taken.
    let recorded = inner.decisions.last().is_some_and(|d| d.decision == kind && kind != DecisionKind::Complete);
    if !recorded {
        let d = run.decision(&inner, kind, reason.clone());
        Run::push(&mut inner, d);
    }
    inner.state = state;
    inner.reason = Some(reason);
    inner.ended_at = Some(SystemTime::now());
}

/// Writes the decisions taken since `from` to the audit log; returns the new count.
fn audit_new(run: &Run, audit: &AuditLog, metrics: &Metrics, from: usize) -> usize {
    let inner = run.lock();
    let n = inner.decisions.len();
    for d in inner.decisions.iter().skip(from) {
        let metric = d.metric.as_deref().unwrap_or("");
        metrics.rollout.decisions.with_label_values(&[d.decision.as_str(), metric]).inc();
        audit.record(Entry {
            action: "rollout",
            slot: Some(run.split.canary.slot.to_string()),
            outcome: if d.decision == DecisionKind::Rollback { "failed" } else { "ok" },
            reason: Some(d.reason.clone()),
            from_version: Some(run.split.baseline.identity.version.clone()),
            to_version: Some(run.split.canary.identity.version.clone()),
            forced: false,
            details: serde_json::json!({"rollout": run.id, "decision": d}),
        });
    }
    n
}

fn publish(run: &Run, metrics: &Metrics) {
    let r = &metrics.rollout;
    r.weight.set(run.weight_pct());
    let inner = run.lock();
    r.step.set(inner.step as i64);
    let a = inner.shadow.agreement;
    if a.canary_total > 0 {
        r.shadow_agreement.set(a.canary_matches as f64 / a.canary_total as f64);
    }
    for (label, aa) in [("canary", false), ("aa", true)] {
        if let Some((top1, kl)) = inner.shadow.forced.means(aa) {
            r.shadow_top1.with_label_values(&[label]).set(top1);
            r.shadow_kl.with_label_values(&[label]).set(kl);
        }
    }
    if inner.state.finished() {
        r.weight.set(0.0);
    }
}
