//! The in-memory session store (the default): bounded in count, each session expiring after its TTL without
//! use. When full, a new session may replace the least recently used one only if that one has been idle for a
//! minute; otherwise the new session is refused (429) rather than silently ending a conversation in use. Lives
//! and dies with the process; use Redis to share sessions between processes or keep them across restarts.

#![deny(clippy::indexing_slicing)]

use super::{bytes_of, now_ms, Appended, Session, SessionStore, StoreError, Turn};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// A full store may evict a session only if it has been idle this long.
const EVICTABLE_IDLE_MS: u64 = 60_000;
/// Request ids remembered per session (for retries); the oldest are forgotten first.
const MAX_REQUEST_IDS: usize = 1024;

pub struct MemoryStore {
    sessions: Mutex<Inner>,
    ttl: Duration,
    max_sessions: usize,
}

/// One session, the tick of its last use and the request ids of its stored turns.
struct Entry {
    session: Session,
    used: u64,
    requests: HashSet<String>,
    order: std::collections::VecDeque<String>,
}

/// Sessions with the tick of their last use (a counter, so the least recently used is exact even within a
/// millisecond).
#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    tick: u64,
}

impl Inner {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

impl MemoryStore {
    pub fn new(ttl: Duration, max_sessions: usize) -> Self {
        MemoryStore { sessions: Mutex::new(Inner::default()), ttl, max_sessions: max_sessions.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, s: &Session, now: u64) -> bool {
        now.saturating_sub(s.updated_at) > self.ttl.as_millis() as u64
    }

    /// Removes `id` if it expired; true if it is (still) there.
    fn live(&self, inner: &mut Inner, id: &str, now: u64) -> bool {
        if inner.map.get(id).is_some_and(|e| self.expired(&e.session, now)) {
            inner.map.remove(id);
        }
        inner.map.contains_key(id)
    }

    /// Makes room for one more session: expired ones go, then the least recently used if it is idle enough.
    fn make_room(&self, inner: &mut Inner, now: u64) -> Result<(), StoreError> {
        if inner.map.len() < self.max_sessions {
            return Ok(());
        }
        inner.map.retain(|_, e| !self.expired(&e.session, now));
        if inner.map.len() < self.max_sessions {
            return Ok(());
        }
        let oldest = inner.map.iter().min_by_key(|(_, e)| e.used).map(|(k, e)| (k.clone(), e.session.updated_at));
        match oldest {
            Some((k, updated)) if now.saturating_sub(updated) >= EVICTABLE_IDLE_MS => {
                inner.map.remove(&k);
                Ok(())
            }
            _ => Err(StoreError::Full(inner.map.len())),
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        if self.live(&mut inner, id, now) {
            return Ok(false);
        }
        self.make_room(&mut inner, now)?;
        let used = inner.next_tick();
        let session = Session { id: id.to_string(), created_at: now, updated_at: now, messages: vec![] };
        inner.map.insert(id.to_string(), Entry { session, used, requests: HashSet::new(), order: Default::default() });
        Ok(true)
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        if !self.live(&mut inner, id, now) {
            return Ok(None);
        }
        let tick = inner.next_tick();
        Ok(inner.map.get_mut(id).map(|e| {
            e.session.updated_at = now;
            e.used = tick;
            e.session.clone()
        }))
    }

    async fn append(&self, id: &str, turn: Turn<'_>) -> Result<Appended, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        if !self.live(&mut inner, id, now) {
            return Ok(Appended::Missing);
        }
        let tick = inner.next_tick();
        let Some(e) = inner.map.get_mut(id) else { return Ok(Appended::Missing) };
        if turn.request_id.is_some_and(|r| e.requests.contains(r)) {
            return Ok(Appended::Duplicate);
        }
        if bytes_of(&e.session.messages) + bytes_of(&turn.messages) > turn.max_bytes {
            return Ok(Appended::TooLarge);
        }
        if let Some(r) = turn.request_id {
            e.requests.insert(r.to_string());
            e.order.push_back(r.to_string());
            if e.order.len() > MAX_REQUEST_IDS {
                if let Some(old) = e.order.pop_front() {
                    e.requests.remove(&old);
                }
            }
        }
        e.session.messages.extend(turn.messages);
        e.session.updated_at = now;
        e.used = tick;
        Ok(Appended::Stored)
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().map.remove(id).is_some())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::StoredMessage;

    fn msg(c: &str) -> StoredMessage {
        StoredMessage {
            rollout: None,
            role: "user".into(),
            content: c.into(),
            model: None,
            version: None,
            slot: None,
            at: 0,
            request_id: None,
        }
    }

    fn turn<'a>(m: Vec<StoredMessage>, rid: Option<&'a str>) -> Turn<'a> {
        Turn { messages: m, request_id: rid, max_bytes: 1000 }
    }

    #[tokio::test]
    async fn appends_need_a_session_expire_and_stay_bounded() {
        let s = MemoryStore::new(Duration::from_secs(60), 2);
        assert_eq!(s.append("a", turn(vec![msg("0")], None)).await.unwrap(), Appended::Missing);
        assert!(s.create("a").await.unwrap());
        assert!(!s.create("a").await.unwrap(), "exists already");
        s.append("a", turn(vec![msg("1"), msg("2")], Some("r1"))).await.unwrap();
        assert_eq!(s.append("a", turn(vec![msg("1"), msg("2")], Some("r1"))).await.unwrap(), Appended::Duplicate);
        s.append("a", turn(vec![msg("3")], None)).await.unwrap();
        let got = s.get("a").await.unwrap().unwrap();
        assert_eq!(got.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["1", "2", "3"]);
        let big = turn(vec![msg(&"x".repeat(2000))], None);
        assert_eq!(s.append("a", big).await.unwrap(), Appended::TooLarge);
        // Full, and every session was used within the last minute: a new one is refused, none is evicted.
        assert!(s.create("b").await.unwrap());
        assert!(matches!(s.create("c").await, Err(StoreError::Full(2))));
        assert!(s.get("a").await.unwrap().is_some() && s.get("b").await.unwrap().is_some());
        assert!(s.delete("a").await.unwrap());
        assert!(!s.delete("a").await.unwrap());
        assert!(s.create("c").await.unwrap(), "room again");
        let short = MemoryStore::new(Duration::from_millis(0), 10);
        short.create("z").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(short.get("z").await.unwrap().is_none(), "expired");
        assert_eq!(short.append("z", turn(vec![msg("q")], None)).await.unwrap(), Appended::Missing);
    }

    #[tokio::test]
    async fn a_full_store_evicts_only_sessions_idle_for_a_minute() {
        let s = MemoryStore::new(Duration::from_secs(3600), 1);
        s.create("old").await.unwrap();
        if let Some(e) = s.lock().map.get_mut("old") {
            e.session.updated_at -= EVICTABLE_IDLE_MS;
        }
        assert!(s.create("new").await.unwrap());
        assert!(s.get("old").await.unwrap().is_none(), "the idle one made room");
    }
}
