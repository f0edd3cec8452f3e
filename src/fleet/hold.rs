//! Whether this replica can serve a version: one of its slots holds it (same digest and version) live, or ready
//! with passed gates; if none does, it is loaded into the standby (warm-up and gates as for any load). Used by a
//! prepare's answer, by applying a committed target and by following a fleet-wide split.

use super::views::TargetVersion;
use super::Shared;
use crate::lifecycle::LoadRequest;
use crate::slot::SlotName;

/// The slot that can serve `t` here: live already, or a standby ready with passed gates. Without one, loads `t`
/// into the standby (warm-up and gates as for any load) and checks again.
pub(super) async fn ensure(s: &Shared, t: &TargetVersion) -> Result<SlotName, String> {
    if let Some(slot) = holding(s, t).await? {
        return Ok(slot);
    }
    let status = s.lifecycle.status().await.map_err(|e| e.to_string())?;
    let standby = status.live.map(SlotName::other).unwrap_or(SlotName::Green);
    let req = LoadRequest { model: t.model.clone(), version: Some(t.version.clone()), ..Default::default() };
    let op = s.lifecycle.load(standby, req, false, false).await.map_err(|e| format!("loading {}: {e}", t.model))?;
    s.lifecycle.wait(&op.id).await.map_err(|e| e.to_string())?;
    if let Some(slot) = holding(s, t).await? {
        return Ok(slot);
    }
    let status = s.lifecycle.status().await.map_err(|e| e.to_string())?;
    Err(match &status.slots.get(standby).reason {
        Some(r) => format!("loading {} into {standby} failed: {r}", t.model),
        None => format!("{standby} loaded {} but not the digest {}", t.model, t.digest),
    })
}

/// The slot holding `t`, if it may serve it; an error when it holds it but must not (gates failed).
async fn holding(s: &Shared, t: &TargetVersion) -> Result<Option<SlotName>, String> {
    let status = s.lifecycle.status().await.map_err(|e| e.to_string())?;
    for n in SlotName::ALL {
        let v = status.slots.get(n);
        if v.model.as_ref().is_none_or(|m| m.digest != t.digest || m.version != t.version) {
            continue;
        }
        if v.live {
            return Ok(Some(n));
        }
        let gates = v.gates.as_ref().is_some_and(|g| g.passed && !g.forced);
        return match (v.state.as_str(), gates) {
            ("ready" | "draining", true) => Ok(Some(n)),
            ("ready" | "draining", false) => Err(format!("{n} holds {} but its gates did not pass", t.version)),
            (state, _) => Err(format!("{n} holds {} but is {state}", t.version)),
        };
    }
    Ok(None)
}
