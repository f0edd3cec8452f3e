//! Which sessions a drain keeps on the old version: the sessions the old version served within the idle time
//! before the flip stay on it while they keep talking (each use restarts their idle time), until they fall
//! idle or the drain's deadline passes. Pure: every method takes `now`, so tests drive the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub(super) struct Pins {
    deadline: Instant,
    idle: Duration,
    /// Pinned sessions with their last use.
    last_use: HashMap<String, Instant>,
}

impl Pins {
    /// Pins each session in `recent` (id -> (last use, load id)) that load `load_id` served within `idle`.
    pub fn new(
        recent: &HashMap<String, (Instant, u64)>,
        load_id: u64,
        idle: Duration,
        timeout: Duration,
        now: Instant,
    ) -> Pins {
        let last_use = recent
            .iter()
            .filter(|(_, (t, load))| *load == load_id && now.saturating_duration_since(*t) < idle)
            .map(|(id, (t, _))| (id.clone(), *t))
            .collect();
        Pins { deadline: now + timeout, idle, last_use }
    }

    /// Whether session `id` stays on the old version for a request now; a use restarts its idle time. A session
    /// that fell idle, or any session after the deadline, is let go for good.
    pub fn keep(&mut self, id: &str, now: Instant) -> bool {
        let active = self.last_use.get(id).is_some_and(|&last| now.saturating_duration_since(last) < self.idle);
        if now < self.deadline && active {
            self.last_use.insert(id.to_string(), now);
            return true;
        }
        self.last_use.remove(id);
        false
    }

    /// Sessions still pinned now; None once the drain is over (deadline passed, or every session let go).
    pub fn remaining(&mut self, now: Instant) -> Option<usize> {
        let idle = self.idle;
        self.last_use.retain(|_, last| now.saturating_duration_since(*last) < idle);
        (now < self.deadline && !self.last_use.is_empty()).then_some(self.last_use.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn recent(t0: Instant) -> HashMap<String, (Instant, u64)> {
        HashMap::from([
            ("active".to_string(), (t0, 7)),
            ("stale".to_string(), (t0 - 20 * S, 7)),
            ("other-version".to_string(), (t0, 8)),
        ])
    }

    #[test]
    fn only_recent_sessions_of_the_old_version_are_pinned() {
        let t0 = Instant::now() + 100 * S;
        let mut p = Pins::new(&recent(t0), 7, 10 * S, 60 * S, t0);
        assert_eq!(p.remaining(t0), Some(1));
        assert!(!p.keep("stale", t0), "idle longer than the idle time before the flip");
        assert!(!p.keep("other-version", t0), "served by another version");
        assert!(!p.keep("new", t0), "started after the flip");
        assert!(p.keep("active", t0 + S));
    }

    #[test]
    fn a_session_stays_while_it_talks_and_leaves_once_idle() {
        let t0 = Instant::now() + 100 * S;
        let mut p = Pins::new(&recent(t0), 7, 10 * S, 60 * S, t0);
        // Each use within 10 s restarts the idle time: 9 s, 18 s, 27 s after the flip it still stays.
        for k in 1..=3 {
            assert!(p.keep("active", t0 + 9 * k * S), "use {k}");
        }
        assert_eq!(p.remaining(t0 + 36 * S), Some(1), "9 s idle: still pinned");
        assert_eq!(p.remaining(t0 + 37 * S), None, "10 s idle: the drain is over");
        assert!(!p.keep("active", t0 + 37 * S), "and it goes to the new version");
    }

    #[test]
    fn the_deadline_ends_the_drain_even_for_a_session_that_keeps_talking() {
        let t0 = Instant::now() + 100 * S;
        let mut p = Pins::new(&recent(t0), 7, 30 * S, 5 * S, t0);
        for ms in [1000, 2000, 3000, 4000, 4999] {
            assert!(p.keep("active", t0 + Duration::from_millis(ms)), "{ms} ms");
        }
        // With a 30 s idle time, "stale" (last used 20 s before the flip) is pinned too.
        assert_eq!(p.remaining(t0 + Duration::from_millis(4999)), Some(2));
        assert!(!p.keep("active", t0 + 5 * S), "at the deadline");
        assert_eq!(p.remaining(t0 + 5 * S), None);
    }
}
