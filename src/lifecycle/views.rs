//! What the admin API answers about the lifecycle, as types: an operation with its status and phase, the status
//! of both slots, an unload. The controller builds them, the server serialises them, and the CLI, the bench and
//! the tests read them back with the same types, so a renamed field breaks the build, not a dashboard.

use super::checks::report::{GateReport, WarmupReport};
use super::spec::Timeouts;
use crate::memory::budget::Need;
use crate::slot::{ModelIdentity, SlotName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether an operation still runs, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpStatus {
    Running,
    Succeeded,
    Failed,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Load,
    Park,
    Wake,
}

/// The stage an operation is in; `Done` once it has finished, whatever the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Loading,
    Warming,
    Gating,
    Parking,
    Waking,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Warming => "warming",
            Phase::Gating => "gating",
            Phase::Parking => "parking",
            Phase::Waking => "waking",
            Phase::Done => "done",
        }
    }
}

impl Phase {
    /// The limit of the phase under `t`, and its setting's name; None for `Done`.
    pub fn limit(self, t: &Timeouts) -> Option<(f64, &'static str)> {
        match self {
            Phase::Loading | Phase::Parking => Some((t.load_s, "load_s")),
            Phase::Waking => Some((t.load_s + t.warmup_s, "load_s + warmup_s")),
            Phase::Warming => Some((t.warmup_s, "warmup_s")),
            Phase::Gating => Some((t.gates_s, "gates_s")),
            Phase::Done => None,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for OpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpStatus::Running => "running",
            OpStatus::Succeeded => "succeeded",
            OpStatus::Failed => "failed",
        })
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpKind::Load => "load",
            OpKind::Park => "park",
            OpKind::Wake => "wake",
        })
    }
}

/// A long-running admin operation (a load, park or wake) as GET /admin/operations/{id} shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub kind: OpKind,
    pub slot: SlotName,
    pub model: String,
    pub status: OpStatus,
    pub phase: Phase,
    /// Share of the current phase done (0..=1).
    pub progress: f64,
    pub started_at: String,
    pub elapsed_s: f64,
    /// Seconds each finished phase took, and `total` once the operation has finished.
    pub timings: BTreeMap<String, f64>,
    pub error: Option<String>,
    pub gates_passed: Option<bool>,
    /// Whether the load asked the slot to go live when its gates pass (startup loads).
    pub go_live: bool,
    /// The stage limits in force (from the model's teal.toml and the request).
    pub timeouts: Option<Timeouts>,
}

impl Operation {
    pub fn finished(&self) -> bool {
        self.status != OpStatus::Running
    }

    /// Seconds the phase took, once it has finished.
    pub fn timing(&self, phase: Phase) -> Option<f64> {
        self.timings.get(phase.as_str()).copied()
    }
}

/// Where a wake's time went: copying weights back to the device, allocating the KV pool (and starting the
/// engine), and the warm-up.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct WakeTimings {
    pub move_s: f64,
    pub allocate_s: f64,
    pub warm_s: f64,
    pub moved_bytes: u64,
}

/// When a slot was parked and how long parking and waking took.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ParkTimes {
    pub parked_at: Option<String>,
    pub park_seconds: Option<f64>,
    pub woken_at: Option<String>,
    pub wake_seconds: Option<f64>,
    /// The last wake's phases.
    pub wake: Option<WakeTimings>,
    /// Weight bytes the last park or wake copied between the device and host memory (0 on CPU).
    pub moved_bytes: u64,
}

/// A slot's memory as GET /admin/slots shows it: actual figures beside the admission estimate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotMemoryView {
    pub device: String,
    pub weights_bytes: u64,
    pub shared_bytes: u64,
    pub kv_cache_bytes: u64,
    pub kv_cache_tokens: Option<usize>,
    pub workspace_bytes: u64,
    pub host_bytes: u64,
    pub device_bytes: u64,
    /// Bytes of the weight files on disk.
    pub file_bytes: u64,
    pub estimate: Option<EstimateView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EstimateView {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub workspace_bytes: u64,
    pub total_bytes: u64,
}

impl From<Need> for EstimateView {
    fn from(n: Need) -> Self {
        EstimateView {
            weights_bytes: n.weights,
            kv_cache_bytes: n.kv,
            workspace_bytes: n.workspace,
            total_bytes: n.total(),
        }
    }
}

/// One slot in GET /admin/slots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotView {
    pub slot: SlotName,
    /// empty, loading, warming, gating, ready, live, draining, parking, parked, waking or failed.
    pub state: String,
    /// Why a failed slot failed.
    pub reason: Option<String>,
    pub live: bool,
    /// The running operation, or the last one.
    pub operation: Option<String>,
    pub model: Option<ModelIdentity>,
    pub loaded_at: Option<String>,
    pub load_seconds: Option<f64>,
    pub memory: Option<SlotMemoryView>,
    pub in_flight: usize,
    pub pinned_sessions: usize,
    pub warmup: Option<WarmupReport>,
    pub gates: Option<GateReport>,
    pub park: ParkTimes,
    /// Seconds until a rollback to this slot could serve; None when it cannot be rolled back to.
    pub rollback_eta_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slots {
    pub blue: SlotView,
    pub green: SlotView,
}

impl Slots {
    pub fn get(&self, s: SlotName) -> &SlotView {
        match s {
            SlotName::Blue => &self.blue,
            SlotName::Green => &self.green,
        }
    }
}

/// GET /admin/slots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub live: Option<SlotName>,
    pub previous_live: Option<SlotName>,
    pub served_model_name: Option<String>,
    pub flips: u64,
    pub rollbacks: u64,
    pub last_flip_at: Option<String>,
    pub seconds_since_last_flip: Option<f64>,
    pub slots: Slots,
}

/// DELETE /admin/slots/{slot}.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unloaded {
    pub slot: SlotName,
    /// Always "empty".
    pub state: String,
    pub unloaded_version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_the_wire_are_lowercase() {
        assert_eq!(serde_json::to_value(OpStatus::Succeeded).unwrap(), "succeeded");
        assert_eq!(serde_json::to_value(Phase::Gating).unwrap(), "gating");
        assert_eq!(serde_json::to_value(OpKind::Wake).unwrap(), "wake");
        for p in [Phase::Loading, Phase::Warming, Phase::Gating, Phase::Parking, Phase::Waking, Phase::Done] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }
}
