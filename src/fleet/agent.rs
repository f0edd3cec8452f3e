//! A replica's side of the fleet: heartbeat, answer prepare requests, apply committed targets at their
//! activation time. One task per replica; the work of a prepare (maybe a load) and of an apply runs in tasks of
//! their own so that heartbeats never stop.

use super::hold::ensure;
use super::views::{Ack, Member, MemberSlot, Prepare, Target};
use super::{now_ms, Local, Shared, HEARTBEAT, HEARTBEAT_TTL, POLL};
use crate::lifecycle::audit::Entry;
use crate::lifecycle::{FlipRequest, Status};
use crate::slot::SlotName;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn run(s: Arc<Shared>) {
    let mut phase = s.phase.subscribe();
    if phase.wait_for(|p| *p >= 1).await.is_err() || *phase.borrow() >= 2 {
        return;
    }
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let wake = Arc::new(tokio::sync::Notify::new());
    let listener = tokio::spawn(listen(s.clone(), wake.clone()));
    let mut last_beat: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        if !s.lifecycle.health.alive() || *phase.borrow() != 1 {
            break;
        }
        if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            last_beat = Some(Instant::now());
            heartbeat(&s).await;
        }
        match s.store.poll().await {
            Ok((op, target)) => {
                s.local().last_contact = Some(Instant::now());
                if let Some(p) = op {
                    on_prepare(&s, p);
                }
                s.local().last_target = target.clone();
                match target {
                    Some(t) => on_target(&s, t),
                    None => on_no_target(&s),
                }
            }
            Err(e) => tracing::debug!(error = %e, "fleet poll failed"),
        }
        s.metrics.fleet.staleness.set(s.staleness_s().min(1e9));
    }
    listener.abort();
}

/// Wakes the agent on every fleet notification (a prepare or a commit), so replicas learn of them in a round trip
/// rather than a polling period; reconnects after a second when the subscription fails or ends.
async fn listen(s: Arc<Shared>, wake: Arc<tokio::sync::Notify>) {
    use futures::StreamExt;
    loop {
        match s.store.subscribe().await {
            Ok(mut messages) => {
                while messages.next().await.is_some() {
                    wake.notify_one();
                }
            }
            Err(e) => tracing::debug!(error = %e, "fleet subscription failed (polling goes on)"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn heartbeat(s: &Shared) {
    let Ok(status) = s.lifecycle.status().await else { return };
    if !serving(s) {
        return;
    }
    let m = member(s, &status);
    s.metrics.fleet.epoch.set(m.epoch as i64);
    match s.store.heartbeat(&m, HEARTBEAT_TTL).await {
        Ok(()) => s.local().last_contact = Some(Instant::now()),
        Err(e) => tracing::debug!(error = %e, "fleet heartbeat failed"),
    }
}

fn member(s: &Shared, status: &Status) -> Member {
    let live = status.live.map(|l| status.slots.get(l));
    let slots = SlotName::ALL
        .iter()
        .map(|&n| {
            let v = status.slots.get(n);
            MemberSlot {
                slot: n.to_string(),
                state: v.state.clone(),
                version: v.model.as_ref().map(|m| m.version.clone()),
                digest: v.model.as_ref().map(|m| m.digest.clone()),
                gates_passed: v.gates.as_ref().map(|g| g.passed),
            }
        })
        .collect();
    let l = s.local();
    let (state, reason) = match (&l.frozen, &l.diverged) {
        (Some(r), _) => ("frozen", Some(r.clone())),
        (None, Some(r)) => ("diverged", Some(r.clone())),
        _ => ("in_sync", None),
    };
    Member {
        id: s.settings.replica_id.clone(),
        live_slot: status.live.map(|l| l.to_string()),
        live_version: live.and_then(|v| v.model.as_ref().map(|m| m.version.clone())),
        live_digest: live.and_then(|v| v.model.as_ref().map(|m| m.digest.clone())),
        slots,
        epoch: l.applied,
        state: state.into(),
        reason,
        heartbeat_ms: now_ms(),
        staleness_s: 0.0,
    }
}

fn serving(s: &Shared) -> bool {
    *s.phase.borrow() == 1
}

fn on_prepare(s: &Arc<Shared>, p: Prepare) {
    if now_ms() > p.deadline_ms || !serving(s) {
        return;
    }
    {
        let mut l = s.local();
        if l.preparing.as_deref() == Some(p.op.as_str()) {
            return;
        }
        l.preparing = Some(p.op.clone());
    }
    let s = s.clone();
    tokio::spawn(async move {
        let left = Duration::from_millis(p.deadline_ms.saturating_sub(now_ms()));
        let ack = match tokio::time::timeout(left, ensure(&s, &p.target)).await {
            Ok(Ok(slot)) => Ack { ok: true, slot: Some(slot.to_string()), digest: Some(p.target.digest), reason: None },
            Ok(Err(why)) => Ack { ok: false, slot: None, digest: None, reason: Some(why) },
            Err(_) => Ack { ok: false, slot: None, digest: None, reason: Some("timed out preparing".into()) },
        };
        if let Err(e) = s.store.ack(&p.op, &s.settings.replica_id, &ack).await {
            tracing::warn!(error = %e, op = %p.op, "could not acknowledge a fleet prepare");
        }
    });
}

/// Longest a replica waits for an activation time (the default delay is 300 ms).
const MAX_ACTIVATION_WAIT: Duration = Duration::from_secs(10);

/// Redis holds no target: nothing to adopt for a replica that never applied one; for one that did, Redis lost its
/// data (restarted without persistence): freeze until a newer epoch is committed.
fn on_no_target(s: &Shared) {
    let mut l = s.local();
    if l.applied > 0 {
        if l.frozen.is_none() {
            let why = format!("the fleet's target is gone from Redis (this replica applied epoch {})", l.applied);
            tracing::error!("{why}; not applying fleet changes until a newer epoch");
            l.frozen = Some(why);
        }
        return;
    }
    adopted(s, &mut l);
}

/// This replica serves the fleet's committed state (or there is none): it may report ready.
fn adopted(s: &Shared, l: &mut Local) {
    if !l.adopted {
        l.adopted = true;
        s.lifecycle.health.hold_ready(None);
    }
}

/// Longest a replica waits before trying again to apply a target that it could not apply.
const RETRY: Duration = Duration::from_secs(5);

fn on_target(s: &Arc<Shared>, t: Target) {
    if !serving(s) {
        return;
    }
    {
        let mut l = s.local();
        if t.epoch <= l.applied && !l.adopted {
            adopted(s, &mut l);
        }
        if l.retry.is_some_and(|(e, at)| e == t.epoch && Instant::now() < at) {
            return;
        }
        if t.epoch < l.applied {
            if l.frozen.is_none() {
                let why = format!("the fleet's epoch went backwards: applied {}, Redis says {}", l.applied, t.epoch);
                tracing::error!("{why}; not applying fleet changes until a newer epoch");
                l.frozen = Some(why);
            }
            return;
        }
        if t.epoch == l.applied || l.applying.is_some_and(|e| e >= t.epoch) {
            return;
        }
        l.applying = Some(t.epoch);
    }
    let s = s.clone();
    tokio::spawn(async move {
        // A coordinator whose clock runs ahead must not make this replica wait long (or forever).
        let wait = Duration::from_millis(t.activate_at_ms.saturating_sub(now_ms())).min(MAX_ACTIVATION_WAIT);
        tokio::time::sleep(wait).await;
        if s.local().applying != Some(t.epoch) {
            return; // a newer epoch took over while this one waited
        }
        let outcome = apply(&s, &t).await;
        settle(&s, &t, outcome);
        // Report at once: the coordinator waits for every member's applied epoch.
        heartbeat(&s).await;
    });
}

/// How applying a target ended.
enum Applied {
    Done,
    /// The live version is in place; the split could not be followed here (this replica serves the baseline).
    SplitNotFollowed(String),
    /// A newer epoch took over before this one acted.
    Superseded,
}

/// Records how applying `t` ended (a superseded epoch changes nothing: the newer one reports).
fn settle(s: &Shared, t: &Target, outcome: Result<Applied, String>) {
    let mut l = s.local();
    if l.applying == Some(t.epoch) {
        l.applying = None;
    }
    match outcome {
        Ok(Applied::Superseded) => {}
        Ok(done) => {
            l.applied = l.applied.max(t.epoch);
            l.frozen = None;
            l.diverged = match done {
                Applied::SplitNotFollowed(why) => Some(why),
                _ => None,
            };
            l.retry = None;
            adopted(s, &mut l);
        }
        Err(why) => {
            tracing::warn!(epoch = t.epoch, %why, "could not apply the fleet's target");
            if !l.adopted {
                let v = &t.live.version;
                s.lifecycle.health.hold_ready(Some(format!("cannot adopt the fleet's version {v}: {why}")));
            }
            l.diverged = Some(why);
            l.retry = Some((t.epoch, Instant::now() + RETRY));
        }
    }
}

/// Makes `t` live here: a flip to the slot holding it (never to one whose gates did not pass), then its split.
/// What may take long (a load) happens first; the acts (flip, split) happen under the act lock and only if no
/// newer epoch has taken over meanwhile, so an older target never lands after a newer one.
async fn apply(s: &Shared, t: &Target) -> Result<Applied, String> {
    if t.split.as_ref().is_some_and(|sp| s.rollouts.get(&sp.rollout_id).is_some()) {
        return Ok(Applied::Done); // this replica's own rollout drives the split and its promotion flip
    }
    let slot = ensure(s, &t.live).await?;
    let canary = match &t.split {
        Some(sp) => Some(super::follow::canary(s, sp).await),
        None => None,
    };
    let _act = s.acting.lock().await;
    if s.local().applying != Some(t.epoch) {
        return Ok(Applied::Superseded);
    }
    let status = s.lifecycle.status().await.map_err(|e| e.to_string())?;
    if status.live != Some(slot) {
        flip(s, t, slot).await?;
    }
    Ok(match super::follow::act(s, t, canary) {
        None => Applied::Done,
        Some(why) => Applied::SplitNotFollowed(why),
    })
}

async fn flip(s: &Shared, t: &Target, slot: SlotName) -> Result<(), String> {
    let req = FlipRequest { to: Some(slot), ..Default::default() };
    let out = s.lifecycle.flip(req).await.map_err(|e| format!("flip to {slot}: {e}"))?;
    s.lifecycle.audit.record(Entry {
        action: "fleet_apply",
        slot: Some(slot.to_string()),
        outcome: "ok",
        to_version: Some(t.live.version.clone()),
        details: serde_json::json!({"epoch": t.epoch, "op": t.op, "by": t.by, "activate_at_ms": t.activate_at_ms,
                                    "late_ms": now_ms().saturating_sub(t.activate_at_ms), "flip": out}),
        ..Default::default()
    });
    Ok(())
}
