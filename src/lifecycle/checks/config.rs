//! What warm-up and the gates are asked to do: the `[warmup]` and `[gates.*]` sections of a model's teal.toml,
//! merged with a load request's overrides (spec.rs), each count capped so a request cannot ask for unbounded work.
//! The same settings serve every model kind; the kind decides what a probe request is (checks/llm.rs,
//! checks/batched.rs).

use crate::models::chat_template::ChatMessage;
use serde::{Deserialize, Serialize};

/// A prompt as gates and warm-up write it: raw text (completion) or chat messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProbePrompt {
    Text(String),
    Chat {
        messages: Vec<ChatMessage>,
    },
    /// An instruction: a user message through the chat template when the model has one, else raw text
    /// (teal's built-in prompts; an instruct model given raw text may rightly answer with nothing).
    #[serde(skip)]
    Instruction(String),
}

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
    /// Prompts read whole at the end of warm-up and left in the slot's prefix cache (a system prompt, a shared
    /// instruction): the first requests after a flip that start with them skip that prefill.
    pub cache_prompts: Vec<ProbePrompt>,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        WarmupConfig {
            enabled: true,
            prompts: vec![],
            batch_sizes: vec![],
            max_tokens: 4,
            prefill_tokens: None,
            cache_prompts: vec![],
        }
    }
}

impl WarmupConfig {
    /// Caps, so a load request cannot make warm-up run unbounded work (the stage timeout is the backstop).
    pub fn validate(&self) -> Result<(), String> {
        crate::lifecycle::caps::cap("warmup.prompts", self.prompts.len(), 64)?;
        crate::lifecycle::caps::cap("warmup.cache_prompts", self.cache_prompts.len(), 64)?;
        crate::lifecycle::caps::cap("warmup.batch_sizes", self.batch_sizes.len(), 32)?;
        crate::lifecycle::caps::cap("warmup.batch_sizes[]", self.batch_sizes.iter().copied().max().unwrap_or(0), 4096)?;
        crate::lifecycle::caps::cap("warmup.max_tokens", self.max_tokens, 4096)?;
        crate::lifecycle::caps::cap("warmup.prefill_tokens", self.prefill_tokens.unwrap_or(0), 1 << 20)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatesConfig {
    pub health: HealthGate,
    pub golden: GoldenGate,
    pub smoke: SmokeGate,
    pub latency: LatencyGate,
    pub agreement: AgreementGate,
    /// Image classifiers: images with their expected top-1 label (see batch_checks.rs).
    pub golden_images: Vec<GoldenImage>,
    /// Embedding models: sentence pairs with the cosine range they must fall in.
    pub golden_pairs: Vec<GoldenPair>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthGate {
    pub enabled: bool,
}

impl Default for HealthGate {
    fn default() -> Self {
        HealthGate { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoldenGate {
    pub enabled: bool,
    /// Share of cases that must pass.
    pub threshold: f64,
    pub max_tokens: usize,
    pub cases: Vec<GoldenCase>,
}

impl Default for GoldenGate {
    fn default() -> Self {
        GoldenGate { enabled: true, threshold: 1.0, max_tokens: 16, cases: vec![] }
    }
}

/// One golden prompt (`prompt` text or chat `messages`) and what its greedy output must be.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoldenCase {
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: Option<usize>,
    /// The whole generated text.
    pub expect_text: Option<String>,
    /// Substrings the generated text must contain.
    pub expect_contains: Vec<String>,
    /// The first generated token ids.
    pub expect_tokens: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmokeGate {
    pub enabled: bool,
    pub requests: usize,
    pub concurrency: usize,
    pub max_tokens: usize,
    pub temperature: f32,
}

impl Default for SmokeGate {
    fn default() -> Self {
        SmokeGate { enabled: true, requests: 8, concurrency: 4, max_tokens: 16, temperature: 0.8 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyGate {
    pub enabled: bool,
    pub requests: usize,
    pub concurrency: usize,
    pub max_tokens: usize,
    /// Streaming kinds (LLMs): p99 time to first token and inter-token latency.
    pub ttft_p99_ms: f64,
    pub itl_p99_ms: f64,
    /// One-shot kinds (embeddings, images): p99 time of a whole request.
    pub request_p99_ms: f64,
    /// Standby p99s may exceed the live slot's by at most this many percent (compared only when set).
    pub max_regression_pct: Option<f64>,
}

impl Default for LatencyGate {
    fn default() -> Self {
        LatencyGate {
            enabled: false,
            requests: 16,
            concurrency: 4,
            max_tokens: 16,
            ttft_p99_ms: 2000.0,
            itl_p99_ms: 500.0,
            request_p99_ms: 2000.0,
            max_regression_pct: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgreementGate {
    pub enabled: bool,
    pub max_tokens: usize,
    /// Least share of prompts with identical greedy text; None reports without failing.
    pub threshold: Option<f64>,
}

impl Default for AgreementGate {
    fn default() -> Self {
        AgreementGate { enabled: true, max_tokens: 16, threshold: None }
    }
}

impl GatesConfig {
    /// Caps on every count and size a load request can set, so a gate cannot be asked for unbounded work (the
    /// stage timeout is the backstop).
    pub fn validate(&self) -> Result<(), String> {
        use crate::lifecycle::caps::cap;
        const TOKENS: usize = 4096;
        cap("golden.cases", self.golden.cases.len(), 1000)?;
        cap("golden.max_tokens", self.golden.max_tokens, TOKENS)?;
        for c in &self.golden.cases {
            cap("golden.cases[].max_tokens", c.max_tokens.unwrap_or(0), TOKENS)?;
            cap("golden.cases[].expect_tokens", c.expect_tokens.as_ref().map_or(0, Vec::len), TOKENS)?;
            cap("golden.cases[].messages", c.messages.as_ref().map_or(0, Vec::len), 256)?;
        }
        cap("smoke.requests", self.smoke.requests, 10_000)?;
        cap("smoke.concurrency", self.smoke.concurrency, 256)?;
        cap("smoke.max_tokens", self.smoke.max_tokens, TOKENS)?;
        cap("latency.requests", self.latency.requests, 10_000)?;
        cap("latency.concurrency", self.latency.concurrency, 256)?;
        cap("latency.max_tokens", self.latency.max_tokens, TOKENS)?;
        cap("agreement.max_tokens", self.agreement.max_tokens, TOKENS)?;
        cap("golden_images", self.golden_images.len(), 256)?;
        cap("golden_pairs", self.golden_pairs.len(), 1000)?;
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        let temp = self.smoke.temperature;
        if !unit(self.golden.threshold) || !self.agreement.threshold.is_none_or(unit) || !(0.0..=2.0).contains(&temp) {
            return Err("gates: thresholds must be within 0..=1 and smoke.temperature within 0..=2".into());
        }
        Ok(())
    }
}

/// An image file (inside the model directory) and the label its top-1 must be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenImage {
    pub image: String,
    pub top1: String,
}

/// Two sentences and the range their embeddings' cosine similarity must fall in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenPair {
    pub a: String,
    pub b: String,
    #[serde(default = "minus_one")]
    pub min: f64,
    #[serde(default = "one")]
    pub max: f64,
}

fn minus_one() -> f64 {
    -1.0
}

fn one() -> f64 {
    1.0
}
