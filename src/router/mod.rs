//! Request routing to the live slot. Owns the one atomic live pointer (`ArcSwapOption<Resident>`): a request
//! takes a `SlotLease` once, keeps it to its last token, and so never sees a flip mid-response; a flip stores a
//! new pointer and in-flight requests drain on the slot they started on. Only the lifecycle controller stores.

mod pins;

use crate::backend::Backend;
use crate::engine::Engine;
use crate::slot::{ModelIdentity, SlotName};
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One loaded model version in a slot: its identity and what serves it (the LLM engine or a batcher). Immutable;
/// shared by the slot table, the live pointer and every request that leased it.
pub struct Resident {
    /// Distinguishes two loads of the same model into the same slot (rollback checks it).
    pub load_id: u64,
    pub slot: SlotName,
    pub identity: ModelIdentity,
    pub backend: Backend,
    in_flight: AtomicUsize,
}

impl Resident {
    pub fn new(load_id: u64, slot: SlotName, identity: ModelIdentity, backend: Backend) -> Self {
        Resident { load_id, slot, identity, backend, in_flight: AtomicUsize::new(0) }
    }

    /// The LLM engine, when this version is a text-generation model.
    pub fn engine(&self) -> Option<&Engine> {
        self.backend.engine()
    }

    /// Requests holding a lease on this version.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A lease on this version for one request (the lifecycle's gates use it too).
    pub fn lease(self: &Arc<Self>) -> SlotLease {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        SlotLease(self.clone())
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        tracing::info!(slot = %self.slot, model = %self.identity.name, version = %self.identity.version, "unloaded");
    }
}

/// A request's hold on the slot it started on; counts as in flight until dropped.
pub struct SlotLease(Arc<Resident>);

impl SlotLease {
    pub fn resident(&self) -> &Arc<Resident> {
        &self.0
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.0.engine()
    }
}

impl std::ops::Deref for SlotLease {
    type Target = Resident;
    fn deref(&self) -> &Resident {
        &self.0
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The live pointer and the name clients use for the served model.
pub struct LiveRouter {
    live: ArcSwapOption<Resident>,
    /// `--served-model-name`, or the name of the first model that went live; fixed for the process so that a
    /// flip to another model does not change what clients send.
    alias: OnceLock<String>,
    /// Session draining after a flip: sessions active on the old version keep it until idle or timeout.
    sessions: Mutex<SessionRouting>,
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
        LiveRouter { live: ArcSwapOption::empty(), alias, sessions: Mutex::new(SessionRouting::default()) }
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
