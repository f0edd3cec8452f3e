//! A fleet flip, coordinated by the replica that received it: take the fleet's lease (a fencing token), ask
//! every member to prepare the target, wait for all acknowledgements, then commit the target under a fresh
//! epoch with an activation time (the commit script checks the token, so a coordinator that lost its lease
//! cannot commit), or abort: nobody flips. Then wait for the members to report the epoch applied.

use super::lease::Lease;
use super::views::{Ack, FleetFlipOutcome, FleetSplit, Prepare, Target, TargetVersion};
use super::{now_ms, Shared, HEARTBEAT};
use crate::lifecycle::audit::Entry;
use crate::lifecycle::AdminError;
use crate::slot::SlotName;
use std::time::{Duration, Instant};

/// Epochs stay far below 2^53 (Lua numbers are doubles) and print as plain integers.
const MAX_EPOCH: u64 = 1 << 40;

fn redis(e: String) -> AdminError {
    AdminError::Unavailable(format!("the fleet's Redis: {e}"))
}

pub(super) async fn flip(s: &Shared, to: Option<SlotName>, rollback: bool) -> Result<FleetFlipOutcome, AdminError> {
    let target = target_of(s, to, rollback).await?;
    let change = Change { prepare: Some(target.clone()), wait: true, ..Change::new(target, None) };
    commit(s, change).await.map_err(AdminError::from)
}

/// A state for the whole fleet: `live` everywhere, with `split` on top; every member first prepares `prepare`
/// (when given: a version not everyone may hold yet); `wait` for every member to report it applied.
pub(super) struct Change {
    pub live: TargetVersion,
    pub split: Option<FleetSplit>,
    pub prepare: Option<TargetVersion>,
    pub wait: bool,
    /// Takes effect at once instead of at a common activation time (traffic taken away from a canary).
    pub at_once: bool,
    /// Commit only if the fleet's target is still this epoch (0: none): a change computed from the fleet's
    /// state must not overwrite a change someone else committed meanwhile. Checked under the lease.
    pub based_on: Option<u64>,
    /// Checked after the prepare, before the commit: false when the change no longer stands (the rollout that
    /// asked for a higher weight was rolled back while the members prepared).
    pub still: Option<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl Change {
    pub fn new(live: TargetVersion, split: Option<FleetSplit>) -> Change {
        Change { live, split, prepare: None, wait: false, at_once: false, based_on: None, still: None }
    }
}

/// Why a change was not committed.
#[derive(Debug)]
pub(super) enum CommitError {
    /// Another fleet operation holds the lease.
    Busy,
    /// The fleet's target is not the one the change was based on (or a fleet-wide rollout runs).
    Changed(String),
    /// `still` said no after the prepare.
    Superseded,
    Failed(AdminError),
}

impl From<CommitError> for AdminError {
    fn from(e: CommitError) -> AdminError {
        match e {
            CommitError::Busy => AdminError::Conflict("another fleet operation is running".into()),
            CommitError::Changed(why) => AdminError::Conflict(why),
            CommitError::Superseded => AdminError::Conflict("superseded while the members prepared".into()),
            CommitError::Failed(e) => e,
        }
    }
}

/// Takes the fleet's lease, checks the change still applies, prepares if asked, commits `change` under a new
/// epoch and releases the lease.
pub(super) async fn commit(s: &Shared, change: Change) -> Result<FleetFlipOutcome, CommitError> {
    let max = s.settings.prepare_timeout + Duration::from_secs(60);
    let lease =
        Lease::take(&s.store, max).await.map_err(|e| CommitError::Failed(redis(e)))?.ok_or(CommitError::Busy)?;
    let (_, current) = s.store.poll().await.map_err(|e| CommitError::Failed(redis(e)))?;
    let epoch = current.as_ref().map(|t| t.epoch).unwrap_or(0);
    if change.based_on.is_some_and(|e| e != epoch) {
        return Err(CommitError::Changed(format!("the fleet changed (epoch {epoch}) while this change was made")));
    }
    if let Some(sp) = current.as_ref().and_then(|t| t.split.as_ref()).filter(|_| change.based_on.is_none()) {
        // An operator's flip while a fleet-wide rollout runs would be undone by it; a dead driver's split (its
        // replica left the fleet) does not hold the fleet hostage.
        let members = s.store.members().await.map_err(|e| CommitError::Failed(redis(e)))?;
        if members.iter().any(|m| m.id == sp.driver) {
            return Err(CommitError::Changed(format!(
                "the fleet's rollout {} runs (driven by {}): promote or abort it there first",
                sp.rollout_id, sp.driver
            )));
        }
    }
    let out = two_phase(s, lease.token(), change).await;
    lease.release().await;
    out
}

/// The version in this replica's `to` slot (default the standby), or for a rollback its previous live one: it
/// must be ready here with gates that passed (a fleet never goes to a version that did not pass them).
async fn target_of(s: &Shared, to: Option<SlotName>, rollback: bool) -> Result<TargetVersion, AdminError> {
    let status = s.lifecycle.status().await?;
    let slot = match (rollback, to) {
        (true, _) => status.previous_live.ok_or_else(|| AdminError::Conflict("nothing to roll back to".into()))?,
        (false, Some(t)) => t,
        (false, None) => status.live.map(SlotName::other).unwrap_or(SlotName::Blue),
    };
    let v = status.slots.get(slot);
    let m = v.model.as_ref().ok_or_else(|| AdminError::Conflict(format!("{slot} holds no model")))?;
    if !v.live && !v.gates.as_ref().is_some_and(|g| g.passed && !g.forced) {
        return Err(AdminError::GateFailed(format!("{slot} ({}) has not passed its gates", m.version)));
    }
    Ok(TargetVersion { model: m.name.clone(), version: m.version.clone(), digest: m.digest.clone() })
}

async fn two_phase(s: &Shared, token: u64, change: Change) -> Result<FleetFlipOutcome, CommitError> {
    let failed = |e: String| CommitError::Failed(redis(e));
    let present = s.store.members().await.map_err(failed)?;
    // No member ever sees an epoch it already applied again, even after Redis lost its counter.
    // (A heartbeat claiming an absurd epoch is ignored rather than allowed to exhaust the counter.)
    let floor = present.iter().map(|m| m.epoch).filter(|e| *e < MAX_EPOCH).max().unwrap_or(0);
    let members: Vec<String> = present.into_iter().map(|m| m.id).collect();
    if !members.contains(&s.settings.replica_id) {
        return Err(CommitError::Failed(AdminError::Unavailable(format!(
            "{} has not joined the fleet yet (its startup models are loading, or Redis is unreachable)",
            s.settings.replica_id
        ))));
    }
    let op = format!("fop-{:012x}", rand::random::<u64>() >> 16);
    let acks = match &change.prepare {
        Some(v) => prepare(s, &op, &members, v).await.map_err(CommitError::Failed)?,
        None => vec![],
    };
    if change.still.as_ref().is_some_and(|still| !still()) {
        return Err(CommitError::Superseded);
    }
    let by = s.settings.replica_id.clone();
    let delay = if change.at_once { 0 } else { s.settings.activate_delay.as_millis() as u64 };
    let activate_at_ms = now_ms() + delay;
    let target = change.live.clone();
    let t = Target { epoch: 0, live: change.live, activate_at_ms, op: op.clone(), by, split: change.split };
    let epoch = s.store.commit(token, &t, floor).await.map_err(failed)?.ok_or_else(|| {
        CommitError::Failed(AdminError::Conflict(
            "the fleet lease was lost before the commit (nothing was committed)".into(),
        ))
    })?;
    notify(s).await;
    let weight = t.split.as_ref().map(|sp| sp.weight_bp);
    s.lifecycle.audit.record(Entry {
        action: "fleet_commit",
        outcome: "ok",
        to_version: Some(target.version.clone()),
        details: serde_json::json!({"op": op, "epoch": epoch, "members": members, "activate_at_ms": activate_at_ms,
                                    "split_weight_bp": weight}),
        ..Default::default()
    });
    let converged = !change.wait || converge(s, &members, epoch, activate_at_ms).await;
    Ok(FleetFlipOutcome { op, epoch, target, activate_at_ms, acks, converged })
}

/// Asks every member to make sure it can serve `v` and waits for all of them; aborts (nobody flips) on a
/// refusal or on silence past the prepare timeout.
async fn prepare(
    s: &Shared,
    op: &str,
    members: &[String],
    v: &TargetVersion,
) -> Result<Vec<(String, Ack)>, AdminError> {
    let deadline = Instant::now() + s.settings.prepare_timeout;
    let prepare = Prepare {
        op: op.to_string(),
        target: v.clone(),
        deadline_ms: now_ms() + s.settings.prepare_timeout.as_millis() as u64,
        by: s.settings.replica_id.clone(),
    };
    s.store.start_prepare(&prepare, s.settings.prepare_timeout).await.map_err(redis)?;
    notify(s).await;
    loop {
        let mut acks = s.store.acks(op).await.map_err(redis)?;
        // Only the members counted at the start decide (a replica that is leaving may still answer).
        acks.retain(|id, _| members.contains(id));
        let refused: Vec<String> = acks
            .iter()
            .filter(|(_, a)| !a.ok)
            .map(|(id, a)| format!("{id}: {}", a.reason.clone().unwrap_or_default()))
            .collect();
        if !refused.is_empty() {
            return Err(abort(s, op, v, format!("refused by {}", refused.join("; "))).await);
        }
        if members.iter().all(|m| acks.contains_key(m)) {
            let mut acks: Vec<(String, Ack)> = acks.into_iter().collect();
            acks.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(acks);
        }
        if Instant::now() >= deadline {
            let missing: Vec<&str> = members.iter().filter(|m| !acks.contains_key(*m)).map(String::as_str).collect();
            return Err(abort(s, op, v, format!("no answer from {} in time", missing.join(", "))).await);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wakes the members (they would also see it at their next poll).
async fn notify(s: &Shared) {
    if let Err(e) = s.store.notify().await {
        tracing::debug!(error = %e, "could not publish a fleet notification (members poll)");
    }
}

async fn abort(s: &Shared, op: &str, target: &TargetVersion, why: String) -> AdminError {
    if let Err(e) = s.store.clear_op().await {
        tracing::warn!(error = %e, "could not clear an aborted fleet prepare (it expires by itself)");
    }
    s.lifecycle.audit.record(Entry {
        action: "fleet_abort",
        outcome: "aborted",
        reason: Some(why.clone()),
        to_version: Some(target.version.clone()),
        details: serde_json::json!({"op": op}),
        ..Default::default()
    });
    AdminError::Conflict(format!("fleet flip to {} aborted, no replica flipped: {why}", target.version))
}

/// Waits (up to a few heartbeats after activation) for every member to report `epoch` applied.
async fn converge(s: &Shared, members: &[String], epoch: u64, activate_at_ms: u64) -> bool {
    let until = activate_at_ms + 3 * HEARTBEAT.as_millis() as u64 + 1000;
    while now_ms() < until {
        if let Ok(now) = s.store.members().await {
            let done = members.iter().all(|id| now.iter().any(|m| &m.id == id && m.epoch >= epoch));
            if done {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
