//! The fleet's operation lease as a guard. Taken with a fresh fencing token, renewed every second while its
//! holder works (5 s without renewal and it expires, so a coordinator that dies frees it quickly), renewed for
//! at most a bounded time, and released when the guard goes: explicitly, or on drop, which also covers an admin
//! call whose client went away mid-flip (its future is dropped; the renewal must not outlive it).

use super::store::Store;
use std::time::{Duration, Instant};

/// How long the lease lives without renewal.
pub(super) const LEASE: Duration = Duration::from_secs(5);

pub(super) struct Lease {
    token: u64,
    store: Store,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

impl Lease {
    /// Takes the lease if it is free (None when another operation holds it); renewed for at most `max`.
    pub async fn take(store: &Store, max: Duration) -> Result<Option<Lease>, String> {
        let Some(token) = store.acquire(LEASE).await? else { return Ok(None) };
        let renewing = store.clone();
        let until = Instant::now() + max;
        let renewal = tokio::spawn(async move {
            while Instant::now() < until {
                tokio::time::sleep(LEASE / 5).await;
                match renewing.renew(token, LEASE).await {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => tracing::warn!(error = %e, "could not renew the fleet lease"),
                }
            }
        });
        Ok(Some(Lease { token, store: store.clone(), renewal, released: false }))
    }

    pub fn token(&self) -> u64 {
        self.token
    }

    /// Releases the lease now (the next operation may take it at once).
    pub async fn release(mut self) {
        self.renewal.abort();
        self.released = true;
        if let Err(e) = self.store.release(self.token).await {
            tracing::warn!(error = %e, "could not release the fleet lease (it expires by itself)");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        let (store, token) = (self.store.clone(), self.token);
        tokio::spawn(async move {
            if let Err(e) = store.release(token).await {
                tracing::warn!(error = %e, "could not release the fleet lease (it expires by itself)");
            }
        });
    }
}
