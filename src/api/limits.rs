//! What one public request may cost, bounded before the work is done: body size and read time, prompt bytes
//! (before tokenizing), stop lists, images and pixels per request; and the bounded pool every CPU-heavy step of a
//! request runs on (tokenizing, chat templates, image decoding), which answers 429 when it is saturated instead
//! of piling up blocking threads.

#![deny(clippy::indexing_slicing)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The limits of the public API (each has a `teal serve` flag; see config.rs).
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    /// The whole body must arrive within this.
    pub body_timeout: Duration,
    /// Text in one prompt or in one request's messages, before tokenizing. A model's own bound (its longest
    /// request in tokens times its longest token in bytes) may be lower.
    pub max_prompt_bytes: usize,
    /// Entries of `stop_token_ids`.
    pub max_stop_token_ids: usize,
    /// Images (or tensors) in one KServe request.
    pub max_images_per_request: usize,
    /// Pixels of all images in one KServe request together, from their headers, before decoding.
    pub max_request_pixels: u64,
    /// Pixels of one image.
    pub max_image_pixels: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 4 << 20,
            body_timeout: Duration::from_secs(30),
            max_prompt_bytes: 1 << 20,
            max_stop_token_ids: 64,
            max_images_per_request: 64,
            max_request_pixels: 100_000_000,
            max_image_pixels: 40_000_000,
        }
    }
}

/// Why the pool did not run a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the server is busy preparing other requests ({0} waiting); retry shortly")]
    Saturated(usize),
    #[error("internal error while preparing the request")]
    Failed,
}

/// At most `threads` jobs run at once on blocking threads and at most `max_waiting` wait for one; past that a
/// job is refused at once (429).
pub struct CpuPool {
    permits: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl CpuPool {
    pub fn new(threads: usize, max_waiting: usize) -> Arc<Self> {
        Arc::new(CpuPool { permits: Semaphore::new(threads.max(1)), waiting: AtomicUsize::new(0), max_waiting })
    }

    /// Runs `f` on a blocking thread once a permit is free. A panic in `f` is an error, not a crash.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_waiting && self.permits.available_permits() == 0 {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolError::Saturated(before));
        }
        let permit = self.permits.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|_| PoolError::Failed)?;
        tokio::task::spawn_blocking(f).await.map_err(|e| {
            tracing::error!(error = %e, "a request preparation job failed");
            PoolError::Failed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_saturated_pool_refuses_instead_of_queueing_without_bound() {
        let pool = CpuPool::new(1, 2);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut running = vec![];
        for _ in 0..3 {
            let (pool, rx) = (pool.clone(), rx.clone());
            running.push(tokio::spawn(async move { pool.run(move || drop(rx.lock().map(|r| r.recv()))).await }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // One runs, two wait: a fourth is refused.
        assert!(matches!(pool.run(|| ()).await, Err(PoolError::Saturated(_))));
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        for r in running {
            assert_eq!(r.await.unwrap(), Ok(()));
        }
        assert_eq!(pool.run(|| 5).await, Ok(5), "free again");
        assert_eq!(pool.run(|| -> u8 { panic!("bad input") }).await, Err(PoolError::Failed));
    }
}
