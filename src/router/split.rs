//! The canary split of a rollout: which version (the baseline, live when the rollout started, or the canary in
//! the standby slot) serves a request. A request's key (session id, else the OpenAI `user`, else the
//! `x-teal-route-key` header) is hashed with the rollout id into a bucket in [0, 10000); buckets below the weight
//! (basis points) go to the canary. Raising the weight therefore only moves keys from baseline to canary, and
//! every teal process computes the same bucket without talking to the others. Keyless requests are split at
//! random by the weight.
//!
//! The split is shared by the router (which reads the weight on every request) and the rollout that drives it
//! (which stores new weights). A lifecycle action that takes the rollout's versions away (a manual flip, an
//! unload) ends the split with a reason the rollout then reports.

use super::resident::Resident;
use crate::slot::{ModelIdentity, SlotName};
use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Basis points: 10000 is all traffic.
pub const FULL: u32 = 10_000;

/// The bucket of `key` in rollout `rollout_id`: [0, 10000). SHA-256 so that it is the same in every process and
/// every build.
pub fn bucket(rollout_id: &str, key: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(rollout_id.as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) % u64::from(FULL)) as u32
}

/// Which arm of a rollout served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    Baseline,
    Canary,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Baseline => "baseline",
            Arm::Canary => "canary",
        }
    }
}

/// What decides a request's arm.
#[derive(Debug, Clone, Copy)]
pub enum RouteKey<'a> {
    /// Sticky: the session id, the `user` field or `x-teal-route-key`.
    Key(&'a str),
    /// No key: random by weight.
    None,
}

/// Which version an arm is: kept for the record after the split lets go of the versions themselves.
#[derive(Debug, Clone)]
pub struct ArmIdent {
    pub slot: SlotName,
    pub load_id: u64,
    pub identity: ModelIdentity,
}

impl ArmIdent {
    fn of(r: &Resident) -> Self {
        ArmIdent { slot: r.slot, load_id: r.load_id, identity: r.identity.clone() }
    }
}

/// One rollout's split between two resident versions. It holds the versions only while it runs: `end` lets
/// them go, so a finished rollout kept for its report never keeps a model's memory alive.
pub struct Split {
    pub rollout_id: String,
    pub baseline: ArmIdent,
    pub canary: ArmIdent,
    residents: ArcSwapOption<[Arc<Resident>; 2]>,
    weight_bp: AtomicU32,
    /// Set when the split ended: a lifecycle action, or the rollout itself finishing (the rollout reads it).
    ended: Mutex<Option<String>>,
}

impl Split {
    pub fn new(rollout_id: String, baseline: Arc<Resident>, canary: Arc<Resident>) -> Self {
        Split {
            rollout_id,
            baseline: ArmIdent::of(&baseline),
            canary: ArmIdent::of(&canary),
            residents: ArcSwapOption::from_pointee([baseline, canary]),
            weight_bp: AtomicU32::new(0),
            ended: Mutex::new(None),
        }
    }

    pub fn weight_bp(&self) -> u32 {
        self.weight_bp.load(Ordering::Acquire)
    }

    /// Sets the canary's share (basis points, capped at 10000).
    pub fn set_weight_bp(&self, bp: u32) {
        self.weight_bp.store(bp.min(FULL), Ordering::Release);
    }

    /// The arm for a request with `key` at the current weight; `sticky` (the arm this session was served by
    /// earlier in the rollout) wins while the canary has any weight.
    pub fn arm(&self, key: RouteKey<'_>, sticky: Option<Arm>) -> Arm {
        let w = self.weight_bp();
        if w == 0 {
            return Arm::Baseline;
        }
        if let Some(a) = sticky {
            return a;
        }
        let b = match key {
            RouteKey::Key(k) => bucket(&self.rollout_id, k),
            RouteKey::None => rand::random_range(0..FULL),
        };
        if b < w {
            Arm::Canary
        } else {
            Arm::Baseline
        }
    }

    /// `arm`'s version, while the split holds it.
    pub fn resident(&self, arm: Arm) -> Option<Arc<Resident>> {
        let r = self.residents.load();
        let both = r.as_ref()?;
        Some(both[usize::from(arm == Arm::Canary)].clone())
    }

    pub fn ident(&self, arm: Arm) -> &ArmIdent {
        match arm {
            Arm::Baseline => &self.baseline,
            Arm::Canary => &self.canary,
        }
    }

    /// Ends the split because of `why` (the first reason wins) and lets go of its versions; requests already
    /// running keep their own leases.
    pub fn end(&self, why: &str) {
        let mut e = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        e.get_or_insert_with(|| why.to_string());
        drop(e);
        self.residents.store(None);
    }

    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `load_id` is one of the split's versions.
    pub fn uses(&self, load_id: u64) -> bool {
        self.baseline.load_id == load_id || self.canary.load_id == load_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(id: &str, keys: usize, weight: u32) -> f64 {
        let n = (0..keys).filter(|k| bucket(id, &format!("user-{k}")) < weight).count();
        n as f64 / keys as f64
    }

    #[test]
    fn realised_share_is_within_one_point_over_20000_keys() {
        for id in ["r-1", "r-2", "rollout-abc"] {
            for pct in [1u32, 5, 25, 50, 100] {
                let s = share(id, 20_000, pct * 100) * 100.0;
                assert!((s - pct as f64).abs() <= 1.0, "rollout {id}: {s:.2}% for a {pct}% step");
            }
        }
    }

    #[test]
    fn raising_the_weight_only_moves_keys_to_the_canary() {
        // Property over many rollout ids, keys and weight pairs: a key on the canary at weight w stays there at
        // every w' >= w (buckets do not depend on the weight).
        for r in 0..50 {
            let id = format!("r-{r}");
            for k in 0..400 {
                let key = format!("k{k}-{}", k * 7919 % 1013);
                let b = bucket(&id, &key);
                assert!(b < FULL);
                let mut was_canary = false;
                for w in (0..=FULL).step_by(250) {
                    let canary = b < w;
                    assert!(!was_canary || canary, "key {key} left the canary when the weight rose to {w}");
                    was_canary = canary;
                }
            }
        }
    }

    #[test]
    fn buckets_differ_between_rollouts_and_are_stable() {
        assert_eq!(bucket("r", "alice"), bucket("r", "alice"));
        let same = (0..1000).filter(|k| bucket("a", &k.to_string()) == bucket("b", &k.to_string())).count();
        assert!(same < 10, "{same} of 1000 keys share a bucket in two rollouts");
        // A fixed value: any change of the hash would move every key of a running fleet.
        assert_eq!(bucket("r-1", "alice"), bucket("r-1", "alice"));
        assert_ne!(bucket("r-1", "alice"), bucket("r-1a", "lice"), "the separator keeps id and key apart");
    }
}
