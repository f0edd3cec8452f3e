//! Warm-up of a standby before it may go live: teal's own CUDA kernels loaded onto the slot's device (the driver
//! JIT-compiles their PTX here), one timed request while cold, then prefill and decode at every batch size the
//! scheduler will use and one full prefill chunk (so every kernel, custom and candle's, and every cuBLAS GEMM
//! shape of a decode step is launched once on the standby's own device), then the first request timed again.
//! Whatever a first request pays (first touches of weights and KV pages, allocator growth, thread spin-up, module
//! loads and cuBLAS heuristics) is paid here, before any user sees the slot.

use super::probe::{self, ProbePrompt};
use crate::engine::Engine;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmupConfig {
    pub enabled: bool,
    /// Prompts to warm with (cycled over the batch); default: a short text and a chat message.
    pub prompts: Vec<ProbePrompt>,
    /// Batch sizes to run; default: powers of two up to the engine's max batch size.
    pub batch_sizes: Vec<usize>,
    /// Tokens decoded by each warm-up request.
    pub max_tokens: usize,
    /// Length of the long-prefill request; default: the engine's max step tokens (one full prefill chunk),
    /// at most 256.
    pub prefill_tokens: Option<usize>,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        WarmupConfig { enabled: true, prompts: vec![], batch_sizes: vec![], max_tokens: 4, prefill_tokens: None }
    }
}

impl WarmupConfig {
    /// Caps, so a load request cannot make warm-up run unbounded work (the stage timeout is the backstop).
    pub fn validate(&self) -> Result<(), String> {
        super::caps::cap("warmup.prompts", self.prompts.len(), 64)?;
        super::caps::cap("warmup.batch_sizes", self.batch_sizes.len(), 32)?;
        super::caps::cap("warmup.batch_sizes[]", self.batch_sizes.iter().copied().max().unwrap_or(0), 4096)?;
        super::caps::cap("warmup.max_tokens", self.max_tokens, 4096)?;
        super::caps::cap("warmup.prefill_tokens", self.prefill_tokens.unwrap_or(0), 1 << 20)
    }
}

/// Latency of one request as a client sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub ttft_ms: f64,
    pub total_ms: f64,
}

impl From<&probe::ProbeResult> for Timing {
    fn from(r: &probe::ProbeResult) -> Self {
        Timing { ttft_ms: r.ttft * 1e3, total_ms: r.total * 1e3 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WarmupReport {
    pub enabled: bool,
    pub seconds: f64,
    pub requests: usize,
    pub batch_sizes: Vec<usize>,
    pub prefill_tokens: usize,
    /// teal's own kernels loaded onto the slot's device before the first request (empty on CPU).
    pub kernels_loaded: Vec<String>,
    /// The first request the slot ever served (before warm-up) and the same request after it.
    pub first_request_cold: Option<Timing>,
    pub first_request_warm: Option<Timing>,
}

impl WarmupReport {
    /// A report with nothing run yet.
    pub fn empty(enabled: bool) -> Self {
        WarmupReport {
            enabled,
            seconds: 0.0,
            requests: 0,
            batch_sizes: vec![],
            prefill_tokens: 0,
            kernels_loaded: vec![],
            first_request_cold: None,
            first_request_warm: None,
        }
    }
}

fn default_prompts() -> Vec<ProbePrompt> {
    vec![
        ProbePrompt::Instruction("Tell me something about warm starts.".into()),
        ProbePrompt::Text("Once upon a time, in a quiet town by the sea,".into()),
    ]
}

/// Tokens of each batch request's prompt: enough to exercise prefill, short so a batch of 32 stays cheap.
const BATCH_PROMPT_TOKENS: usize = 8;

/// The batch sizes warm-up runs when none are configured: 1, 2, 4, ... up to `max_batch` (and `max_batch`).
pub fn default_batch_sizes(max_batch: usize) -> Vec<usize> {
    let mut v: Vec<usize> =
        std::iter::successors(Some(1usize), |b| Some(b * 2)).take_while(|&b| b < max_batch).collect();
    v.push(max_batch.max(1));
    v
}

/// Runs the warm-up; `progress` gets the share done (0..=1).
pub fn run(engine: &Engine, cfg: &WarmupConfig, progress: &dyn Fn(f64)) -> Result<WarmupReport> {
    let t0 = Instant::now();
    let mut report = WarmupReport::empty(cfg.enabled);
    if !cfg.enabled {
        return Ok(report);
    }
    if engine.model().chat_template.is_some() {
        // A template that cannot render one user message (it loops past its budget, raises, explodes) makes the
        // model useless for chat: fail the load with the template's reason rather than every later request.
        let hello = vec![crate::models::chat_template::ChatMessage { role: "user".into(), content: "Hello".into() }];
        ProbePrompt::Chat { messages: hello }
            .tokens(engine)
            .map_err(|e| crate::error::TealError::Template(format!("cannot render a user message: {e}")))?;
    }
    let prompts = if cfg.prompts.is_empty() { default_prompts() } else { cfg.prompts.clone() };
    // Prompts the model cannot render (a chat prompt on a model without a template) are skipped, not fatal.
    let encoded: Vec<Vec<u32>> =
        prompts.iter().filter_map(|p| p.tokens(engine).ok()).filter(|t| !t.is_empty()).collect();
    let Some(first) = encoded.first().cloned() else {
        return Err(crate::error::TealError::Config("warm-up: none of the prompts could be tokenized".into()));
    };
    report.kernels_loaded = crate::kernels::preload(engine.model().llama.device())
        .map_err(|e| crate::error::TealError::Device(format!("loading teal's kernels: {e}")))?;
    let limit = engine.max_request_tokens();
    let max_tokens = cfg.max_tokens.clamp(1, limit.saturating_sub(first.len()).max(1));
    let cold = probe::run(engine, first.clone(), probe::greedy(max_tokens, false))?;
    report.first_request_cold = Some((&cold).into());
    report.requests += 1;
    let max_batch = engine.config().max_batch_size;
    let sizes: Vec<usize> =
        if cfg.batch_sizes.is_empty() { default_batch_sizes(max_batch) } else { cfg.batch_sizes.clone() };
    let sizes: Vec<usize> = sizes.into_iter().filter(|&b| b >= 1).map(|b| b.min(max_batch)).collect();
    let steps = sizes.len() + 2;
    for (i, &b) in sizes.iter().enumerate() {
        let reqs = (0..b)
            .map(|j| {
                let p = &encoded[j % encoded.len()];
                (p[p.len().saturating_sub(BATCH_PROMPT_TOKENS)..].to_vec(), probe::greedy(max_tokens, false))
            })
            .collect();
        for r in probe::run_concurrent(engine, reqs, b) {
            r?;
        }
        report.requests += b;
        progress((i + 1) as f64 / steps as f64);
    }
    report.batch_sizes = sizes;
    let want = cfg.prefill_tokens.unwrap_or(engine.config().max_step_tokens.min(256));
    let prefill = want.min(limit.saturating_sub(2)).max(1);
    let long: Vec<u32> = first.iter().copied().cycle().take(prefill).collect();
    probe::run(engine, long, probe::greedy(2, false))?;
    report.prefill_tokens = prefill;
    report.requests += 1;
    progress((steps - 1) as f64 / steps as f64);
    let warm = probe::run(engine, first, probe::greedy(max_tokens, false))?;
    report.first_request_warm = Some((&warm).into());
    report.requests += 1;
    report.seconds = t0.elapsed().as_secs_f64();
    progress(1.0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sizes_are_powers_of_two_up_to_the_max() {
        assert_eq!(default_batch_sizes(32), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(default_batch_sizes(6), vec![1, 2, 4, 6]);
        assert_eq!(default_batch_sizes(1), vec![1]);
    }

    #[test]
    fn config_reads_from_toml_and_refuses_unknown_keys() {
        let c: WarmupConfig = toml::from_str("batch_sizes = [1, 4]\nprompts = [\"Hi\"]").unwrap();
        assert!(c.enabled);
        assert_eq!(c.batch_sizes, vec![1, 4]);
        assert_eq!(c.prompts, vec![ProbePrompt::Text("Hi".into())]);
        assert!(toml::from_str::<WarmupConfig>("batchsizes = [1]").is_err());
    }
}
