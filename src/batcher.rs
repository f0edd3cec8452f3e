//! Dynamic batching for the one-shot model kinds (embeddings, image classification). Requests queue their
//! inputs; one worker thread per model version takes the first waiting request, keeps collecting requests that
//! arrive within `max_delay` until `max_batch` inputs are gathered, runs them through the model as one batch
//! (in chunks of `max_batch` when a single request brings more), and answers each request with its own
//! outputs. A request's inputs are never split across versions: the batcher belongs to one resident slot.

use crate::error::{Result, TealError};
use crate::telemetry::EngineMetrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A model that maps a batch of inputs to one output each.
pub trait BatchModel: Send + Sync + 'static {
    type Input: Send + 'static;
    type Output: Send + 'static;
    fn run_batch(&self, inputs: &[Self::Input]) -> Result<Vec<Self::Output>>;
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BatchConfig {
    /// Most inputs run together.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others (0: take only what is already queued).
    #[serde(with = "humantime_serde_ms")]
    pub max_delay: Duration,
    /// Most inputs waiting; beyond it requests are refused (503) instead of queueing without bound.
    pub max_queue: usize,
}

mod humantime_serde_ms {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_batch: 32, max_delay: Duration::from_millis(2), max_queue: 4096 }
    }
}

/// Why a request got no outputs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    #[error("server overloaded: {0} inputs already queued")]
    Overloaded(usize),
    #[error("model version is shutting down")]
    Stopped,
    #[error("inference failed: {0}")]
    Failed(String),
}

type Outcome<O> = std::result::Result<Vec<O>, String>;
type Reply<O> = oneshot::Sender<Outcome<O>>;

struct Job<M: BatchModel> {
    inputs: Vec<M::Input>,
    reply: Reply<M::Output>,
    arrived: Instant,
}

pub struct Batcher<M: BatchModel> {
    model: Arc<M>,
    tx: Mutex<Option<mpsc::Sender<Job<M>>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    queued: Arc<AtomicUsize>,
    config: BatchConfig,
}

impl<M: BatchModel> Batcher<M> {
    pub fn start(model: Arc<M>, config: BatchConfig, metrics: EngineMetrics) -> Result<Self> {
        let config = BatchConfig { max_batch: config.max_batch.max(1), ..config };
        let (tx, rx) = mpsc::channel::<Job<M>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker { model: model.clone(), rx, config, queued: queued.clone(), metrics };
        let handle = std::thread::Builder::new()
            .name("teal-batcher".into())
            .spawn(move || worker.run())
            .map_err(|e| TealError::Device(format!("cannot start the batch worker: {e}")))?;
        Ok(Batcher { model, tx: Mutex::new(Some(tx)), worker: Mutex::new(Some(handle)), queued, config })
    }

    pub fn model(&self) -> &Arc<M> {
        &self.model
    }

    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Holds queue space for `n` inputs before they are prepared (decoded, tokenized), so a request the queue
    /// cannot take is refused before any of that work is done.
    pub fn reserve(&self, n: usize) -> std::result::Result<Reservation, InferError> {
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before > 0 && before + n > self.config.max_queue {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(InferError::Overloaded(before));
        }
        Ok(Reservation { queued: self.queued.clone(), n })
    }

    fn submit(
        &self,
        mut held: Reservation,
        inputs: Vec<M::Input>,
    ) -> std::result::Result<oneshot::Receiver<Outcome<M::Output>>, InferError> {
        let n = inputs.len();
        if n > held.n {
            return Err(InferError::Failed(format!("{n} inputs for a reservation of {}", held.n)));
        }
        // The worker releases what the job brings; the reservation releases the rest when it drops.
        held.n -= n;
        let (reply, rx) = oneshot::channel();
        let sent = match self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(tx) => tx.send(Job { inputs, reply, arrived: Instant::now() }).is_ok(),
            None => false,
        };
        if !sent {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(InferError::Stopped);
        }
        Ok(rx)
    }

    /// One output per input, from the batch they ran in.
    pub async fn infer(&self, inputs: Vec<M::Input>) -> std::result::Result<Vec<M::Output>, InferError> {
        let held = self.reserve(inputs.len())?;
        self.infer_reserved(held, inputs).await
    }

    /// `infer` with queue space reserved beforehand (at least `inputs.len()`).
    pub async fn infer_reserved(
        &self,
        held: Reservation,
        inputs: Vec<M::Input>,
    ) -> std::result::Result<Vec<M::Output>, InferError> {
        let rx = self.submit(held, inputs)?;
        rx.await.map_err(|_| InferError::Stopped)?.map_err(InferError::Failed)
    }

    /// `infer` for blocking callers (warm-up and gates run on blocking threads).
    pub fn infer_blocking(&self, inputs: Vec<M::Input>) -> std::result::Result<Vec<M::Output>, InferError> {
        let held = self.reserve(inputs.len())?;
        let rx = self.submit(held, inputs)?;
        rx.blocking_recv().map_err(|_| InferError::Stopped)?.map_err(InferError::Failed)
    }

    /// Stops taking requests without waiting; queued ones are still answered.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Stops taking requests; queued ones are still answered. Returns when the worker has finished.
    pub fn shutdown(&self) {
        self.close();
        if let Some(h) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// Queue space held by one request (see `Batcher::reserve`); released on drop unless its inputs were submitted.
pub struct Reservation {
    queued: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.n > 0 {
            self.queued.fetch_sub(self.n, Ordering::AcqRel);
        }
    }
}

/// Dropping never blocks (the controller task drops versions): the worker finishes what is queued, then ends.
impl<M: BatchModel> Drop for Batcher<M> {
    fn drop(&mut self) {
        self.close();
    }
}

struct Worker<M: BatchModel> {
    model: Arc<M>,
    rx: mpsc::Receiver<Job<M>>,
    config: BatchConfig,
    queued: Arc<AtomicUsize>,
    metrics: EngineMetrics,
}

impl<M: BatchModel> Worker<M> {
    fn run(self) {
        while let Ok(first) = self.rx.recv() {
            let jobs = self.gather(first);
            self.execute(jobs);
        }
    }

    /// The first job plus whatever arrives before the delay runs out or the batch is full.
    fn gather(&self, first: Job<M>) -> Vec<Job<M>> {
        let deadline = Instant::now() + self.config.max_delay;
        let mut n = first.inputs.len();
        let mut jobs = vec![first];
        while n < self.config.max_batch {
            let wait = deadline.saturating_duration_since(Instant::now());
            let next = if wait.is_zero() {
                self.rx.try_recv().map_err(|_| ())
            } else {
                self.rx.recv_timeout(wait).map_err(|_: RecvTimeoutError| ())
            };
            match next {
                Ok(job) => {
                    n += job.inputs.len();
                    jobs.push(job);
                }
                Err(()) => break,
            }
        }
        jobs
    }

    fn execute(&self, jobs: Vec<Job<M>>) {
        let started = Instant::now();
        let counts: Vec<usize> = jobs.iter().map(|j| j.inputs.len()).collect();
        let total: usize = counts.iter().sum();
        self.metrics.waiting.set(self.queued.load(Ordering::Acquire) as i64);
        let mut replies = Vec::with_capacity(jobs.len());
        let mut inputs = Vec::with_capacity(total);
        for j in jobs {
            self.metrics.queue_time.observe(started.duration_since(j.arrived).as_secs_f64());
            inputs.extend(j.inputs);
            replies.push((j.reply, j.arrived));
        }
        let mut results: Vec<std::result::Result<M::Output, String>> = Vec::with_capacity(total);
        for chunk in inputs.chunks(self.config.max_batch) {
            self.metrics.batch_size.observe(chunk.len() as f64);
            self.metrics.running_requests.set(chunk.len() as i64);
            match crate::error::catching("running the batch", || self.model.run_batch(chunk)) {
                Ok(Ok(outs)) if outs.len() == chunk.len() => results.extend(outs.into_iter().map(Ok)),
                Ok(Ok(outs)) => results.extend(
                    chunk
                        .iter()
                        .map(|_| Err(format!("model returned {} outputs for {} inputs", outs.len(), chunk.len()))),
                ),
                Ok(Err(e)) => results.extend(chunk.iter().map(|_| Err(e.to_string()))),
                Err(panic) => results.extend(chunk.iter().map(|_| Err(panic.clone()))),
            }
        }
        self.metrics.running_requests.set(0);
        self.queued.fetch_sub(total, Ordering::AcqRel);
        let mut results = results.into_iter();
        for ((reply, arrived), n) in replies.into_iter().zip(counts) {
            let mine: std::result::Result<Vec<M::Output>, String> = results.by_ref().take(n).collect();
            self.metrics.e2e.observe(arrived.elapsed().as_secs_f64());
            let _ = reply.send(mine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles its inputs and records the size of every batch it ran.
    struct Doubler(Mutex<Vec<usize>>);

    impl BatchModel for Doubler {
        type Input = i64;
        type Output = i64;
        fn run_batch(&self, inputs: &[i64]) -> Result<Vec<i64>> {
            self.0.lock().unwrap().push(inputs.len());
            std::thread::sleep(Duration::from_millis(5));
            if inputs.contains(&-1) {
                return Err(TealError::Config("negative one".into()));
            }
            Ok(inputs.iter().map(|x| x * 2).collect())
        }
    }

    fn metrics() -> EngineMetrics {
        crate::telemetry::Metrics::new().for_slot("m", "blue", "v")
    }

    #[test]
    fn requests_within_the_delay_share_a_batch_and_get_their_own_outputs() {
        let model = Arc::new(Doubler(Mutex::new(vec![])));
        let cfg = BatchConfig { max_batch: 8, max_delay: Duration::from_millis(200), max_queue: 100 };
        let b = Arc::new(Batcher::start(model.clone(), cfg, metrics()).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || b.infer_blocking(vec![i * 10, i * 10 + 1]).unwrap())
            })
            .collect();
        let outs: Vec<Vec<i64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (i, o) in outs.iter().enumerate() {
            let i = i as i64;
            assert_eq!(o, &vec![i * 20, i * 20 + 2]);
        }
        assert_eq!(model.0.lock().unwrap().as_slice(), &[8], "all four requests in one batch of 8");
        // A request larger than the batch runs in chunks.
        assert_eq!(b.infer_blocking((0..20).collect()).unwrap().len(), 20);
        assert_eq!(&model.0.lock().unwrap()[1..], &[8, 8, 4]);
    }

    #[test]
    fn an_error_reaches_only_the_requests_of_its_batch_and_shutdown_refuses_new_ones() {
        let model = Arc::new(Doubler(Mutex::new(vec![])));
        let cfg = BatchConfig { max_batch: 2, max_delay: Duration::from_millis(300), max_queue: 100 };
        let b = Arc::new(Batcher::start(model.clone(), cfg, metrics()).unwrap());
        let run = |x: Vec<i64>| {
            let b = b.clone();
            std::thread::spawn(move || b.infer_blocking(x))
        };
        // Two requests share a batch; one carries the poison: both get the model's reason.
        let (bad, mate) = (run(vec![-1]), run(vec![7]));
        for r in [bad.join().unwrap(), mate.join().unwrap()] {
            assert!(matches!(r, Err(InferError::Failed(ref m)) if m.contains("negative one")), "{r:?}");
        }
        // The next batch of two is untouched, each request with its own outputs.
        let (c, d) = (run(vec![3]), run(vec![4, 5]));
        assert_eq!(c.join().unwrap().unwrap(), vec![6]);
        assert_eq!(d.join().unwrap().unwrap(), vec![8, 10]);
        let sizes = model.0.lock().unwrap().clone();
        assert_eq!(sizes[0], 2, "the poisoned batch held both requests: {sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 5, "{sizes:?}");
        b.shutdown();
        assert!(matches!(b.infer_blocking(vec![3]), Err(InferError::Stopped)));
    }

    #[test]
    fn reservations_refuse_a_full_queue_before_any_work_and_release_on_drop() {
        let model = Arc::new(Doubler(Mutex::new(vec![])));
        let cfg = BatchConfig { max_batch: 4, max_delay: Duration::ZERO, max_queue: 10 };
        let b = Batcher::start(model, cfg, metrics()).unwrap();
        let a = b.reserve(8).unwrap();
        assert!(matches!(b.reserve(5), Err(InferError::Overloaded(8))), "8 + 5 > 10");
        drop(a);
        let held = b.reserve(6).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(rt.block_on(b.infer_reserved(held, vec![1, 2])).unwrap(), vec![2, 4], "fewer than reserved");
        assert_eq!(b.queued.load(Ordering::Acquire), 0, "everything released");
    }
}
