//! A resident model version and a request's lease on it: what the live pointer, the drain and a rollout's split
//! point at. A lease counts the request in flight until it is dropped, so a slot knows when it has drained.

use crate::backend::Backend;
use crate::engine::Engine;
use crate::slot::{ModelIdentity, SlotName};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
