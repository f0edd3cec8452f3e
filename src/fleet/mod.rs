//! A fleet: several teal replicas that switch versions together through Redis (`--fleet-name`,
//! `--fleet-redis-url`, `--replica-id`). Each replica heartbeats its slots and applied epoch; a fleet flip on any
//! replica prepares every member (each makes sure a slot holds the target version, ready with passed gates,
//! loading it into its standby if needed, and acknowledges), then commits the target under a fresh epoch with an
//! activation time a little ahead, so the replicas flip together; any refusal or silence aborts it and nobody
//! flips. A replica applies only epochs above the one it applied; one that sees the epoch go backwards (or the
//! target vanish) freezes and says so. A replica cut off from Redis keeps serving what it has and never flips on
//! its own. A replica reports ready only once it serves the fleet's committed version (a late joiner adopts it).
//!
//! This module owns the replica's fleet state (applied epoch, frozen or diverged reason, last contact); the
//! lifecycle stays the only writer of the live pointer: the fleet asks it to load and flip like an operator.

mod agent;
mod coordinate;
mod follow;
mod hold;
mod lease;
mod rollout_sync;
pub mod store;
pub mod views;

use crate::lifecycle::{AdminError, Lifecycle};
use crate::rollout::Rollouts;
use crate::slot::SlotName;
use crate::telemetry::Metrics;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::Store;
use views::{FleetFlipOutcome, FleetView};

/// How often a replica heartbeats, and how long its heartbeat lives.
const HEARTBEAT: Duration = Duration::from_secs(1);
const HEARTBEAT_TTL: Duration = Duration::from_secs(5);
/// How often a replica reads the fleet's prepare request and target. Coordinators also publish a notification
/// (pub/sub) that wakes every replica at once; pub/sub is at-most-once, so polling bounds how late a replica
/// learns of a commit, and the activation delay covers it.
const POLL: Duration = Duration::from_millis(100);

/// The fleet flags, resolved.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub name: String,
    pub redis_url: String,
    pub replica_id: String,
    /// How far ahead of the commit every replica flips.
    pub activate_delay: Duration,
    /// How long members may take to prepare (a load, warm-up and gates).
    pub prepare_timeout: Duration,
}

/// What this replica knows of its own fleet state.
#[derive(Debug, Default)]
struct Local {
    applied: u64,
    /// Set when Redis showed an epoch below the applied one (a failover lost writes): nothing is applied until a
    /// newer epoch than ours appears.
    frozen: Option<String>,
    /// Why the last target could not be applied here.
    diverged: Option<String>,
    /// The prepare request being (or last) answered, and the epoch being applied.
    preparing: Option<String>,
    applying: Option<u64>,
    /// An epoch whose apply failed here, and when to try it again (not on every poll).
    retry: Option<(u64, Instant)>,
    /// Whether this replica has adopted the fleet's committed state since it started (readiness waits for it).
    adopted: bool,
    /// The committed target as last read.
    last_target: Option<views::Target>,
    /// The rollout started here that drives the fleet's split, once the admin API asks for it.
    drive: Option<String>,
    last_contact: Option<Instant>,
}

pub(crate) struct Shared {
    /// 0 before the startup models are in place, 1 while serving, 2 once the server stops.
    phase: tokio::sync::watch::Sender<u8>,
    settings: FleetSettings,
    store: Store,
    lifecycle: Lifecycle,
    rollouts: Rollouts,
    metrics: Metrics,
    local: Mutex<Local>,
    /// Held while a committed target is acted on (a flip, a split), so that targets land one at a time.
    acting: tokio::sync::Mutex<()>,
}

impl Shared {
    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn staleness_s(&self) -> f64 {
        self.local().last_contact.map(|t| t.elapsed().as_secs_f64()).unwrap_or(f64::INFINITY)
    }
}

/// The handle the admin API holds; cheap to clone.
#[derive(Clone)]
pub struct Fleet(Arc<Shared>);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Fleet {
    /// Joins the fleet: starts heartbeating and watching it (a late joiner adopts the committed version).
    pub fn start(
        settings: FleetSettings,
        lifecycle: Lifecycle,
        rollouts: Rollouts,
        metrics: Metrics,
    ) -> Result<Fleet, String> {
        let store = Store::new(&settings.redis_url, &settings.name)?;
        let why =
            format!("joining fleet {}: its committed version is not known yet (Redis not reached)", settings.name);
        lifecycle.health.hold_ready(Some(why));
        let phase = tokio::sync::watch::Sender::new(0);
        let local = Mutex::new(Local::default());
        let acting = tokio::sync::Mutex::new(());
        let shared = Arc::new(Shared { phase, settings, store, lifecycle, rollouts, metrics, local, acting });
        tokio::spawn(agent::run(shared.clone()));
        tokio::spawn(rollout_sync::run(shared.clone()));
        Ok(Fleet(shared))
    }

    /// The startup models are in place: start heartbeating and applying the fleet's target (a late joiner's
    /// adoption never races the server's own startup loads).
    pub fn begin(&self) {
        self.0.phase.send_replace(1);
    }

    /// The server stops: leave the fleet at once (members do not wait for the heartbeat to expire).
    pub async fn leave(&self) {
        self.0.phase.send_replace(2);
        if let Err(e) = self.0.store.leave(&self.0.settings.replica_id).await {
            tracing::debug!(error = %e, "could not leave the fleet (the heartbeat expires by itself)");
        }
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.0.settings
    }

    /// The members, the committed target and this replica's staleness.
    pub async fn view(&self) -> Result<FleetView, AdminError> {
        let s = &self.0;
        let unavailable = |e: String| AdminError::Unavailable(format!("the fleet's Redis: {e}"));
        let mut members = s.store.members().await.map_err(unavailable)?;
        let (_, target) = s.store.poll().await.map_err(unavailable)?;
        let now = now_ms();
        for m in &mut members {
            m.staleness_s = now.saturating_sub(m.heartbeat_ms) as f64 / 1000.0;
        }
        Ok(FleetView {
            name: s.settings.name.clone(),
            replica_id: s.settings.replica_id.clone(),
            target,
            members,
            staleness_s: s.staleness_s(),
        })
    }

    /// Makes the rollout `id`, just started here, drive every member's split (its weights, promotion and
    /// rollback become fleet commits).
    pub fn drive_rollout(&self, id: &str) {
        self.0.local().drive = Some(id.to_string());
    }

    /// Whether a rollout may start on this replica: not while the fleet runs one, and a fleet-wide one only
    /// from the version the fleet has committed (this replica's live one becomes every member's baseline).
    pub async fn check_rollout(&self, fleet_wide: bool) -> Result<(), AdminError> {
        let s = &self.0;
        let (_, target) =
            s.store.poll().await.map_err(|e| AdminError::Unavailable(format!("the fleet's Redis: {e}")))?;
        let Some(t) = target else { return Ok(()) };
        if let Some(sp) = &t.split {
            return Err(AdminError::Conflict(format!(
                "the fleet's rollout {} is running; drive it on {}, the replica that started it",
                sp.rollout_id, sp.driver
            )));
        }
        let live = s.lifecycle.router.peek().map(|r| r.identity.digest.clone());
        if fleet_wide && live.as_deref() != Some(t.live.digest.as_str()) {
            return Err(AdminError::Conflict(format!(
                "this replica does not serve the fleet's committed version {} (epoch {})",
                t.live.version, t.epoch
            )));
        }
        Ok(())
    }

    /// Flips every member to the version in this replica's `to` slot (default: the standby), or with
    /// `rollback` to the version this replica had live before; two-phase, all or nobody.
    pub async fn flip(&self, to: Option<SlotName>, rollback: bool) -> Result<FleetFlipOutcome, AdminError> {
        coordinate::flip(&self.0, to, rollback).await
    }
}
