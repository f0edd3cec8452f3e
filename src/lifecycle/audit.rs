//! The audit log: every lifecycle action (load, its outcome, flip, forced flip, rollback, unload, refusals) with
//! its time, slot, versions, outcome and reason. Appended as one JSON line per event to a file so it survives a
//! restart (written through to the OS on every event, not fsynced), kept in memory for GET /admin/events, and
//! broadcast for followers (SSE).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Events kept in memory (older ones stay in the file).
const KEEP: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// load_started, load_succeeded, load_failed, flip, rollback, unload, refused.
    pub action: String,
    pub slot: Option<String>,
    /// ok, failed or refused.
    pub outcome: String,
    pub reason: Option<String>,
    /// The version that was live before (flip, rollback) or that the slot held (load, unload).
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// A flip that skipped the gates.
    #[serde(default)]
    pub forced: bool,
    #[serde(default)]
    pub details: Value,
}

/// What an action records; `AuditLog::record` adds the sequence number and time.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub action: &'static str,
    pub slot: Option<String>,
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub forced: bool,
    pub details: Value,
}

pub struct AuditLog {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<AuditEvent>,
}

struct Inner {
    events: VecDeque<AuditEvent>,
    next_seq: u64,
    file: Option<std::fs::File>,
}

impl AuditLog {
    /// Opens (or creates) the JSONL file and reads back what an earlier run wrote. `None`: memory only.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let mut events = VecDeque::new();
        let mut file = None;
        if let Some(p) = path {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            if p.is_file() {
                for line in std::io::BufReader::new(std::fs::File::open(p)?).lines() {
                    // A torn last line (a crash mid-write) is skipped, not fatal.
                    if let Ok(ev) = serde_json::from_str::<AuditEvent>(&line?) {
                        events.push_back(ev);
                        if events.len() > KEEP {
                            events.pop_front();
                        }
                    }
                }
            }
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
            // Finish a torn last line so the next event starts on a line of its own.
            let content = std::fs::read(p)?;
            if content.last().is_some_and(|&b| b != b'\n') {
                f.write_all(b"\n")?;
            }
            file = Some(f);
        }
        let next_seq = events.back().map(|e| e.seq + 1).unwrap_or(1);
        let (tx, _) = broadcast::channel(1024);
        Ok(AuditLog { inner: Mutex::new(Inner { events, next_seq, file }), tx })
    }

    pub fn record(&self, e: Entry) -> AuditEvent {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ev = AuditEvent {
            seq: inner.next_seq,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            action: e.action.into(),
            slot: e.slot,
            outcome: e.outcome.into(),
            reason: e.reason,
            from_version: e.from_version,
            to_version: e.to_version,
            forced: e.forced,
            details: e.details,
        };
        inner.next_seq += 1;
        if let Some(f) = inner.file.as_mut() {
            let line = serde_json::to_string(&ev).unwrap_or_default();
            if let Err(err) = writeln!(f, "{line}") {
                tracing::error!(error = %err, "cannot append to the audit log");
            }
        }
        inner.events.push_back(ev.clone());
        if inner.events.len() > KEEP {
            inner.events.pop_front();
        }
        let _ = self.tx.send(ev.clone());
        let (slot, reason) = (ev.slot.as_deref().unwrap_or("-"), ev.reason.as_deref().unwrap_or(""));
        tracing::info!(action = %ev.action, slot, outcome = %ev.outcome, reason, "audit");
        ev
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub fn since(&self, after: u64, limit: usize) -> Vec<AuditEvent> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.iter().filter(|e| e.seq > after).take(limit).cloned().collect()
    }

    /// The latest `n` events, oldest first.
    pub fn latest(&self, n: usize) -> Vec<AuditEvent> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.iter().skip(inner.events.len().saturating_sub(n)).cloned().collect()
    }

    /// New events as they are recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditEvent> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_a_reopen_and_keep_counting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        log.record(Entry { action: "flip", outcome: "ok", slot: Some("green".into()), ..Default::default() });
        log.record(Entry { action: "rollback", outcome: "ok", ..Default::default() });
        drop(log);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"torn").unwrap();
        let log = AuditLog::open(Some(&path)).unwrap();
        let evs = log.since(0, 100);
        assert_eq!(evs.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["flip", "rollback"]);
        let ev = log.record(Entry { action: "unload", outcome: "ok", ..Default::default() });
        assert_eq!(ev.seq, 3);
        assert_eq!(log.since(2, 100).len(), 1);
        assert_eq!(log.latest(2).iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        drop(log);
        let log = AuditLog::open(Some(&path)).unwrap();
        assert_eq!(log.since(0, 100).last().unwrap().action, "unload", "an event after a torn line survives");
    }
}
