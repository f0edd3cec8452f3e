//! What the rollout API answers, typed once: the server serialises these and `teal admin rollout` reads them.

use super::analysis::{Comparison, Samples};
use super::config::RolloutConfig;
use super::stats::Interval;
use super::teacher::ForcedView;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Moving through the steps, or baking after promotion (`baking`).
    Progressing,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl RolloutState {
    pub fn finished(self) -> bool {
        matches!(self, RolloutState::Promoted | RolloutState::RolledBack | RolloutState::Aborted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Start,
    Advance,
    Hold,
    Promote,
    /// The bake period ended without a breach: the rollout is done.
    Complete,
    Rollback,
    Pause,
    Resume,
    Abort,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Start => "start",
            DecisionKind::Advance => "advance",
            DecisionKind::Hold => "hold",
            DecisionKind::Promote => "promote",
            DecisionKind::Complete => "complete",
            DecisionKind::Rollback => "rollback",
            DecisionKind::Pause => "pause",
            DecisionKind::Resume => "resume",
            DecisionKind::Abort => "abort",
        }
    }
}

/// One decision with the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// RFC 3339, UTC.
    pub time: String,
    /// Seconds since the rollout started.
    pub elapsed_s: f64,
    /// Index into `steps` when the decision was taken.
    pub step: usize,
    pub weight_pct: f64,
    pub decision: DecisionKind,
    pub metric: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub samples: Samples,
    pub ci: Option<Interval>,
    pub reason: String,
}

/// One side of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmInfo {
    pub slot: String,
    pub model: String,
    pub version: String,
    pub digest: String,
}

/// One arm's figures since the rollout started (latencies in milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmSummary {
    pub requests: u64,
    pub failures: u64,
    pub server_errors: u64,
    pub tokens: u64,
    pub requests_per_s: f64,
    pub ttft_ms: Percentiles,
    pub itl_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub mean_output_tokens: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// Shadow traffic: what was mirrored, what was shed, and how the answers compared (generate comparison: same
/// prompt, parameters and seed, exact text match; and teacher-forced: the live answer scored in one prefill).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowView {
    pub rate: f64,
    /// Mirrored requests that finished on the canary / on the live version itself (A/A).
    pub compared: u64,
    pub aa_compared: u64,
    /// Picked but not sent: the live slot had a queue, or the in-flight shadow bound was reached.
    pub shed: u64,
    pub agreement: Option<f64>,
    pub agreement_ci: Option<Interval>,
    pub aa_agreement: Option<f64>,
    /// Mean TTFT and ITL of the mirrored runs (canary minus the live version on the same path), milliseconds.
    pub ttft_delta_ms: Option<f64>,
    pub itl_delta_ms: Option<f64>,
    /// The teacher-forced comparison (top-1 agreement, KL, log-likelihood delta; teacher.rs).
    pub teacher_forced: Option<ForcedView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: String,
    pub state: RolloutState,
    /// After promotion, while the previous version is still watched.
    pub baking: bool,
    pub baseline: ArmInfo,
    pub canary: ArmInfo,
    pub weight_pct: f64,
    pub step: usize,
    pub steps: Vec<f64>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub elapsed_s: f64,
    /// Why it ended (rolled back, aborted, promoted).
    pub reason: Option<String>,
    pub config: RolloutConfig,
    pub arms: Arms,
    pub shadow: ShadowView,
    /// The latest analysis.
    pub comparisons: Vec<Comparison>,
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arms {
    pub baseline: ArmSummary,
    pub canary: ArmSummary,
}
