//! The driving side of a fleet-wide rollout. A rollout started on this replica in fleet mode keeps running here
//! (its steps, analysis, guards and report are this replica's), and every 100 ms this task commits what it wants
//! of the fleet: its split weight while it runs, the canary live once it is promoted, the baseline once it is
//! rolled back or aborted. A weight rise and the promotion first have every member prepare the canary (ready,
//! passed gates; a refusal aborts the rollout with the member's reason); a fall and the end of a rollback commit
//! at once and take effect at once (taking traffic away from a canary never waits on anyone).
//!
//! It also ends a split this replica drove before it restarted (the rollout died with the process), and, on a
//! member, drops to the baseline a split whose driver has left the fleet (follow.rs).

use super::coordinate::{commit, Change};
use super::views::{FleetSplit, TargetVersion};
use super::Shared;
use crate::lifecycle::audit::Entry;
use crate::lifecycle::AdminError;
use crate::rollout::run::Run;
use crate::rollout::views::{DecisionKind, RolloutState};
use crate::slot::ModelIdentity;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);
/// How often a member checks that the driver of the split it follows is still a member.
const DRIVER_CHECK: Duration = Duration::from_secs(1);

/// What the local rollout wants of the fleet.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Split(u32),
    Live(TargetVersion),
}

struct Driving {
    run: Arc<Run>,
    baseline: TargetVersion,
    canary: TargetVersion,
    committed: Option<Want>,
    /// The fleet refused the promotion: the fleet goes back to the baseline whatever the rollout says.
    fall_back: bool,
}

pub(super) async fn run(s: Arc<Shared>) {
    let mut phase = s.phase.subscribe();
    if phase.wait_for(|p| *p >= 1).await.is_err() {
        return;
    }
    let mut driving: Option<Driving> = None;
    let mut checked = Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        if *phase.borrow() != 1 {
            return;
        }
        if driving.is_none() {
            driving = take(&s);
        }
        match driving.as_mut() {
            Some(d) => {
                if step(&s, d).await {
                    driving = None;
                }
            }
            None => orphan(&s).await,
        }
        if checked.elapsed() >= DRIVER_CHECK {
            checked = Instant::now();
            if let Ok(members) = s.store.members().await {
                let ids: Vec<String> = members.into_iter().map(|m| m.id).collect();
                super::follow::driver_gone(&s, &ids);
            }
        }
    }
}

fn version(i: &ModelIdentity) -> TargetVersion {
    TargetVersion { model: i.name.clone(), version: i.version.clone(), digest: i.digest.clone() }
}

/// The rollout the admin API asked this replica to drive.
fn take(s: &Shared) -> Option<Driving> {
    let id = s.local().drive.take()?;
    let run = s.rollouts.get(&id)?;
    let (baseline, canary) = (version(&run.split.baseline.identity), version(&run.split.canary.identity));
    Some(Driving { run, baseline, canary, committed: None, fall_back: false })
}

/// One look at the local rollout; true once its end is committed.
async fn step(s: &Shared, d: &mut Driving) -> bool {
    let state = d.run.state();
    let want = match state {
        _ if d.fall_back => Want::Live(d.baseline.clone()),
        RolloutState::Promoted => Want::Live(d.canary.clone()),
        st if st.finished() => Want::Live(d.baseline.clone()),
        _ => Want::Split(d.run.split.weight_bp()),
    };
    let done = state.finished() || d.fall_back;
    if d.committed.as_ref() == Some(&want) {
        return done;
    }
    let rise = match (&want, &d.committed) {
        (Want::Split(w), Some(Want::Split(c))) => w > c,
        (Want::Split(w), _) => *w > 0,
        (Want::Live(v), _) => *v == d.canary,
    };
    let change = match &want {
        Want::Split(w) => Change {
            live: d.baseline.clone(),
            split: Some(FleetSplit {
                rollout_id: d.run.id.clone(),
                canary: d.canary.clone(),
                weight_bp: *w,
                driver: s.settings.replica_id.clone(),
            }),
            prepare: rise.then(|| d.canary.clone()),
            wait: false,
            at_once: !rise,
        },
        Want::Live(v) => {
            Change { live: v.clone(), split: None, prepare: rise.then(|| v.clone()), wait: false, at_once: !rise }
        }
    };
    match commit(s, change).await {
        Ok(_) => {
            d.committed = Some(want);
            done
        }
        Err(AdminError::Conflict(m)) if m.contains("another fleet operation") => false,
        Err(AdminError::Unavailable(m)) => {
            tracing::warn!(rollout = %d.run.id, error = %m, "could not commit the fleet's rollout state; retrying");
            false
        }
        Err(e) if !state.finished() => {
            let _ = d.run.command(DecisionKind::Abort, &format!("the fleet ({e})"));
            false
        }
        Err(e) => {
            tracing::error!(rollout = %d.run.id, error = %e, "the fleet refused the promotion; back to the baseline");
            d.fall_back = true;
            false
        }
    }
}

/// The committed split names this replica as its driver but no rollout of that id runs here (it restarted):
/// nobody drives it any more, so the fleet goes back to its baseline alone.
async fn orphan(s: &Shared) {
    let Some(t) = s.local().last_target.clone() else { return };
    let Some(sp) = t.split.as_ref().filter(|sp| sp.driver == s.settings.replica_id) else { return };
    if s.rollouts.get(&sp.rollout_id).is_some() {
        return;
    }
    let change = Change { live: t.live.clone(), split: None, prepare: None, wait: false, at_once: true };
    if commit(s, change).await.is_ok() {
        s.lifecycle.audit.record(Entry {
            action: "fleet_split_ended",
            outcome: "ok",
            reason: Some(format!("rollout {} was driven by this replica before it restarted", sp.rollout_id)),
            to_version: Some(t.live.version.clone()),
            ..Default::default()
        });
    }
}
