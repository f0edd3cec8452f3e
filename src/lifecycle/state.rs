//! The slot state machine as one pure function, so every rule about what may follow what lives in one place and
//! is tested exhaustively:
//!
//! ```text
//! empty -> loading -> warming -> gating -> ready (standby) -> live -> draining -> ready
//!                                            ^------------- rollback / flip back ---'
//! any -> failed (with reason); ready | failed | draining | parked | empty -> unload -> empty
//! ready -> parking -> parked -> waking -> ready   (a parked standby frees its device memory)
//! ```

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum SlotState {
    #[default]
    Empty,
    Loading,
    Warming,
    Gating,
    /// Resident, warmed and gated (whether the gates passed is in the gate report): a standby.
    Ready,
    Live,
    /// No longer live; requests that started on it are finishing.
    Draining,
    /// A standby releasing its device memory (weights to host, KV pool freed).
    Parking,
    /// A standby whose weights wait in host memory; it must wake before it can go live.
    Parked,
    /// A parked standby going back to its device and re-warming.
    Waking,
    Failed {
        reason: String,
    },
}

impl SlotState {
    pub fn name(&self) -> &'static str {
        match self {
            SlotState::Empty => "empty",
            SlotState::Loading => "loading",
            SlotState::Warming => "warming",
            SlotState::Gating => "gating",
            SlotState::Ready => "ready",
            SlotState::Live => "live",
            SlotState::Draining => "draining",
            SlotState::Parking => "parking",
            SlotState::Parked => "parked",
            SlotState::Waking => "waking",
            SlotState::Failed { .. } => "failed",
        }
    }

    /// An operation is running on the slot (a second one gets 409).
    pub fn busy(&self) -> bool {
        matches!(
            self,
            SlotState::Loading | SlotState::Warming | SlotState::Gating | SlotState::Parking | SlotState::Waking
        )
    }

    /// Holds a model that can serve.
    pub fn servable(&self) -> bool {
        matches!(self, SlotState::Ready | SlotState::Live | SlotState::Draining)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotEvent {
    /// A load starts (replacing what the slot held, unless it is live or busy).
    Load,
    Loaded,
    Warmed,
    Gated,
    /// The live pointer now points here.
    GoLive,
    /// The live pointer moved to the other slot.
    StepDown,
    /// No request holds a lease on it any more.
    Drained,
    Fail(String),
    Unload,
    /// Release the device memory of a ready standby.
    Park,
    Parked,
    /// Bring a parked standby back.
    Wake,
    Woken,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a slot that is {state}")]
pub struct Refused {
    pub state: &'static str,
    pub event: &'static str,
}

fn event_name(e: &SlotEvent) -> &'static str {
    match e {
        SlotEvent::Load => "load into",
        SlotEvent::Loaded => "finish loading",
        SlotEvent::Warmed => "finish warming",
        SlotEvent::Gated => "finish gating",
        SlotEvent::GoLive => "make live",
        SlotEvent::StepDown => "step down",
        SlotEvent::Drained => "finish draining",
        SlotEvent::Fail(_) => "fail",
        SlotEvent::Unload => "unload",
        SlotEvent::Park => "park",
        SlotEvent::Parked => "finish parking",
        SlotEvent::Wake => "wake",
        SlotEvent::Woken => "finish waking",
    }
}

/// The state after `event`, or why the event is not allowed in `state`.
pub fn transition(state: &SlotState, event: &SlotEvent) -> Result<SlotState, Refused> {
    use SlotEvent as E;
    use SlotState as S;
    let next = match (state, event) {
        (S::Empty | S::Failed { .. } | S::Ready | S::Draining | S::Parked, E::Load) => S::Loading,
        (S::Loading, E::Loaded) => S::Warming,
        (S::Warming, E::Warmed) => S::Gating,
        (S::Gating, E::Gated) => S::Ready,
        (S::Ready | S::Draining, E::GoLive) => S::Live,
        (S::Live, E::StepDown) => S::Draining,
        (S::Draining, E::Drained) => S::Ready,
        (S::Empty, E::Fail(_)) => return Err(Refused { state: state.name(), event: event_name(event) }),
        (_, E::Fail(reason)) => S::Failed { reason: reason.clone() },
        (S::Empty | S::Ready | S::Failed { .. } | S::Draining | S::Parked, E::Unload) => S::Empty,
        (S::Ready, E::Park) => S::Parking,
        (S::Parking, E::Parked) => S::Parked,
        (S::Parked, E::Wake) => S::Waking,
        (S::Waking, E::Woken) => S::Ready,
        _ => return Err(Refused { state: state.name(), event: event_name(event) }),
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_states() -> Vec<SlotState> {
        vec![
            SlotState::Empty,
            SlotState::Loading,
            SlotState::Warming,
            SlotState::Gating,
            SlotState::Ready,
            SlotState::Live,
            SlotState::Draining,
            SlotState::Parking,
            SlotState::Parked,
            SlotState::Waking,
            SlotState::Failed { reason: "x".into() },
        ]
    }

    fn all_events() -> Vec<SlotEvent> {
        vec![
            SlotEvent::Load,
            SlotEvent::Loaded,
            SlotEvent::Warmed,
            SlotEvent::Gated,
            SlotEvent::GoLive,
            SlotEvent::StepDown,
            SlotEvent::Drained,
            SlotEvent::Fail("boom".into()),
            SlotEvent::Unload,
            SlotEvent::Park,
            SlotEvent::Parked,
            SlotEvent::Wake,
            SlotEvent::Woken,
        ]
    }

    #[test]
    fn the_happy_path_and_a_round_trip() {
        let mut s = SlotState::Empty;
        for e in [SlotEvent::Load, SlotEvent::Loaded, SlotEvent::Warmed, SlotEvent::Gated, SlotEvent::GoLive] {
            s = transition(&s, &e).unwrap();
        }
        assert_eq!(s, SlotState::Live);
        s = transition(&s, &SlotEvent::StepDown).unwrap();
        assert_eq!(s, SlotState::Draining);
        assert_eq!(transition(&s, &SlotEvent::GoLive).unwrap(), SlotState::Live, "rollback while draining");
        assert_eq!(transition(&s, &SlotEvent::Drained).unwrap(), SlotState::Ready);
    }

    /// Every (state, event) pair, against a table written out by hand.
    #[test]
    fn exhaustive_table() {
        let allowed = |s: &SlotState, e: &SlotEvent| -> Option<&'static str> {
            use SlotEvent as E;
            match (s.name(), e) {
                ("empty" | "failed" | "ready" | "draining" | "parked", E::Load) => Some("loading"),
                ("loading", E::Loaded) => Some("warming"),
                ("warming", E::Warmed) => Some("gating"),
                ("gating", E::Gated) => Some("ready"),
                ("ready" | "draining", E::GoLive) => Some("live"),
                ("live", E::StepDown) => Some("draining"),
                ("draining", E::Drained) => Some("ready"),
                ("empty", E::Fail(_)) => None,
                (_, E::Fail(_)) => Some("failed"),
                ("empty" | "ready" | "failed" | "draining" | "parked", E::Unload) => Some("empty"),
                ("ready", E::Park) => Some("parking"),
                ("parking", E::Parked) => Some("parked"),
                ("parked", E::Wake) => Some("waking"),
                ("waking", E::Woken) => Some("ready"),
                _ => None,
            }
        };
        let mut checked = 0;
        for s in all_states() {
            for e in all_events() {
                let got = transition(&s, &e).map(|n| n.name()).ok();
                assert_eq!(got, allowed(&s, &e), "{s:?} + {e:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 11 * 13);
    }

    #[test]
    fn live_and_busy_slots_refuse_loads_and_unloads() {
        for s in [SlotState::Live, SlotState::Loading, SlotState::Warming, SlotState::Gating, SlotState::Waking] {
            assert!(transition(&s, &SlotEvent::Load).is_err());
            assert!(transition(&s, &SlotEvent::Unload).is_err());
        }
        let e = transition(&SlotState::Live, &SlotEvent::Unload).unwrap_err();
        assert_eq!(e.to_string(), "cannot unload a slot that is live");
    }

    #[test]
    fn failure_keeps_its_reason() {
        let s = transition(&SlotState::Warming, &SlotEvent::Fail("out of memory".into())).unwrap();
        assert_eq!(s, SlotState::Failed { reason: "out of memory".into() });
        assert!(!s.busy() && !s.servable());
    }

    #[test]
    fn a_parked_standby_cannot_go_live_before_it_wakes() {
        let parked = transition(&transition(&SlotState::Ready, &SlotEvent::Park).unwrap(), &SlotEvent::Parked).unwrap();
        assert_eq!(parked, SlotState::Parked);
        assert!(!parked.servable() && !parked.busy());
        assert_eq!(
            transition(&parked, &SlotEvent::GoLive).unwrap_err().to_string(),
            "cannot make live a slot that is parked"
        );
        let woken = transition(&transition(&parked, &SlotEvent::Wake).unwrap(), &SlotEvent::Woken).unwrap();
        assert_eq!(woken, SlotState::Ready);
        assert!(transition(&SlotState::Live, &SlotEvent::Park).is_err(), "the live slot is never parked");
    }
}
