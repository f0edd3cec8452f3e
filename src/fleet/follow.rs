//! A member's side of a fleet-wide rollout: the committed target's split, applied to this replica's router. The
//! replica that started the rollout drives it (its own rollout owns the split there); every other member
//! installs a split with the same rollout id, versions and weight, so a key's bucket and a session's arm are the
//! same whichever replica serves it. A member never routes to a canary that is not ready here with passed gates,
//! and falls back to the baseline alone when the driving replica has left the fleet (nobody drives the rollout
//! any more: an operator settles it with a fleet flip or rollback).

use super::hold::ensure;
use super::views::{FleetSplit, Target};
use super::Shared;
use crate::lifecycle::audit::Entry;
use crate::router::{Resident, Split};
use std::sync::Arc;

/// What following `want` needs here, found before acting (it may load the canary): the canary's resident when a
/// new split must be installed, None when only the weight of the installed one changes.
pub(super) async fn canary(s: &Shared, want: &FleetSplit) -> Result<Option<Arc<Resident>>, String> {
    let installed = s.lifecycle.router.split();
    if installed.is_some_and(|c| c.rollout_id == want.rollout_id && c.ended().is_none()) {
        return Ok(None);
    }
    let slot = ensure(s, &want.canary).await?;
    let canary = s.lifecycle.ready_standby(slot).await.map_err(|e| format!("the canary {slot}: {e}"))?;
    Ok(Some(canary))
}

/// Makes this replica's split what `t` says (none, or `t.split` at its weight); `canary` is what `canary()`
/// found. Returns why the split is not followed here, if it is not (this replica then serves the baseline).
pub(super) fn act(s: &Shared, t: &Target, canary: Option<Result<Option<Arc<Resident>>, String>>) -> Option<String> {
    let router = &s.lifecycle.router;
    let Some(want) = &t.split else {
        end_follower(s, "the fleet's rollout ended");
        return None;
    };
    // A rollout of this replica's own (started with "fleet": false) keeps its split.
    if let Some(own) = router.split().filter(|c| s.rollouts.of_split(c).is_some()) {
        return Some(format!(
            "the local rollout {} runs here: not following the fleet's {}",
            own.rollout_id, want.rollout_id
        ));
    }
    if let Some(cur) = router.split().filter(|c| c.rollout_id == want.rollout_id && c.ended().is_none()) {
        cur.set_weight_bp(want.weight_bp);
        return None;
    }
    end_follower(s, "the fleet's rollout changed");
    let canary = match canary {
        Some(Ok(Some(c))) => c,
        Some(Err(why)) => return Some(format!("not following rollout {}: {why}", want.rollout_id)),
        _ => return Some(format!("not following rollout {}: its canary is not in place", want.rollout_id)),
    };
    let Some(baseline) = router.peek() else { return Some("no slot is live".into()) };
    if baseline.identity.digest != t.live.digest {
        return Some(format!(
            "{} is live here, not the fleet's baseline {}",
            baseline.identity.version, t.live.version
        ));
    }
    let split = Arc::new(Split::new(want.rollout_id.clone(), baseline, canary));
    split.set_weight_bp(want.weight_bp);
    router.install_split(split);
    audit(s, t, want);
    None
}

/// Ends a split this replica follows (not one its own rollout owns); requests already running keep their slot.
pub(super) fn end_follower(s: &Shared, why: &str) {
    let router = &s.lifecycle.router;
    if let Some(cur) = router.split().filter(|c| s.rollouts.get(&c.rollout_id).is_none()) {
        cur.end(why);
        router.remove_split(&cur.rollout_id);
    }
}

/// The driver of the split this replica follows, if it follows one (a split its own rollout owns is not
/// followed); the committed target names it.
pub(super) fn followed_driver(s: &Shared) -> Option<String> {
    let cur = s.lifecycle.router.split().filter(|c| s.rollouts.get(&c.rollout_id).is_none() && c.weight_bp() > 0)?;
    let l = s.local();
    let sp = l.last_target.as_ref()?.split.as_ref()?;
    (sp.rollout_id == cur.rollout_id).then(|| sp.driver.clone())
}

/// The driver of the split this replica follows has left the fleet: all traffic back to the baseline here.
pub(super) fn driver_gone(s: &Shared, driver: &str) {
    if let Some(cur) = s.lifecycle.router.split().filter(|c| s.rollouts.get(&c.rollout_id).is_none()) {
        tracing::warn!(rollout = %cur.rollout_id, %driver, "the replica driving the fleet's rollout left; serving the baseline only");
        cur.set_weight_bp(0);
    }
}

fn audit(s: &Shared, t: &Target, want: &FleetSplit) {
    s.lifecycle.audit.record(Entry {
        action: "fleet_split",
        outcome: "ok",
        from_version: Some(t.live.version.clone()),
        to_version: Some(want.canary.version.clone()),
        details: serde_json::json!({"epoch": t.epoch, "rollout": want.rollout_id, "weight_bp": want.weight_bp,
                                    "driver": want.driver}),
        ..Default::default()
    });
}
