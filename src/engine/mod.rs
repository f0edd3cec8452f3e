//! The inference engine of one model: a bounded request queue in front of a dedicated thread that runs
//! continuous batching over a preallocated paged KV pool. Each engine owns its model, pool and device, so two
//! engines (blue and green) can live in one process.

pub mod blocks;
pub mod constraint;
pub mod kv_cache;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod score;
pub mod sequence;
mod worker;

use crate::error::{Result, TealError};
use crate::models::LanguageModel;
use crate::telemetry::EngineMetrics;
use request::{Event, GenRequest, SamplingParams, Scoring};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// KV pool size in tokens, shared by all running sequences.
    pub max_total_tokens: usize,
    pub block_size: usize,
    /// Most sequences decoded together.
    pub max_batch_size: usize,
    /// Most new tokens per step (longer prompts are prefilled in chunks of this size).
    pub max_step_tokens: usize,
    /// Most requests waiting for admission; past it, `submit` refuses (HTTP 429).
    pub max_queue: usize,
    /// Keep full KV blocks after a request and reuse them for prompts that share the prefix (blocks.rs).
    pub prefix_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_total_tokens: 16384,
            block_size: 16,
            max_batch_size: 32,
            max_step_tokens: 512,
            max_queue: 256,
            prefix_cache: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    Stopped,
    /// The prompt plus max_tokens can never fit this engine (its context or KV pool): refused, never queued.
    #[error("{tokens} tokens ({prompt} in the prompt, {new} to generate) exceed this model's limit of {limit} tokens")]
    TooLong { tokens: usize, prompt: usize, new: usize, limit: usize },
    /// A malformed internal request (a scoring request out of its bounds).
    #[error("{0}")]
    Invalid(String),
}

pub struct Engine {
    model: Arc<LanguageModel>,
    tx: Mutex<Option<Sender<GenRequest>>>,
    pending: Arc<AtomicUsize>,
    /// Set by `abort`: the worker fails everything it holds and stops.
    aborted: Arc<AtomicBool>,
    config: EngineConfig,
    thread: Mutex<Option<JoinHandle<()>>>,
    kv_capacity: usize,
    kv_bytes: usize,
}

impl Engine {
    /// Preallocates the KV pool on the model's device and starts the engine thread.
    pub fn start(model: Arc<LanguageModel>, config: EngineConfig, metrics: EngineMetrics) -> Result<Self> {
        let c = model.llama.config();
        if config.block_size == 0 || config.max_batch_size == 0 || config.max_step_tokens == 0 {
            return Err(TealError::Config("block size, batch size and step tokens must be positive".into()));
        }
        let pool = kv_cache::KvPool::new(
            c.num_layers,
            c.num_kv_heads,
            c.head_dim,
            config.max_total_tokens,
            config.block_size,
            model.llama.device(),
        )?
        .with_prefix_cache(config.prefix_cache);
        let (kv_capacity, kv_bytes) = (pool.capacity_tokens(), pool.bytes());
        let (tx, rx) = std::sync::mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let aborted = Arc::new(AtomicBool::new(false));
        let worker = worker::Worker {
            model: model.clone(),
            pool,
            rx,
            pending: pending.clone(),
            aborted: aborted.clone(),
            limits: scheduler::Limits {
                block_size: config.block_size,
                max_seqs: config.max_batch_size,
                max_step_tokens: config.max_step_tokens,
            },
            metrics,
            waiting: Default::default(),
            running: vec![],
            cpu_pool: match model.llama.device().is_cpu() {
                true => Some(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(rayon::current_num_threads())
                        .thread_name(|i| format!("teal-cpu-{i}"))
                        .build()
                        .map_err(|e| TealError::Device(format!("cannot start compute threads: {e}")))?,
                ),
                false => None,
            },
        };
        let thread = std::thread::Builder::new()
            .name(format!("teal-engine-{}", model.name))
            .spawn(move || worker.run())
            .map_err(|e| TealError::Device(format!("cannot start engine thread: {e}")))?;
        Ok(Engine {
            model,
            tx: Mutex::new(Some(tx)),
            pending,
            aborted,
            config,
            thread: Mutex::new(Some(thread)),
            kv_capacity,
            kv_bytes,
        })
    }

    pub fn model(&self) -> &Arc<LanguageModel> {
        &self.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Tokens the KV pool holds; a request's prompt + max_tokens must fit in it.
    pub fn kv_capacity(&self) -> usize {
        self.kv_capacity
    }

    pub fn kv_bytes(&self) -> usize {
        self.kv_bytes
    }

    /// The longest prompt + completion one request may ask for (what fits the context and the KV pool beside one
    /// block of slack, so a lone request can always be admitted).
    pub fn max_request_tokens(&self) -> usize {
        self.model.max_context.min(self.kv_capacity.saturating_sub(self.config.block_size))
    }

    /// Requests queued and not yet admitted to the running batch (a shadow request is shed while any wait).
    pub fn queued(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Queues a tokenized request. The receiver yields its tokens; dropping it cancels the request.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<UnboundedReceiver<Event>, SubmitError> {
        self.enqueue(prompt, params, self.config.max_queue, false, None)
    }

    /// Queues a request if fewer than `limit` are pending.
    fn enqueue(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        limit: usize,
        internal: bool,
        score: Option<Scoring>,
    ) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let (prompt_len, new) = (prompt.len(), params.max_tokens);
        let max = self.max_request_tokens();
        if prompt_len.saturating_add(new) > max {
            return Err(SubmitError::TooLong {
                tokens: prompt_len.saturating_add(new),
                prompt: prompt_len,
                new,
                limit: max,
            });
        }
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or(SubmitError::Stopped)?;
        let pending = self.pending.fetch_add(1, Ordering::AcqRel);
        if pending >= limit {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull(pending));
        }
        let (etx, erx) = tokio::sync::mpsc::unbounded_channel();
        let req = GenRequest { prompt, params, events: etx, arrived: Instant::now(), internal, score };
        tx.send(req).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            SubmitError::Stopped
        })?;
        Ok(erx)
    }

    /// Queues a request that does not count against the client queue limit: the lifecycle's own warm-up and
    /// gate requests, which must run even when clients have filled the queue.
    pub fn submit_internal(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<UnboundedReceiver<Event>, SubmitError> {
        self.enqueue(prompt, params, usize::MAX, true, None)
    }

    /// Queues a teacher-forced scoring of `tokens` from index `from` (teal's own request, like warm-up): the
    /// receiver yields one `Scored` with a score per token from `from` on (at most `score::MAX_SCORED`), then
    /// `Done`. `ask` names, per scored token, up to `score::MAX_ASKED` ids whose log-probabilities are wanted.
    pub fn submit_score(
        &self,
        tokens: Vec<u32>,
        from: usize,
        ask: Vec<Vec<u32>>,
    ) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let scored = tokens.len().saturating_sub(from);
        if from == 0 || scored == 0 || scored > score::MAX_SCORED {
            return Err(SubmitError::Invalid(format!(
                "a scoring request scores 1 to {} tokens after at least one, not {scored} from {from}",
                score::MAX_SCORED
            )));
        }
        if ask.len() > scored || ask.iter().any(|a| a.len() > score::MAX_ASKED) {
            return Err(SubmitError::Invalid(format!("at most {} asked ids per scored token", score::MAX_ASKED)));
        }
        let params = SamplingParams { max_tokens: 0, ..Default::default() };
        self.enqueue(tokens, params, usize::MAX, true, Some(Scoring { from, ask }))
    }

    /// Stops at once without blocking: new requests are refused and every queued or running one ends with an
    /// error (a cancelled standby; whoever waits on its requests returns).
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Stops accepting requests and waits for the engine to finish the ones it has. Blocking.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
