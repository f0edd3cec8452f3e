//! What a caller hands the engine (a tokenized prompt and sampling parameters) and what comes back over the
//! request's event channel (text deltas with their tokens, then one `Done`).

use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Extra ids that end generation, beside the model's eos ids.
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// HF-style: divides positive logits of already-seen tokens (prompt and output) by this, multiplies negative.
    pub repetition_penalty: f32,
    /// OpenAI-style, on output tokens: subtract `presence` once and `frequency * count`.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// `Some(n)`: report the chosen token's logprob and the `n` most likely alternatives.
    pub logprobs: Option<usize>,
    /// OpenAI's logit_bias: added to these tokens' logits before penalties and sampling (ids in the vocabulary).
    pub logit_bias: Vec<(u32, f32)>,
    /// vLLM's cache_salt: the request shares prefix-cache blocks only with requests of the same salt.
    pub cache_salt: Option<String>,
    /// Constrained decoding: a compiled grammar every token must follow (structured output, tool calls).
    pub constraint: Option<super::constraint::Prepared>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            max_tokens: 16,
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            logit_bias: vec![],
            cache_salt: None,
            constraint: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An eos/stop token, a stop string, or the end of the output's grammar.
    Stop,
    /// max_tokens or the context length.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// The most likely tokens at this position, best first.
    pub top: Vec<(u32, f32)>,
}

/// Teacher forcing: the prompt is read in prefill, nothing is generated, and every token from `from` on is
/// scored from the tokens before it (a rollout's shadow: the standby scores what the live version answered).
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    /// Index in the prompt of the first scored token (at least 1).
    pub from: usize,
    /// Per scored token, ids whose log-probabilities are wanted too (the other model's top choices).
    pub ask: Vec<Vec<u32>>,
}

/// What the model predicted for one scored token from the tokens before it (raw distribution, no sampling).
#[derive(Debug, Clone, PartialEq)]
pub struct PositionScore {
    /// The log-probability of the token actually there.
    pub logprob: f32,
    /// The model's own most likely token and its log-probability.
    pub top1: (u32, f32),
    /// The asked ids' log-probabilities (negative infinity for an id outside the vocabulary).
    pub asked: Vec<f32>,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// One generated token and the text it completed (may be empty: held back or an incomplete character;
    /// the last token before `Done` carries everything held back).
    Token { id: u32, text: String, logprob: Option<TokenLogprob> },
    /// The end (all text was sent in the tokens before it): why it ended and the token counts
    /// (`cached_tokens`: prompt tokens whose KV came from the prefix cache).
    Done { reason: FinishReason, prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize },
    /// A scoring request's result, one entry per scored token; `Done` follows.
    Scored(Vec<PositionScore>),
    /// The engine failed this request (the message is safe to show).
    Error(String),
}

pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
    /// Sent by teal itself (warm-up, gates): runs like any request but stays out of the client metrics.
    pub internal: bool,
    /// Score the prompt instead of generating.
    pub score: Option<Scoring>,
}
