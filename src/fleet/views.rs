//! What the fleet keeps in Redis and shows on `GET /admin/fleet`, typed once: the server writes these as JSON and
//! `teal admin fleet` reads them.

use serde::{Deserialize, Serialize};

/// The version a fleet operation makes live: every replica flips to its slot holding this digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetVersion {
    /// The model's name in the model repository (what a replica loads when its standby lacks the version).
    pub model: String,
    pub version: String,
    pub digest: String,
}

/// The fleet's committed state: one per epoch, written only together with its epoch (fenced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub epoch: u64,
    pub live: TargetVersion,
    /// When every replica flips (Unix milliseconds): a little after the commit, so they flip together.
    pub activate_at_ms: u64,
    /// The operation that committed it and the replica that coordinated it.
    pub op: String,
    pub by: String,
    /// A fleet-wide rollout's split: every replica sends this share of requests to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<FleetSplit>,
}

/// A rollout's split as every replica applies it: the same rollout id (so a key's bucket, and a session's arm,
/// are the same on every replica), canary and weight; the replica that started the rollout drives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSplit {
    pub rollout_id: String,
    pub canary: TargetVersion,
    /// The canary's share in basis points (10000 is all traffic).
    pub weight_bp: u32,
    /// The replica whose rollout drives the split.
    pub driver: String,
}

/// A prepare request: every member makes sure it can serve `target` and acknowledges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepare {
    pub op: String,
    pub target: TargetVersion,
    /// Unix milliseconds after which the request is void.
    pub deadline_ms: u64,
    pub by: String,
}

/// A member's answer to a prepare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
    /// The slot holding the target (ready with passed gates, or live already).
    pub slot: Option<String>,
    pub digest: Option<String>,
    pub reason: Option<String>,
}

/// One slot as a member reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSlot {
    pub slot: String,
    pub state: String,
    pub version: Option<String>,
    pub digest: Option<String>,
    pub gates_passed: Option<bool>,
}

/// A replica's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub live_slot: Option<String>,
    pub live_version: Option<String>,
    pub live_digest: Option<String>,
    pub slots: Vec<MemberSlot>,
    /// The last epoch this replica applied.
    pub epoch: u64,
    /// in_sync, diverged (with why) or frozen (the epoch went backwards).
    pub state: String,
    pub reason: Option<String>,
    /// Unix milliseconds of the heartbeat.
    pub heartbeat_ms: u64,
    /// Filled in by the reader: seconds since the heartbeat.
    #[serde(default)]
    pub staleness_s: f64,
}

/// GET /admin/fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    pub name: String,
    /// The replica answering.
    pub replica_id: String,
    pub target: Option<Target>,
    pub members: Vec<Member>,
    /// Seconds since this replica last reached Redis.
    pub staleness_s: f64,
}

/// What a fleet flip answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetFlipOutcome {
    pub op: String,
    pub epoch: u64,
    pub target: TargetVersion,
    pub activate_at_ms: u64,
    /// Each member's acknowledgement.
    pub acks: Vec<(String, Ack)>,
    /// Whether every member reported the new epoch applied within the wait.
    pub converged: bool,
}
