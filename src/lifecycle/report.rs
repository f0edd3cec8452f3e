//! What the blocking jobs (pipeline.rs: loads; park.rs: park and wake) tell the controller, one message per stage.
//! The jobs write no slot state; the controller applies each report through `state::transition`.

use super::checks::config::WarmupConfig;
use super::checks::report::GateReport;
use super::checks::report::WarmupReport;
use crate::router::Resident;
use std::sync::Arc;

/// Where a wake's time went: copying weights back to the device, allocating the KV pool (and starting the
/// engine), and the warm-up.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct WakeTimings {
    pub move_s: f64,
    pub allocate_s: f64,
    pub warm_s: f64,
    pub moved_bytes: u64,
}

pub(crate) enum Report {
    Progress {
        op: String,
        progress: f64,
    },
    Loaded {
        op: String,
        resident: Arc<Resident>,
        seconds: f64,
        weights_bytes: u64,
        warm: WarmupConfig,
    },
    Warmed {
        op: String,
        report: WarmupReport,
    },
    Gated {
        op: String,
        report: GateReport,
    },
    Failed {
        op: String,
        reason: String,
    },
    /// A standby's engine stopped and its weights are in host memory.
    Parked {
        op: String,
        model: Arc<crate::models::LanguageModel>,
        seconds: f64,
        moved_bytes: u64,
    },
    /// A parked standby is back on its device, warmed.
    Woken {
        op: String,
        resident: Arc<Resident>,
        warmup: WarmupReport,
        timings: WakeTimings,
    },
}
