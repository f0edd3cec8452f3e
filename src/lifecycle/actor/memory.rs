//! The controller's memory accounting: admission before a load or a wake, each slot's actual figures beside its
//! estimate, and the report behind GET /admin/memory and the memory metrics.

use super::{idx, Controller, FileSignature};
use crate::lifecycle::memory_report::{device_totals, publish, DeviceMemory, MemoryReport, SlotMemory};
use crate::lifecycle::state::SlotState;
use crate::lifecycle::views::SlotMemoryView;
use crate::lifecycle::AdminError;
use crate::memory::budget::{self, Need};
use crate::slot::SlotName;
use std::time::Instant;

/// How often the memory gauges are refreshed.
const METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Controller {
    /// Admission of a load into `slot`: the estimate from the files (made off the controller, prepare.rs) must
    /// fit the device's budget beside what the other slot holds there. Weights the other slot already holds from
    /// the same files are credited (they will be shared). A model whose files could not be read is let through:
    /// the load fails on the same files before it allocates anything, with the loader's precise reason.
    pub(super) fn admit_load(
        &self,
        slot: SlotName,
        estimate: Option<Need>,
        files: &FileSignature,
        device: &str,
    ) -> Result<Option<Need>, AdminError> {
        let Some(mut need) = estimate else { return Ok(None) };
        let other = &self.slots[idx(slot.other())];
        if other.load.device == device && other.load.files.as_ref() == Some(files) {
            let held = other.load.resident.as_ref().and_then(|r| r.engine().map(|e| e.model().clone()));
            let held = held.or_else(|| other.load.parked.clone());
            let shared = held.map(|m| m.llama.holdings().bytes()).unwrap_or(0);
            need.weights = need.weights.saturating_sub(shared);
        }
        let held = self.held_on(device, Some(slot));
        let this = self.slot_memory(slot);
        let in_use = self.slots[idx(slot)].load.resident.as_ref().is_some_and(|r| r.in_flight() > 0);
        let reclaimable = if this.device == device && !in_use { this.device_bytes() } else { 0 };
        self.ctx
            .budgets
            .admit(device, &need, held, reclaimable, self.live_bytes_on(device))
            .map_err(|e| AdminError::InsufficientMemory(format!("{slot}: load refused: {e}")))?;
        Ok(Some(need))
    }

    /// Admission of a wake: the KV pool and workspace (and the weights, when they come back from host memory)
    /// must fit beside everything teal holds on the device, this slot's parked weights included.
    pub(super) fn admit_wake(&self, slot: SlotName, moves_weights: bool) -> Result<(), AdminError> {
        let e = &self.slots[idx(slot)];
        let est = e.load.estimate.unwrap_or_default();
        let weights =
            if moves_weights { e.load.parked.as_ref().map(|m| m.llama.weight_bytes()).unwrap_or(0) } else { 0 };
        let need = Need { weights, kv: est.kv, workspace: est.workspace };
        self.ctx
            .budgets
            .admit(&e.load.device, &need, self.held_on(&e.load.device, None), 0, self.live_bytes_on(&e.load.device))
            .map_err(|err| AdminError::InsufficientMemory(format!("{slot}: wake refused: {err}")))
    }

    /// What teal's slots hold on `device` (shared weights once), leaving out `except`.
    fn held_on(&self, device: &str, except: Option<SlotName>) -> u64 {
        let slots: Vec<SlotMemory> =
            SlotName::ALL.into_iter().filter(|s| Some(*s) != except).map(|s| self.slot_memory(s)).collect();
        let (weights, _, kv, ws) = device_totals(device, &slots);
        weights + kv + ws
    }

    fn live_bytes_on(&self, device: &str) -> Option<u64> {
        let live = self.live_slot()?;
        let m = self.slot_memory(live);
        (m.device == device).then(|| m.device_bytes())
    }

    /// A slot's figures: actual once its model is loaded (or parked), the admission estimate while it loads.
    pub(super) fn slot_memory(&self, s: SlotName) -> SlotMemory {
        let e = &self.slots[idx(s)];
        let est = e.load.estimate.unwrap_or_default();
        let mut m = SlotMemory {
            slot: s,
            state: e.state.name(),
            device: e.load.device.clone(),
            version: e.load.model.as_ref().map(|(m, _)| m.version.clone()),
            weights_bytes: 0,
            shared_bytes: 0,
            kv_cache_bytes: 0,
            workspace_bytes: 0,
            host_bytes: 0,
            estimate: e.load.estimate,
        };
        if let Some(r) = &e.load.resident {
            m.weights_bytes = r.backend.weight_bytes();
            if let Some(engine) = r.engine() {
                m.shared_bytes = engine.model().llama.holdings().shared_bytes();
                m.kv_cache_bytes = engine.kv_bytes() as u64;
            }
            m.workspace_bytes = est.workspace;
        } else if let Some(p) = &e.load.parked {
            let llama = &p.llama;
            m.host_bytes = llama.weight_bytes();
            if llama.device().is_cpu() && e.load.device == "cpu" {
                // On CPU the parked weights stay where they were: still held on the device.
                (m.weights_bytes, m.shared_bytes) = (m.host_bytes, llama.holdings().shared_bytes());
            }
        } else if e.state.busy() {
            // Loading or waking: what admission reserved.
            let waking = e.state == SlotState::Waking;
            (m.weights_bytes, m.kv_cache_bytes, m.workspace_bytes) =
                (if waking { 0 } else { est.weights }, est.kv, est.workspace);
        }
        m
    }

    /// The slot's memory as GET /admin/slots shows it: actual and estimate side by side.
    pub(super) fn slot_memory_view(&self, s: SlotName) -> Option<SlotMemoryView> {
        let e = &self.slots[idx(s)];
        if e.load.model.is_none() && !e.state.busy() {
            return None;
        }
        let m = self.slot_memory(s);
        Some(SlotMemoryView {
            device_bytes: m.device_bytes(),
            kv_cache_tokens: e.load.resident.as_ref().and_then(|r| r.engine().map(|e| e.kv_capacity())),
            file_bytes: e.load.weights_bytes,
            estimate: m.estimate.map(Into::into),
            device: m.device,
            weights_bytes: m.weights_bytes,
            shared_bytes: m.shared_bytes,
            kv_cache_bytes: m.kv_cache_bytes,
            workspace_bytes: m.workspace_bytes,
            host_bytes: m.host_bytes,
        })
    }

    pub(super) fn memory_report(&self) -> MemoryReport {
        let slots: Vec<SlotMemory> = SlotName::ALL.into_iter().map(|s| self.slot_memory(s)).collect();
        let mut names: Vec<String> =
            self.ctx.defaults.devices.iter().map(|d| crate::device::canonical_name(d)).collect();
        names.extend(slots.iter().map(|s| s.device.clone()).filter(|d| !d.is_empty()));
        names.sort();
        names.dedup();
        let devices = names.into_iter().map(|d| self.device_memory(&d, &slots)).collect();
        MemoryReport { devices, slots, process_resident_bytes: self.ctx.budgets.probe.process_rss() }
    }

    fn device_memory(&self, device: &str, slots: &[SlotMemory]) -> DeviceMemory {
        let (weights, shared, kv, ws) = device_totals(device, slots);
        let held = weights + kv + ws;
        let figures = self.ctx.budgets.device(device);
        let free = figures.map(|(f, budget)| {
            budget::free_within_budget(&budget::DeviceState {
                budget,
                held,
                available: f.available,
                ..Default::default()
            })
        });
        DeviceMemory {
            device: device.to_string(),
            total_bytes: figures.map(|(f, _)| f.total),
            available_bytes: figures.map(|(f, _)| f.available),
            budget_bytes: figures.map(|(_, b)| b),
            held_bytes: held,
            weights_bytes: weights,
            shared_bytes: shared,
            kv_cache_bytes: kv,
            workspace_bytes: ws,
            free_within_budget_bytes: free,
            slots: slots.iter().filter(|s| s.device == device).map(|s| s.slot).collect(),
            nvml: self.ctx.budgets.probe.gpu(device),
        }
    }

    /// Sets the memory gauges from a fresh report, at most once a second.
    pub(super) fn refresh_memory_metrics(&mut self) {
        if self.memory_observed.is_some_and(|t| t.elapsed() < METRICS_EVERY) {
            return;
        }
        self.memory_observed = Some(Instant::now());
        publish(&self.memory_report(), &self.ctx.metrics.memory);
    }
}
