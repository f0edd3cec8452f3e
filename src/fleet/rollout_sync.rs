//! The driving side of a fleet-wide rollout. A rollout started on this replica in fleet mode keeps running here
//! (its steps, analysis, guards and report are this replica's), and every 100 ms this task commits what it wants
//! of the fleet: its split weight while it runs, the canary live once it is promoted, the baseline once it is
//! rolled back or aborted. A weight rise and the promotion first have every member prepare the canary (ready,
//! passed gates; a refusal aborts the rollout with the member's reason); a fall and the end of a rollback commit
//! at once and take effect at once (taking traffic away from a canary never waits on anyone).
//!
//! It also ends a split this replica drove before it restarted (the rollout died with the process), and, on a
//! member, drops to the baseline a split whose driver has left the fleet (follow.rs).

use super::coordinate::{commit, Change, CommitError};
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
    /// The fleet's epoch this driver last saw or committed: its next change is based on it.
    epoch: u64,
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
        // Only a replica that follows another's split asks Redis who the members are.
        if checked.elapsed() >= DRIVER_CHECK {
            checked = Instant::now();
            if let Some(driver) = super::follow::followed_driver(&s) {
                if let Ok(members) = s.store.members().await {
                    if !members.iter().any(|m| m.id == driver) {
                        super::follow::driver_gone(&s, &driver);
                    }
                }
            }
        }
    }
}

fn version(i: &ModelIdentity) -> TargetVersion {
    TargetVersion { model: i.name.clone(), version: i.version.clone(), digest: i.digest.clone() }
}

/// The rollout the admin API asked this replica to drive.
fn take(s: &Shared) -> Option<Driving> {
    let (id, epoch) = {
        let mut l = s.local();
        (l.drive.take()?, l.last_target.as_ref().map(|t| t.epoch).unwrap_or(0))
    };
    let run = s.rollouts.get(&id)?;
    let (baseline, canary) = (version(&run.split.baseline.identity), version(&run.split.canary.identity));
    Some(Driving { run, baseline, canary, committed: None, epoch, fall_back: false })
}

/// What the rollout wants of the fleet now.
fn wanted(d: &Driving) -> Want {
    wanted_of(&d.run, d.fall_back, &d.baseline, &d.canary)
}

fn wanted_of(run: &Run, fall_back: bool, baseline: &TargetVersion, canary: &TargetVersion) -> Want {
    match run.state() {
        _ if fall_back => Want::Live(baseline.clone()),
        RolloutState::Promoted => Want::Live(canary.clone()),
        st if st.finished() => Want::Live(baseline.clone()),
        _ => Want::Split(run.split.weight_bp()),
    }
}

/// The fleet change for `want`: a rise is prepared by every member and takes effect at the activation time
/// (and only if the rollout still wants it once they have); a fall takes effect at once.
fn change(s: &Shared, d: &Driving, want: &Want) -> Change {
    let rise = match (want, &d.committed) {
        (Want::Split(w), Some(Want::Split(c))) => w > c,
        (Want::Split(w), _) => *w > 0,
        (Want::Live(v), _) => *v == d.canary,
    };
    let (live, split) = match want {
        Want::Split(w) => {
            let split = FleetSplit {
                rollout_id: d.run.id.clone(),
                canary: d.canary.clone(),
                weight_bp: *w,
                driver: s.settings.replica_id.clone(),
            };
            (d.baseline.clone(), Some(split))
        }
        Want::Live(v) => (v.clone(), None),
    };
    let mut c = Change::new(live, split);
    c.based_on = Some(d.epoch);
    c.at_once = !rise;
    if rise {
        c.prepare = Some(d.canary.clone());
        let (run, asked, fall_back) = (d.run.clone(), want.clone(), d.fall_back);
        let (baseline, canary) = (d.baseline.clone(), d.canary.clone());
        c.still = Some(Box::new(move || match (wanted_of(&run, fall_back, &baseline, &canary), &asked) {
            (Want::Split(now), Want::Split(w)) => now >= *w,
            (now, asked) => now == *asked,
        }));
    }
    c
}

/// One look at the local rollout; true once its end is committed (or driving it is over).
async fn step(s: &Shared, d: &mut Driving) -> bool {
    let want = wanted(d);
    let done = d.run.state().finished() || d.fall_back;
    if d.committed.as_ref() == Some(&want) {
        return done;
    }
    match commit(s, change(s, d, &want)).await {
        Ok(out) => {
            d.committed = Some(want);
            d.epoch = out.epoch;
            done
        }
        Err(CommitError::Busy | CommitError::Superseded) => false,
        Err(CommitError::Changed(why)) => {
            // Someone else changed the fleet: this rollout no longer describes it. End it here; the fleet keeps
            // what was committed.
            let _ = d.run.command(DecisionKind::Abort, &format!("the fleet ({why})"));
            true
        }
        Err(CommitError::Failed(AdminError::Unavailable(m))) => {
            tracing::warn!(rollout = %d.run.id, error = %m, "could not commit the fleet's rollout state; retrying");
            false
        }
        Err(CommitError::Failed(e)) if !done => {
            let _ = d.run.command(DecisionKind::Abort, &format!("the fleet ({e})"));
            false
        }
        Err(CommitError::Failed(e)) => {
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
    let mut change = Change::new(t.live.clone(), None);
    (change.at_once, change.based_on) = (true, Some(t.epoch));
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
