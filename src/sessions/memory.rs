//! The in-memory session store (the default): bounded in count, each session expiring after its TTL without
//! use. Lives and dies with the process; use Redis to share sessions between processes or keep them across
//! restarts.

use super::{now_ms, Session, SessionStore, StoreError, StoredMessage};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub struct MemoryStore {
    sessions: Mutex<Inner>,
    ttl: Duration,
    max_sessions: usize,
}

/// Sessions with the tick of their last use (a counter, so the least recently used is exact even within a
/// millisecond).
#[derive(Default)]
struct Inner {
    map: HashMap<String, (Session, u64)>,
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
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        if inner.map.get(id).is_some_and(|(s, _)| self.expired(s, now)) {
            inner.map.remove(id);
        }
        let tick = inner.next_tick();
        Ok(inner.map.get_mut(id).map(|(s, used)| {
            s.updated_at = now;
            *used = tick;
            s.clone()
        }))
    }

    async fn append(&self, id: &str, turn: Vec<StoredMessage>) -> Result<(), StoreError> {
        let now = now_ms();
        let mut inner = self.lock();
        if inner.map.get(id).is_some_and(|(s, _)| self.expired(s, now)) {
            inner.map.remove(id);
        }
        if !inner.map.contains_key(id) && inner.map.len() >= self.max_sessions {
            // Full: drop expired sessions, then the least recently used one.
            inner.map.retain(|_, (s, _)| !self.expired(s, now));
            if inner.map.len() >= self.max_sessions {
                if let Some(oldest) = inner.map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) {
                    inner.map.remove(&oldest);
                }
            }
        }
        let tick = inner.next_tick();
        let (s, used) = inner.map.entry(id.to_string()).or_insert_with(|| {
            (Session { id: id.to_string(), created_at: now, updated_at: now, messages: vec![] }, tick)
        });
        s.messages.extend(turn);
        s.updated_at = now;
        *used = tick;
        Ok(())
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

    fn msg(c: &str) -> StoredMessage {
        StoredMessage { role: "user".into(), content: c.into(), model: None, version: None, slot: None, at: 0 }
    }

    #[tokio::test]
    async fn appends_expire_and_stay_bounded() {
        let s = MemoryStore::new(Duration::from_secs(60), 2);
        s.append("a", vec![msg("1"), msg("2")]).await.unwrap();
        s.append("a", vec![msg("3")]).await.unwrap();
        let got = s.get("a").await.unwrap().unwrap();
        assert_eq!(got.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["1", "2", "3"]);
        s.append("b", vec![msg("x")]).await.unwrap();
        s.get("a").await.unwrap();
        s.append("c", vec![msg("y")]).await.unwrap();
        assert!(s.get("b").await.unwrap().is_none(), "the least recently used session made room");
        assert!(s.get("a").await.unwrap().is_some());
        assert!(s.delete("a").await.unwrap());
        assert!(!s.delete("a").await.unwrap());
        let short = MemoryStore::new(Duration::from_millis(0), 10);
        short.append("z", vec![msg("q")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(short.get("z").await.unwrap().is_none(), "expired");
    }
}
