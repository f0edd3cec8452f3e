//! Request routing to the live slot. Owns the one atomic live pointer (`ArcSwapOption<Resident>`): a request
//! takes a `SlotLease` once, keeps it to its last token, and so never sees a flip mid-response; a flip stores a
//! new pointer and in-flight requests drain on the slot they started on. Only the lifecycle controller stores.

mod pins;
mod resident;
pub mod split;

use crate::slot::SlotName;
use arc_swap::ArcSwapOption;
pub use resident::{Resident, SlotLease};
pub use split::{Arm, RouteKey, Split};

/// The split and arm that routed a request during a rollout.
pub type Routed = (Arc<Split>, Arm);
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The live pointer and the name clients use for the served model.
pub struct LiveRouter {
    live: ArcSwapOption<Resident>,
    /// `--served-model-name`, or the name of the first model that went live; fixed for the process so that a
    /// flip to another model does not change what clients send.
    alias: OnceLock<String>,
    /// Session draining after a flip: sessions active on the old version keep it until idle or timeout.
    sessions: Mutex<SessionRouting>,
    /// A rollout's canary split, while one runs.
    split: ArcSwapOption<Split>,
}

/// Where each recently used session was served, and the drain in force (if any).
#[derive(Default)]
struct SessionRouting {
    /// session id -> (last use, load id of the version that served it).
    last: HashMap<String, (Instant, u64)>,
    drain: Option<Drain>,
}

struct Drain {
    old: Arc<Resident>,
    pins: pins::Pins,
}

/// Session uses remembered for draining; older ones are forgotten.
const SESSION_MEMORY: Duration = Duration::from_secs(3600);

impl LiveRouter {
    pub fn new(served_model_name: Option<String>) -> Self {
        let alias = OnceLock::new();
        if let Some(n) = served_model_name {
            let _ = alias.set(n);
        }
        LiveRouter {
            live: ArcSwapOption::empty(),
            alias,
            sessions: Mutex::new(SessionRouting::default()),
            split: ArcSwapOption::empty(),
        }
    }

    fn routing(&self) -> std::sync::MutexGuard<'_, SessionRouting> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lease for a request of session `id`: the old version while the session is pinned by a drain (until it
    /// has been idle for the drain's idle time, or the drain times out), else the live slot.
    pub fn lease_session(&self, id: &str) -> Option<SlotLease> {
        let mut r = self.routing();
        if let Some(d) = r.drain.as_mut() {
            if d.pins.keep(id, Instant::now()) {
                return Some(d.old.lease());
            }
        }
        drop(r);
        self.lease()
    }

    /// Records that session `id` was served by `lease` (what a later drain pins).
    pub fn touch_session(&self, id: &str, lease: &SlotLease) {
        let now = Instant::now();
        let mut r = self.routing();
        if r.last.len() > 100_000 {
            r.last.retain(|_, (t, _)| now - *t < SESSION_MEMORY);
        }
        r.last.insert(id.to_string(), (now, lease.load_id));
    }

    /// Starts draining `old` (the version that was just live): sessions it served within `idle` stay on it
    /// until they are idle that long or `timeout` passes. Returns how many were pinned.
    pub(crate) fn start_drain(&self, old: Arc<Resident>, idle: Duration, timeout: Duration) -> usize {
        let now = Instant::now();
        let mut r = self.routing();
        let mut pins = pins::Pins::new(&r.last, old.load_id, idle, timeout, now);
        let n = pins.remaining(now).unwrap_or(0);
        r.drain = Some(Drain { old, pins });
        n
    }

    /// Ends any drain (a later flip, or the drained version being unloaded).
    pub(crate) fn end_drain(&self) {
        self.routing().drain = None;
    }

    /// Sessions pinned now, by slot (drops the expired ones and a finished drain).
    pub fn pinned_sessions(&self) -> Option<(SlotName, usize)> {
        let mut r = self.routing();
        let d = r.drain.as_mut()?;
        match d.pins.remaining(Instant::now()) {
            Some(n) => Some((d.old.slot, n)),
            None => {
                r.drain = None;
                None
            }
        }
    }

    /// A lease for a generation request under a rollout's split: a session pinned by a drain keeps its old
    /// version; otherwise the split (when one runs) picks the arm from `key` (and the arm the session had earlier
    /// in this rollout, `sticky`), else the live slot serves. Returns the arm when a split decided.
    pub fn lease_routed(
        &self,
        session: Option<&str>,
        key: RouteKey<'_>,
        sticky: impl FnOnce(&Split) -> Option<Arm>,
    ) -> Option<(SlotLease, Option<Routed>)> {
        if let Some(id) = session {
            let mut r = self.routing();
            if let Some(d) = r.drain.as_mut() {
                if d.pins.keep(id, Instant::now()) {
                    return Some((d.old.lease(), None));
                }
            }
        }
        if let Some(split) = self.split.load_full().filter(|s| s.ended().is_none()) {
            let arm = split.arm(key, sticky(&split));
            if let Some(r) = split.resident(arm) {
                return Some((r.lease(), Some((split.clone(), arm))));
            }
        }
        self.lease().map(|l| (l, None))
    }

    /// The running split, if any.
    pub fn split(&self) -> Option<Arc<Split>> {
        self.split.load_full()
    }

    /// Installs a rollout's split (rollout only).
    pub fn install_split(&self, split: Arc<Split>) {
        self.split.store(Some(split));
    }

    /// Removes `rollout_id`'s split, if it is the one installed.
    pub fn remove_split(&self, rollout_id: &str) {
        if self.split.load().as_ref().is_some_and(|s| s.rollout_id == rollout_id) {
            self.split.store(None);
        }
    }

    /// Ends the running split because of a lifecycle action (a manual flip, an unload); the rollout that owns
    /// it reports `why`. Rollout-driven flips pass their rollout id and leave their own split alone.
    pub(crate) fn end_split(&self, why: &str, except_rollout: Option<&str>) {
        if let Some(s) = self.split.load_full() {
            if except_rollout != Some(s.rollout_id.as_str()) {
                s.end(why);
                self.split.store(None);
            }
        }
    }

    /// Ends the running split if it routes to version `load_id` (that version is leaving its slot).
    pub(crate) fn end_split_using(&self, load_id: u64, why: &str) {
        if let Some(s) = self.split.load_full().filter(|s| s.uses(load_id)) {
            s.end(why);
            self.split.store(None);
        }
    }

    /// A lease on the live slot, or None before any slot is live.
    pub fn lease(&self) -> Option<SlotLease> {
        self.live.load_full().map(|r| r.lease())
    }

    /// The live version without taking a lease (status, headers of non-generation routes).
    pub fn peek(&self) -> Option<Arc<Resident>> {
        self.live.load_full()
    }

    /// The served name; requests may name it or the live model's own name.
    pub fn served_name(&self) -> Option<&str> {
        self.alias.get().map(String::as_str)
    }

    pub fn accepts(&self, requested: &str, lease: &SlotLease) -> bool {
        self.served_name() == Some(requested) || lease.identity.name == requested
    }

    /// Makes `next` live in one atomic store and returns the previous live version. Lifecycle only.
    pub(crate) fn swap(&self, next: Arc<Resident>) -> Option<Arc<Resident>> {
        let _ = self.alias.set(next.identity.name.clone());
        self.live.swap(Some(next))
    }

    /// Empties the live pointer (shutdown).
    pub(crate) fn clear(&self) -> Option<Arc<Resident>> {
        self.live.swap(None)
    }
}
