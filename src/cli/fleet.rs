//! `teal admin fleet` and the fleet form of `teal admin flip|rollback`: what they print.

use crate::fleet::views::FleetView;
use serde_json::Value;

/// A flip or rollback answer: a local flip, or a fleet flip's epoch and members.
pub(crate) fn flip_line(v: &Value) {
    let Some(f) = v.get("fleet_flip") else { return super::admin::flip_line(v) };
    let acks = f["acks"].as_array().map(|a| a.len()).unwrap_or(0);
    println!(
        "fleet epoch {}: {} ({}) live on {} replicas{}",
        f["epoch"],
        f["target"]["version"].as_str().unwrap_or("-"),
        f["target"]["digest"].as_str().map(|d| d.get(..19).unwrap_or(d)).unwrap_or("-"),
        acks,
        if f["converged"] == true { "" } else { " (not every replica reported it yet)" }
    );
}

pub(crate) fn table(v: &FleetView) {
    let target = v.target.as_ref().map(|t| format!("epoch {} -> {}", t.epoch, t.live.version));
    println!("fleet {} (this replica: {}; target {})", v.name, v.replica_id, target.as_deref().unwrap_or("none"));
    println!("{:<24} {:<6} {:<16} {:>6} {:<9} {:>9}", "REPLICA", "LIVE", "VERSION", "EPOCH", "STATE", "STALE_S");
    for m in &v.members {
        println!(
            "{:<24} {:<6} {:<16} {:>6} {:<9} {:>9.1}{}",
            m.id,
            m.live_slot.as_deref().unwrap_or("-"),
            m.live_version.as_deref().unwrap_or("-"),
            m.epoch,
            m.state,
            m.staleness_s,
            m.reason.as_deref().map(|r| format!("  {r}")).unwrap_or_default()
        );
    }
}
