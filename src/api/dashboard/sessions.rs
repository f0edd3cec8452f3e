//! The dashboard's sign-in sessions, kept in this process's memory (a restart signs everyone out): a random
//! 256-bit id (the cookie's value) maps to the role the token granted and a CSRF token of its own. Sessions end
//! after SESSION_TTL or on sign-out; at most MAX_SESSIONS live at once (the oldest go first). Failed sign-ins
//! are limited so a token cannot be guessed at network speed.

use rand::RngCore;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie's name.
pub const SESSION_COOKIE: &str = "teal_session";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most live sessions.
const MAX_SESSIONS: usize = 1024;
/// Failed sign-ins allowed per FAILURE_WINDOW, for the whole process.
const MAX_FAILURES: usize = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// May act: load, flip, roll back, drive rollouts.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    pub csrf: String,
    pub expires: Instant,
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Session>,
    failures: VecDeque<Instant>,
}

#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

/// 32 random bytes as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `role`; returns its id (the cookie's value).
    pub fn create(&self, role: Role) -> String {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.live.retain(|_, s| s.expires > now);
        while inner.live.len() >= MAX_SESSIONS {
            let oldest = inner.live.iter().min_by_key(|(_, s)| s.expires).map(|(id, _)| id.clone());
            match oldest {
                Some(id) => inner.live.remove(&id),
                None => break,
            };
        }
        let id = random_token();
        inner.live.insert(id.clone(), Session { role, csrf: random_token(), expires: now + SESSION_TTL });
        id
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.live.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                inner.live.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().live.remove(id);
    }

    /// Whether another sign-in may be tried now (false: too many failures in the last minute).
    pub fn may_try(&self) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        while inner.failures.front().is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW) {
            inner.failures.pop_front();
        }
        inner.failures.len() < MAX_FAILURES
    }

    pub fn note_failure(&self) {
        let mut inner = self.lock();
        inner.failures.push_back(Instant::now());
        while inner.failures.len() > MAX_FAILURES {
            inner.failures.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_have_their_own_ids_and_csrf_tokens() {
        let s = Sessions::default();
        let a = s.create(Role::Operator);
        let b = s.create(Role::Viewer);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let (sa, sb) = (s.get(&a).unwrap(), s.get(&b).unwrap());
        assert_eq!((sa.role, sb.role), (Role::Operator, Role::Viewer));
        assert_ne!(sa.csrf, sb.csrf);
        assert!(s.get("nope").is_none());
        s.remove(&a);
        assert!(s.get(&a).is_none(), "signed out");
        assert!(s.get(&b).is_some());
    }

    #[test]
    fn live_sessions_are_bounded() {
        let s = Sessions::default();
        let first = s.create(Role::Viewer);
        for _ in 0..MAX_SESSIONS {
            s.create(Role::Viewer);
        }
        assert_eq!(s.lock().live.len(), MAX_SESSIONS);
        assert!(s.get(&first).is_none(), "the oldest went first");
    }

    #[test]
    fn failed_sign_ins_are_limited() {
        let s = Sessions::default();
        for _ in 0..MAX_FAILURES {
            assert!(s.may_try());
            s.note_failure();
        }
        assert!(!s.may_try());
    }
}
