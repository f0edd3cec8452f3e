//! The Redis session store (`--redis-url`): shared by every teal process that points at the same Redis, so a
//! conversation continues on another process or after a restart. One connection manager, created lazily and
//! reconnecting by itself; commands time out quickly so a dead Redis turns into a clear 503, not a hang.
//!
//! Keys (namespaced): `teal:session:{id}` is a hash (created_at, updated_at, bytes), `teal:session:{id}:messages`
//! a list of JSON messages, `teal:session:{id}:requests` the set of request ids whose turns are stored. A read
//! runs as one MULTI/EXEC; create and append are Lua scripts (atomic on the server): an append checks that the
//! session exists, that its request id is new and that the history stays under the size limit before it adds
//! anything. Each refreshes every key's TTL.

#![deny(clippy::indexing_slicing)]

use super::{bytes_of, now_ms, Appended, Session, SessionStore, StoreError, StoredMessage, Turn};
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

fn requests_key(id: &str) -> String {
    format!("teal:session:{id}:requests")
}

/// KEYS: meta. ARGV: now, ttl. Returns 1 when created, 0 when it existed.
const CREATE: &str = r"
if redis.call('HSETNX', KEYS[1], 'created_at', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1], 'bytes', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// KEYS: meta, messages, requests. ARGV: now, ttl, request id ('' for none), turn bytes, max bytes, messages...
/// Returns 1 stored, 0 missing, 2 duplicate, 3 too large.
const APPEND: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[3] ~= '' and redis.call('SISMEMBER', KEYS[3], ARGV[3]) == 1 then return 2 end
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0') + tonumber(ARGV[4])
if bytes > tonumber(ARGV[5]) then return 3 end
if ARGV[3] ~= '' then redis.call('SADD', KEYS[3], ARGV[3]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1], 'bytes', bytes)
for i = 6, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return 1
";

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
        if fields.is_empty() {
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

    async fn create(&self, id: &str) -> Result<bool, StoreError> {
        let (meta, _) = keys(id);
        let mut conn = self.conn.clone();
        let created: i64 = redis::Script::new(CREATE)
            .key(&meta)
            .arg(now_ms())
            .arg(self.ttl_secs())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(created == 1)
    }

    async fn append(&self, id: &str, turn: Turn<'_>) -> Result<Appended, StoreError> {
        let (meta, msgs) = keys(id);
        let encoded = turn
            .messages
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        let outcome: i64 = redis::Script::new(APPEND)
            .key(&meta)
            .key(&msgs)
            .key(requests_key(id))
            .arg(now_ms())
            .arg(self.ttl_secs())
            .arg(turn.request_id.unwrap_or(""))
            .arg(bytes_of(&turn.messages))
            .arg(turn.max_bytes)
            .arg(encoded)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match outcome {
            1 => Appended::Stored,
            2 => Appended::Duplicate,
            3 => Appended::TooLarge,
            _ => Appended::Missing,
        })
    }

    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let (meta, msgs) = keys(id);
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("DEL")
            .arg(&meta)
            .arg(&msgs)
            .arg(requests_key(id))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
