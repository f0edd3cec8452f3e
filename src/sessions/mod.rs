//! Chat sessions that outlive a slot: the conversation is stored as text (never token ids), so after a flip the
//! new live model renders it with its own chat template and tokenizer. Two stores behind one trait: in memory
//! (the default: bounded, with TTL) and Redis (shared by every teal process, reconnecting by itself).
//!
//! Concurrency: a turn (the user's messages and the reply) is appended in one atomic operation, so two requests
//! on one session at the same time never lose a turn; each reply is generated from the history as it was when
//! its request started, and turns are stored in the order they finish.
//!
//! Sessions are created explicitly (`POST /v1/sessions`, or `"session": true` on a chat request); an append to a
//! session the store does not hold (never created, expired, evicted, deleted) is refused, so a lost conversation
//! is never continued as if it were new. A turn carries its request id: a retried turn is stored once.

#![deny(clippy::indexing_slicing)]

pub mod memory;
pub mod redis;

use serde::{Deserialize, Serialize};

/// One stored message; replies record which model version wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Unix milliseconds.
    pub at: u64,
    /// The `x-request-id` of the request that stored this turn (on its reply), so a retry is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `<rollout id>:<arm>` on a reply written during a rollout: the session keeps that arm until the rollout
    /// ends (or rolls back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub created_at: u64,
    pub updated_at: u64,
    pub messages: Vec<StoredMessage>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (Redis down): 503, or served without history when failing open. The text is
    /// for the log only; clients get a generic message.
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
    #[error("session data is corrupt: {0}")]
    Corrupt(String),
    /// The in-memory store holds its maximum of sessions, all of them used recently: 429.
    #[error("the session store is full ({0} sessions, all active in the last minute)")]
    Full(usize),
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// A turn with this request id is already stored: nothing was added.
    Duplicate,
    /// The session does not exist (never created, expired, evicted or deleted): nothing was added.
    Missing,
    /// The history would grow past the size limit: nothing was added.
    TooLarge,
}

/// One turn to append: its messages, the request id that makes it idempotent, and the history's size limit.
pub struct Turn<'a> {
    pub messages: Vec<StoredMessage>,
    pub request_id: Option<&'a str>,
    pub max_bytes: usize,
}

/// The bytes a history counts against the size limit.
pub fn bytes_of(messages: &[StoredMessage]) -> usize {
    messages.iter().map(|m| m.content.len() + m.role.len()).sum()
}

#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// Creates an empty session; false when one with this id exists already.
    async fn create(&self, id: &str) -> Result<bool, StoreError>;
    /// The session, or None when it does not exist (or expired). Refreshes its TTL.
    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError>;
    /// Appends one turn atomically to an existing session and refreshes the TTL.
    async fn append(&self, id: &str, turn: Turn<'_>) -> Result<Appended, StoreError>;
    /// True if a session was deleted.
    async fn delete(&self, id: &str) -> Result<bool, StoreError>;
    /// "memory" or "redis".
    fn kind(&self) -> &'static str;
}

/// Session ids: 1 to 128 characters of [A-Za-z0-9_-].
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new server-made id: 128 random bits as 32 hex digits.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_and_random() {
        assert!(valid_id("abc-DEF_123"));
        for bad in ["", "a b", "a/b", "../x", "é", &"x".repeat(129), "a:b"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(valid_id(&a));
    }
}
