//! The engine thread: drains new requests, asks the scheduler for a plan, runs one batched forward pass,
//! samples, and streams tokens back. It owns the KV pool and every sequence; nothing else touches them.

use super::kv_cache::KvPool;
use super::request::GenRequest;
use super::scheduler::{self, Decision, Limits, SeqView};
use super::score::{self, Row};
use super::sequence::Sequence;
use crate::error::Result;
use crate::models::llama::StepInput;
use crate::models::LanguageModel;
use crate::ops::paged_attention::AttnMeta;
use crate::telemetry::EngineMetrics;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

pub(super) struct Worker {
    pub model: Arc<LanguageModel>,
    pub pool: KvPool,
    pub rx: Receiver<GenRequest>,
    /// Requests submitted but not yet admitted (shared with the handle, which refuses past the limit).
    pub pending: Arc<AtomicUsize>,
    /// Set by `Engine::abort`: fail everything held, then stop once the handle's sender is gone.
    pub aborted: Arc<AtomicBool>,
    pub limits: Limits,
    pub metrics: EngineMetrics,
    pub waiting: VecDeque<Queued>,
    pub running: Vec<Sequence>,
    /// CPU models: this engine's own compute threads (as many as rayon's global pool has). The forward pass
    /// runs on one of them, so each matmul's parallel loop starts inside the pool instead of waking it from
    /// the engine thread (a wake-up per matmul, ~120 per step), and another slot's engine never queues behind
    /// this one's work.
    pub cpu_pool: Option<rayon::ThreadPool>,
}

/// A waiting sequence; `fresh` is false for a preempted one (it no longer counts as pending).
pub(super) struct Queued {
    seq: Sequence,
    fresh: bool,
}

impl Worker {
    pub fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(r) => self.enqueue(r),
                    Err(_) => break, // every handle is gone and no work is left
                }
            }
            while let Ok(r) = self.rx.try_recv() {
                self.enqueue(r);
            }
            if self.aborted.load(Ordering::Acquire) {
                self.fail_all("the model version was stopped (its operation was cancelled or timed out)");
                continue;
            }
            self.drop_cancelled();
            let err = match crate::error::catching("running an engine step", || self.step()) {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(panic) => Some(panic),
            };
            if let Some(e) = err {
                tracing::error!(error = %e, "engine step failed; failing the running batch");
                for seq in self.running.drain(..) {
                    seq.send_error("the model failed to run this batch");
                }
            }
            self.publish_gauges();
        }
        tracing::info!("engine stopped");
    }

    /// Ends every waiting and running sequence with `why` (their KV blocks return to the pool on drop).
    fn fail_all(&mut self, why: &str) {
        let fresh = self.waiting.iter().filter(|q| q.fresh).count();
        self.pending.fetch_sub(fresh, Ordering::AcqRel);
        for q in self.waiting.drain(..) {
            q.seq.send_error(why);
        }
        for s in self.running.drain(..) {
            s.send_error(why);
        }
    }

    fn enqueue(&mut self, req: GenRequest) {
        let seq = Sequence::new(req, self.pool.alloc.table(), &self.model.tokenizer.eos_ids);
        self.waiting.push_back(Queued { seq, fresh: true });
    }

    /// Frees the sequences whose clients went away, at the latest one step after they left.
    fn drop_cancelled(&mut self) {
        let mut fresh_dropped = 0;
        self.waiting.retain(|q| {
            let keep = !q.seq.cancelled();
            fresh_dropped += usize::from(!keep && q.fresh);
            keep
        });
        self.pending.fetch_sub(fresh_dropped, Ordering::AcqRel);
        self.running.retain(|s| !s.cancelled());
    }

    fn step(&mut self) -> Result<()> {
        let view = |s: &Sequence| SeqView {
            cached: s.cached,
            total: s.tokens.len(),
            blocks: s.blocks.len(),
            freeable: s.blocks.exclusive(),
        };
        let running: Vec<SeqView> = self.running.iter().map(view).collect();
        // Only the first `max_seqs` can be admitted this step; each is seen with the prefix the cache holds.
        let waiting: Vec<SeqView> = (self.waiting.iter_mut().take(self.limits.max_seqs))
            .map(|q| {
                let (cached, held) = q.seq.peek_prefix();
                SeqView { cached, total: q.seq.tokens.len(), blocks: held, freeable: 0 }
            })
            .collect();
        let plan = scheduler::plan(&running, &waiting, self.pool.alloc.free_blocks(), self.limits);
        let mut batch: Vec<(Sequence, usize)> = Vec::with_capacity(running.len() + plan.admit.len());
        let mut preempted = vec![];
        for (mut seq, d) in self.running.drain(..).zip(plan.running) {
            match d {
                Decision::Run(n) => batch.push((seq, n)),
                Decision::Skip => batch.push((seq, 0)),
                Decision::Preempt => {
                    seq.preempt();
                    self.metrics.preemptions.inc();
                    preempted.push(seq);
                }
            }
        }
        for n in plan.admit {
            let Some(mut q) = self.waiting.pop_front() else {
                break;
            };
            let reused = q.seq.adopt_prefix();
            if !q.seq.blocks.reserve(q.seq.tokens.len() + 1) {
                q.seq.preempt(); // gives the adopted prefix back
                self.waiting.push_front(q);
                break;
            }
            if q.fresh {
                self.pending.fetch_sub(1, Ordering::AcqRel);
            }
            if q.seq.first_scheduled.is_none() {
                q.seq.first_scheduled = Some(Instant::now());
                q.seq.cached_prompt = Some(reused.min(q.seq.prompt_len));
                if !q.seq.internal {
                    self.metrics.queue_time.observe(q.seq.arrived.elapsed().as_secs_f64());
                    self.metrics.prompt_tokens.inc_by(q.seq.prompt_len as u64);
                    self.metrics.prefix_hit_tokens.inc_by(reused.min(q.seq.prompt_len) as u64);
                }
            }
            let n = n.min(q.seq.tokens.len() - q.seq.cached);
            batch.push((q.seq, n));
        }
        let batch = self.grow(batch, &mut preempted);
        for seq in preempted.into_iter().rev() {
            self.waiting.push_front(Queued { seq, fresh: false });
        }
        self.execute(batch)
    }

    /// Grows every table to hold its step's tokens. The plan counted blocks, but a prefix shared between
    /// sequences frees nothing when one of them is preempted: a sequence the pool cannot grow now is preempted
    /// here (newest first) rather than failing the batch.
    fn grow(&mut self, batch: Vec<(Sequence, usize)>, preempted: &mut Vec<Sequence>) -> Vec<(Sequence, usize)> {
        let mut batch = batch;
        let mut victims = vec![];
        let mut i = 0;
        while let Some((seq, n)) = batch.get_mut(i) {
            if *n == 0 || seq.blocks.reserve(seq.cached + *n) {
                i += 1;
                continue;
            }
            // Take the newest sequence (the last of the batch; possibly this one) out, and try again.
            let Some((mut victim, _)) = batch.pop() else { break };
            victim.preempt();
            self.metrics.preemptions.inc();
            victims.insert(0, victim);
        }
        preempted.extend(victims);
        batch
    }

    /// Runs the forward pass for the scheduled tokens and samples where a sequence reached its end (or scores
    /// the tokens a scoring sequence read).
    fn execute(&mut self, mut batch: Vec<(Sequence, usize)>) -> Result<()> {
        let mut meta = AttnMeta::new(self.pool.alloc.block_size);
        let mut tokens = vec![];
        let (mut rows, mut uses) = (vec![], vec![]);
        for (i, (seq, n)) in batch.iter_mut().enumerate() {
            if *n == 0 {
                continue;
            }
            if !seq.blocks.reserve(seq.cached + *n) {
                return Err(crate::error::TealError::KvCacheFull("the pool ran out mid-step".into()));
            }
            let start = tokens.len();
            let positions = seq.cached..seq.cached + *n;
            tokens.extend_from_slice(&seq.tokens[positions.clone()]);
            meta.push_sequence(positions, |p| seq.blocks.slot(p), seq.blocks.ids());
            if let Some(sc) = &seq.score {
                for p in score::scored_positions(sc.from, seq.tokens.len(), seq.cached, *n) {
                    rows.push((start + p - seq.cached) as u32);
                    uses.push(Row::Score(i, p));
                }
            } else if seq.cached + *n == seq.tokens.len() {
                rows.push(tokens.len() as u32 - 1);
                uses.push(Row::Sample(i));
            }
        }
        if tokens.is_empty() {
            self.running = batch.into_iter().map(|(s, _)| s).collect();
            return Ok(());
        }
        self.metrics.batch_size.observe(input_seqs(&batch) as f64);
        let input = StepInput { tokens, meta: Arc::new(meta), logits_rows: rows };
        let run = || self.model.llama.forward(&input, &self.pool).and_then(|t| Ok(t.to_vec2::<f32>()?));
        let logits = match self.cpu_pool.as_ref().map_or_else(run, |p| p.install(run)) {
            Ok(l) => l,
            Err(e) => {
                for (seq, _) in &batch {
                    seq.send_error("the model failed to run this batch");
                }
                return Err(e);
            }
        };
        for (seq, n) in batch.iter_mut() {
            seq.cached += *n;
            seq.blocks.publish(&seq.tokens, seq.cached);
        }
        let mut finished = vec![false; batch.len()];
        for (mut row, use_) in logits.into_iter().zip(uses) {
            let (Row::Sample(i) | Row::Score(i, _)) = use_;
            if finished[i] {
                continue;
            }
            let seq = &mut batch[i].0;
            if row.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
                // A broken model (or a numeric bug) must fail the request, not sample garbage from it.
                self.metrics.nonfinite.inc();
                seq.send_error("the model produced NaN or infinite logits");
                finished[i] = true;
                continue;
            }
            match use_ {
                Row::Score(_, p) => seq.record_score(p, &row),
                Row::Sample(_) => finished[i] = self.sample(seq, &mut row),
            }
        }
        for ((seq, _), done) in batch.iter_mut().zip(finished.iter_mut()) {
            if seq.score.is_some() && !*done && seq.cached == seq.tokens.len() {
                seq.finish_scoring();
                *done = true;
            }
        }
        self.running = batch.into_iter().zip(finished).filter(|(_, f)| !f).map(|((s, _), _)| s).collect();
        Ok(())
    }

    /// Samples `seq`'s next token from its logits row and records the client metrics; true when it finished.
    fn sample(&self, seq: &mut Sequence, row: &mut [f32]) -> bool {
        // Counted before `sample` hands the token to the client: a client that has its whole answer must see it
        // in /metrics.
        if !seq.internal {
            self.metrics.generation_tokens.inc();
        }
        let step = seq.sample(row, &self.model.tokenizer, self.model.max_context);
        if seq.internal {
            return step.finished.is_some();
        }
        if let Some(t) = step.first_token_latency {
            self.metrics.ttft.observe(t);
        }
        if let Some(t) = step.inter_token {
            self.metrics.itl.observe(t);
        }
        if step.finished.is_some() {
            self.metrics.e2e.observe(seq.arrived.elapsed().as_secs_f64());
        }
        step.finished.is_some()
    }

    fn publish_gauges(&self) {
        self.metrics.running_requests.set(self.running.len() as i64);
        self.metrics.waiting.set(self.waiting.len() as i64);
        self.metrics.kv_usage.set(self.pool.usage());
        self.metrics.prefix_cached_blocks.set(self.pool.alloc.cached_blocks() as i64);
        let prompt = self.metrics.prompt_tokens.get();
        if prompt > 0 {
            self.metrics.prefix_hit_ratio.set(self.metrics.prefix_hit_tokens.get() as f64 / prompt as f64);
        }
    }
}

fn input_seqs(batch: &[(Sequence, usize)]) -> usize {
    batch.iter().filter(|(_, n)| *n > 0).count()
}
