//! The fleet's Redis keys and every operation on them. Under `teal:fleet:{name}:`:
//! - `member:{id}`: a replica's heartbeat (JSON), expiring unless renewed;
//! - `epoch`: the epoch counter (INCR); `target`: the committed state (JSON), written only by the commit script
//!   together with a fresh epoch, and only by the holder of the lease, so no epoch ever has two targets;
//! - `lease`, `lease_seq`: one short lease per fleet operation, its value a fencing token from `lease_seq`;
//! - `op`: the prepare request in progress; `ack:{op}`: the members' answers (hash: replica -> JSON).
//!
//! Redis is never the lock by itself: the commit script checks the token and writes the epoch atomically.

use super::views::{Ack, Member, Prepare, Target};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::Duration;

pub type RedisResult<T> = Result<T, String>;

fn err(e: redis::RedisError) -> String {
    format!("redis: {e}")
}

/// KEYS: lease, epoch, target, op. ARGV: token, target JSON (epoch filled in here), the highest epoch a member
/// reported (the counter is raised to it first: a Redis that lost its data never hands out an epoch that a
/// replica already applied). Returns the new epoch, or -1 when the lease is no longer the caller's.
const COMMIT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3]) end
local e = redis.call('INCR', KEYS[2])
local t = cjson.decode(ARGV[2])
t['epoch'] = e
redis.call('SET', KEYS[3], cjson.encode(t))
redis.call('DEL', KEYS[4])
return e
";

/// KEYS: lease. ARGV: token, ttl (ms). Extends the lease only if it is still the caller's; 1 if it was.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// KEYS: lease. ARGV: token. Deletes the lease only if it is still the caller's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
}

impl Store {
    /// Connects lazily (a Redis that is down at start shows as staleness, not as a failed start).
    pub fn new(url: &str, fleet: &str) -> RedisResult<Self> {
        let client = redis::Client::open(url).map_err(|e| format!("bad fleet redis url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = client.get_connection_manager_lazy(config).map_err(err)?;
        Ok(Store { client, conn, prefix: format!("teal:fleet:{fleet}:") })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// Tells every replica to read the fleet's state now (pub/sub is at-most-once: polling stays the guarantee).
    pub async fn notify(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = c.publish(self.key("notify"), "1").await.map_err(err)?;
        Ok(())
    }

    /// A subscription to the fleet's notifications; each message means "something changed, read it".
    pub async fn subscribe(&self) -> RedisResult<redis::aio::PubSubStream> {
        let connect = self.client.get_async_pubsub();
        let mut ps = tokio::time::timeout(Duration::from_millis(500), connect)
            .await
            .map_err(|_| "redis: timed out subscribing".to_string())?
            .map_err(err)?;
        ps.subscribe(self.key("notify")).await.map_err(err)?;
        Ok(ps.into_on_message())
    }

    pub async fn heartbeat(&self, m: &Member, ttl: Duration) -> RedisResult<()> {
        let json = serde_json::to_string(m).map_err(|e| e.to_string())?;
        let mut c = self.conn.clone();
        let _: () =
            c.pset_ex(self.key(&format!("member:{}", m.id)), json, ttl.as_millis() as u64).await.map_err(err)?;
        Ok(())
    }

    pub async fn leave(&self, id: &str) -> RedisResult<()> {
        let mut c = self.conn.clone();
        let _: () = c.del(self.key(&format!("member:{id}"))).await.map_err(err)?;
        Ok(())
    }

    /// Every replica with a live heartbeat (at most 1,000 are read).
    pub async fn members(&self) -> RedisResult<Vec<Member>> {
        let mut c = self.conn.clone();
        let pattern = self.key("member:*");
        let mut keys: Vec<String> = vec![];
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            keys.extend(batch);
            if next == 0 || keys.len() >= 1000 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let raw: Vec<Option<String>> = c.mget(&keys).await.map_err(err)?;
        let mut out: Vec<Member> = raw.iter().flatten().filter_map(|s| serde_json::from_str(s).ok()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The prepare in progress and the committed target, in one round trip.
    pub async fn poll(&self) -> RedisResult<(Option<Prepare>, Option<Target>)> {
        let mut c = self.conn.clone();
        let (op, target): (Option<String>, Option<String>) =
            redis::pipe().get(self.key("op")).get(self.key("target")).query_async(&mut c).await.map_err(err)?;
        let op = op.and_then(|s| serde_json::from_str(&s).ok());
        Ok((op, target.and_then(|s| serde_json::from_str(&s).ok())))
    }

    pub async fn ack(&self, op: &str, replica: &str, a: &Ack) -> RedisResult<()> {
        let json = serde_json::to_string(a).map_err(|e| e.to_string())?;
        let key = self.key(&format!("ack:{op}"));
        let mut c = self.conn.clone();
        let _: () =
            redis::pipe().hset(&key, replica, json).pexpire(&key, 600_000).query_async(&mut c).await.map_err(err)?;
        Ok(())
    }

    pub async fn acks(&self, op: &str) -> RedisResult<HashMap<String, Ack>> {
        let mut c = self.conn.clone();
        let raw: HashMap<String, String> = c.hgetall(self.key(&format!("ack:{op}"))).await.map_err(err)?;
        Ok(raw.into_iter().filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|a| (k, a))).collect())
    }

    /// Takes the fleet's operation lease; Some(fencing token) when it was free.
    pub async fn acquire(&self, ttl: Duration) -> RedisResult<Option<u64>> {
        let mut c = self.conn.clone();
        let token: u64 = c.incr(self.key("lease_seq"), 1).await.map_err(err)?;
        let ok: Option<String> = redis::cmd("SET")
            .arg(self.key("lease"))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(ok.map(|_| token))
    }

    /// Extends the lease held with `token`; false when it is no longer held.
    pub async fn renew(&self, token: u64, ttl: Duration) -> RedisResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 = redis::Script::new(RENEW)
            .key(self.key("lease"))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(n == 1)
    }

    pub async fn release(&self, token: u64) -> RedisResult<()> {
        let mut c = self.conn.clone();
        let _: i64 =
            redis::Script::new(RELEASE).key(self.key("lease")).arg(token).invoke_async(&mut c).await.map_err(err)?;
        Ok(())
    }

    pub async fn start_prepare(&self, p: &Prepare, ttl: Duration) -> RedisResult<()> {
        let json = serde_json::to_string(p).map_err(|e| e.to_string())?;
        let mut c = self.conn.clone();
        let _: () = redis::pipe()
            .del(self.key(&format!("ack:{}", p.op)))
            .pset_ex(self.key("op"), json, ttl.as_millis() as u64)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn clear_op(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        let _: () = c.del(self.key("op")).await.map_err(err)?;
        Ok(())
    }

    /// Commits `t` under a fresh epoch above `floor` if `token` still holds the lease; the new epoch, or None.
    pub async fn commit(&self, token: u64, t: &Target, floor: u64) -> RedisResult<Option<u64>> {
        let json = serde_json::to_string(t).map_err(|e| e.to_string())?;
        let mut c = self.conn.clone();
        let e: i64 = redis::Script::new(COMMIT)
            .key(self.key("lease"))
            .key(self.key("epoch"))
            .key(self.key("target"))
            .key(self.key("op"))
            .arg(token)
            .arg(json)
            .arg(floor)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(u64::try_from(e).ok())
    }
}
