//! What the blocking jobs (pipeline.rs: loads; park.rs: park and wake) tell the controller, one message per stage.
//! The jobs write no slot state; the controller applies each report through `state::transition`.

use super::checks::config::WarmupConfig;
use super::checks::report::GateReport;
use super::checks::report::WarmupReport;
use super::views::Phase;
pub use super::views::WakeTimings;
use crate::router::Resident;
use std::sync::Arc;

/// Why a job stopped short. Its text is what the slot's `reason` and the audit log show.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// The operation was cancelled or timed out: the controller failed the slot already.
    #[error("cancelled")]
    Cancelled,
    /// A stage failed, for this reason.
    #[error("{reason}")]
    Stage { phase: Phase, reason: String },
    /// A bug: teal's code panicked while the stage ran.
    #[error("{0}")]
    Internal(String),
}

impl JobError {
    /// Maps an error of `phase` into a `Stage` error with the error's own text.
    pub fn at<E: std::fmt::Display>(phase: Phase) -> impl Fn(E) -> JobError {
        move |e| JobError::Stage { phase, reason: e.to_string() }
    }

    /// The phase that failed, when one did.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            JobError::Stage { phase, .. } => Some(*phase),
            _ => None,
        }
    }
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
        error: JobError,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_error_reads_as_its_reason_and_keeps_its_phase() {
        let e = JobError::at(Phase::Loading)("model files are invalid: truncated");
        assert_eq!(e.to_string(), "model files are invalid: truncated");
        assert_eq!(e.phase(), Some(Phase::Loading));
        assert_eq!(JobError::Cancelled.to_string(), "cancelled");
        assert_eq!(JobError::Internal("internal error while loading (panic: x)".into()).phase(), None);
    }
}
