//! The Redis session store (`--redis-url`): shared by every teal process that points at the same Redis, so a
//! conversation continues on another process or after a restart. One connection manager, created lazily and
//! reconnecting by itself; commands time out quickly so a dead Redis turns into a clear 503, not a hang.
//!
//! Keys (namespaced): `teal:session:{id}` is a hash (created_at, updated_at), `teal:session:{id}:messages` a
//! list of JSON messages. Every read and append runs as one MULTI/EXEC and refreshes both keys' TTL.

use super::{now_ms, Session, SessionStore, StoreError, StoredMessage};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::time::Duration;

pub struct RedisStore {
    conn: ConnectionManager,
    ttl: Duration,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn keys(id: &str) -> (String, String) {
    (format!("teal:session:{id}"), format!("teal:session:{id}:messages"))
}

impl RedisStore {
    /// Connects lazily: a Redis that is down at start is an error per request, not at start.
    pub fn new(url: &str, ttl: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("bad redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client.get_connection_manager_lazy(config).map_err(unavailable)?;
        Ok(RedisStore { conn, ttl })
    }

    fn ttl_secs(&self) -> i64 {
        self.ttl.as_secs().max(1) as i64
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let (meta, msgs) = keys(id);
        let mut conn = self.conn.clone();
        let (fields, raw): (HashMap<String, u64>, Vec<String>) = redis::pipe()
            .atomic()
            .hgetall(&meta)
            .lrange(&msgs, 0, -1)
            .expire(&meta, self.ttl_secs())
            .ignore()
            .expire(&msgs, self.ttl_secs())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if fields.is_empty() && raw.is_empty() {
            return Ok(None);
        }
        let messages = raw
            .iter()
            .map(|m| serde_json::from_str::<StoredMessage>(m).map_err(|e| StoreError::Corrupt(format!("{meta}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Session {
            id: id.to_string(),
            created_at: fields.get("created_at").copied().unwrap_or(0),
            updated_at: fields.get("updated_at").copied().unwrap_or(0),
            messages,
        }))
    }

    async fn append(&self, id: &str, turn: Vec<StoredMessage>) -> Result<(), StoreError> {
        let (meta, msgs) = keys(id);
        let now = now_ms();
        let encoded: Vec<String> = turn.iter().map(|m| serde_json::to_string(m).unwrap_or_default()).collect();
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .hset_nx(&meta, "created_at", now)
            .ignore()
            .hset(&meta, "updated_at", now)
            .ignore()
            .rpush(&msgs, encoded)
            .ignore()
            .expire(&meta, self.ttl_secs())
            .ignore()
            .expire(&msgs, self.ttl_secs())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let (meta, msgs) = keys(id);
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("DEL").arg(&meta).arg(&msgs).query_async(&mut conn).await.map_err(unavailable)?;
        Ok(n > 0)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
