//! The dashboard's sign-in sessions, kept in this process's memory (a restart signs everyone out): a random
//! 256-bit id (the cookie's value) maps to the role the token granted and a CSRF token of its own. Sessions end
//! after SESSION_TTL or on sign-out; each role keeps at most MAX_PER_ROLE live at once (the role's oldest go
//! first, so viewers signing in again and again can never push an operator out). Failed attempts (a wrong
//! token at sign-in or as a bearer token) are limited per client address, so a token cannot be guessed at
//! network speed and one address's guessing does not lock out the others.

use rand::RngCore;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie's name.
pub const SESSION_COOKIE: &str = "teal_session";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most live sessions of one role.
const MAX_PER_ROLE: usize = 512;
/// Failed attempts allowed per client address per FAILURE_WINDOW.
pub const MAX_FAILURES: usize = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses whose failures are remembered; past it, the oldest record goes.
const MAX_ADDRESSES: usize = 4096;

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
    /// Recent failures per client address (None: the address is unknown).
    failures: HashMap<Option<IpAddr>, VecDeque<Instant>>,
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
        while inner.live.values().filter(|s| s.role == role).count() >= MAX_PER_ROLE {
            let oldest = inner
                .live
                .iter()
                .filter(|(_, s)| s.role == role)
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone());
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

    /// Whether `addr` may try a token now (false: MAX_FAILURES wrong ones in the last minute).
    pub fn may_try(&self, addr: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(recent) = inner.failures.get_mut(&addr) else { return true };
        while recent.front().is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW) {
            recent.pop_front();
        }
        recent.len() < MAX_FAILURES
    }

    /// Counts a wrong token from `addr`.
    pub fn note_failure(&self, addr: Option<IpAddr>) {
        let now = Instant::now();
        let mut inner = self.lock();
        if !inner.failures.contains_key(&addr) && inner.failures.len() >= MAX_ADDRESSES {
            inner.failures.retain(|_, r| r.back().is_some_and(|t| now.duration_since(*t) <= FAILURE_WINDOW));
            if inner.failures.len() >= MAX_ADDRESSES {
                let oldest = inner.failures.iter().min_by_key(|(_, r)| r.back().copied()).map(|(a, _)| *a);
                if let Some(a) = oldest {
                    inner.failures.remove(&a);
                }
            }
        }
        let recent = inner.failures.entry(addr).or_default();
        recent.push_back(now);
        while recent.len() > MAX_FAILURES {
            recent.pop_front();
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
    fn live_sessions_are_bounded_per_role() {
        let s = Sessions::default();
        let operator = s.create(Role::Operator);
        let first_viewer = s.create(Role::Viewer);
        for _ in 0..MAX_PER_ROLE {
            s.create(Role::Viewer);
        }
        assert_eq!(s.lock().live.len(), MAX_PER_ROLE + 1);
        assert!(s.get(&first_viewer).is_none(), "the oldest viewer went first");
        assert!(s.get(&operator).is_some(), "viewers never push an operator out");
    }

    #[test]
    fn failed_attempts_are_limited_per_address() {
        let s = Sessions::default();
        let (a, b): (Option<IpAddr>, Option<IpAddr>) = (Some([10, 0, 0, 1].into()), Some([10, 0, 0, 2].into()));
        for _ in 0..MAX_FAILURES {
            assert!(s.may_try(a));
            s.note_failure(a);
        }
        assert!(!s.may_try(a));
        assert!(s.may_try(b), "another address may still try");
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            s.note_failure(Some(IpAddr::from(i.to_be_bytes())));
        }
        assert!(s.lock().failures.len() <= MAX_ADDRESSES, "the remembered addresses are bounded");
    }
}
