//! The path every generation request shares after parsing: validate sampling parameters against the model's
//! limits, submit to the engine, then either collect the whole answer or stream it as SSE chunks. The
//! endpoint-specific JSON (chat vs. completions) is produced by a `Shape`.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::openai_types::{SamplingFields, Usage};
use crate::engine::request::{Event, FinishReason, SamplingParams, TokenLogprob};
use crate::net::shutdown::{Phase, ShutdownSignal};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use std::convert::Infallible;
use tokio::sync::mpsc::UnboundedReceiver;

/// One generated token as the HTTP layer reports it.
#[derive(Debug, Clone)]
pub struct TokenOut {
    pub id: u32,
    pub logprob: Option<TokenLogprob>,
}

/// A finished, non-streamed generation.
pub struct Collected {
    pub text: String,
    pub tokens: Vec<TokenOut>,
    pub reason: FinishReason,
    pub usage: Usage,
}

/// Turns the engine's events into one endpoint's JSON bodies.
pub trait Shape: Send + 'static {
    /// A chunk carrying new text and the tokens behind it (streaming).
    fn delta(&mut self, text: &str, tokens: &[TokenOut]) -> serde_json::Value;
    /// The chunk announcing the end (streaming).
    fn finish(&mut self, reason: FinishReason) -> serde_json::Value;
    /// The usage-only chunk (stream_options.include_usage).
    fn usage(&mut self, usage: Usage) -> serde_json::Value;
    /// An optional first chunk (chat sends the assistant role).
    fn start(&mut self) -> Option<serde_json::Value> {
        None
    }
    /// A chunk with no choices carrying a warning the client must see (a session served in fail-open mode).
    fn warning(&mut self, text: &str) -> serde_json::Value {
        serde_json::json!({"choices": [], "teal": {"session_warning": text}})
    }
}

/// The whole (non-streamed) body of an endpoint.
pub trait FullShape {
    fn full(self, done: Collected) -> serde_json::Value;
    /// Makes this shape answer as part of `first`'s response (its id and creation time), for `n` > 1.
    fn join(&mut self, first: &Self);
}

/// What bounds a request's sampling parameters: the model's longest request, its vocabulary, and the server's
/// limit on stop ids.
pub struct Bounds {
    pub max_total: usize,
    pub vocab: usize,
    pub max_stop_token_ids: usize,
}

fn range<T: PartialOrd + std::fmt::Display>(param: &'static str, v: Option<T>, lo: T, hi: T) -> Result<(), ApiError> {
    match v {
        Some(x) if !(x >= lo && x <= hi) => {
            Err(ApiError::invalid(param, format!("{param} must be between {lo} and {hi}")))
        }
        _ => Ok(()),
    }
}

/// Most choices (`n`) one request may ask for: each is a full generation.
pub const MAX_N: usize = 16;

/// Most entries in `logit_bias` (OpenAI documents no limit; each costs one add per sampled token).
pub const MAX_LOGIT_BIAS: usize = 1024;

/// OpenAI's `logit_bias`: token ids (as JSON object keys) to a bias from -100 to 100 added to their logits.
fn logit_bias(
    m: Option<&serde_json::Map<String, serde_json::Value>>,
    vocab: usize,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(m) = m else { return Ok(vec![]) };
    let bad = |msg: String| ApiError::invalid("logit_bias", msg);
    if m.len() > MAX_LOGIT_BIAS {
        return Err(bad(format!("{} entries; at most {MAX_LOGIT_BIAS} are accepted", m.len())));
    }
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in m {
        let id = k.parse::<u32>().ok().filter(|&id| (id as usize) < vocab).ok_or_else(|| {
            bad(format!("key {k:?} is not a token id of this model (0 to {})", vocab.saturating_sub(1)))
        })?;
        let b = v
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| bad(format!("the bias of token {id} must be a number from -100 to 100, not {v}")))?;
        out.push((id, b as f32));
    }
    Ok(out)
}

/// Validates the sampling fields and fits max_tokens to the context left after the prompt.
pub fn sampling_params(
    f: SamplingFields,
    logprobs: Option<usize>,
    prompt_len: usize,
    bounds: &Bounds,
) -> Result<SamplingParams, ApiError> {
    let max_total = bounds.max_total;
    range("temperature", f.temperature, 0.0, 2.0)?;
    range("top_p", f.top_p, f32::MIN_POSITIVE, 1.0)?;
    range("presence_penalty", f.presence_penalty, -2.0, 2.0)?;
    range("frequency_penalty", f.frequency_penalty, -2.0, 2.0)?;
    range("min_p", f.min_p, 0.0, 1.0)?;
    range("repetition_penalty", f.repetition_penalty, f32::MIN_POSITIVE, 10.0)?;
    if f.n.is_some_and(|n| !(1..=MAX_N as i64).contains(&n)) {
        return Err(ApiError::invalid("n", format!("n must be between 1 and {}", MAX_N)));
    }
    let logit_bias = logit_bias(f.logit_bias.as_ref(), bounds.vocab)?;
    if f.cache_salt.as_ref().is_some_and(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::invalid("cache_salt", "cache_salt must be 1 to 256 bytes"));
    }
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(_) => return Err(ApiError::invalid("top_k", "top_k must be -1 (off) or positive")),
    };
    let stop = f.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::invalid("stop", "stop takes up to 4 non-empty strings of at most 256 bytes"));
    }
    let stop_ids = f.stop_token_ids.unwrap_or_default();
    if stop_ids.len() > bounds.max_stop_token_ids {
        return Err(ApiError::invalid(
            "stop_token_ids",
            format!("{} stop_token_ids; at most {} are accepted", stop_ids.len(), bounds.max_stop_token_ids),
        ));
    }
    if let Some(bad) = stop_ids.iter().find(|&&id| id as usize >= bounds.vocab) {
        return Err(ApiError::invalid(
            "stop_token_ids",
            format!("stop token id {bad} is outside the vocabulary (size {})", bounds.vocab),
        ));
    }
    let max_tokens = match f.max_completion_tokens.or(f.max_tokens) {
        Some(m) if m < 1 => return Err(ApiError::invalid("max_tokens", "max_tokens must be at least 1")),
        Some(m) => m as usize,
        None => max_total.saturating_sub(prompt_len),
    };
    if prompt_len + max_tokens > max_total || max_tokens == 0 {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                "messages",
                format!(
                    "This model's maximum context length is {max_total} tokens. However, you requested {} tokens \
                     ({prompt_len} in the messages, {max_tokens} in the completion). Please reduce the length of \
                     the messages or completion.",
                    prompt_len + max_tokens
                ),
            )
        });
    }
    Ok(SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_p: f.top_p.unwrap_or(1.0),
        top_k,
        min_p: f.min_p.unwrap_or(0.0),
        seed: f.seed.map(|s| s as u64),
        max_tokens,
        stop,
        stop_token_ids: stop_ids,
        ignore_eos: f.ignore_eos,
        repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        cache_salt: f.cache_salt,
        logprobs,
        constraint: None,
    })
}

/// Waits for the whole answer.
pub async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let (mut text, mut tokens) = (String::new(), vec![]);
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { id, text: t, logprob } => {
                text.push_str(&t);
                tokens.push(TokenOut { id, logprob });
            }
            Event::Done { reason, prompt_tokens, completion_tokens, cached_tokens } => {
                let usage = Usage::generated(prompt_tokens, completion_tokens, cached_tokens);
                return Ok(Collected { text, tokens, reason, usage });
            }
            Event::Error(e) => return Err(ApiError::internal(e)),
            Event::Scored(_) => {}
        }
    }
    Err(ApiError::internal("engine dropped the request"))
}

pub(super) fn sse_json(v: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// Runs once the whole answer is known and before it is acknowledged (a session stores its turn); an error
/// replaces the final chunk; a warning (Some) must reach the client (a header, or a chunk before `[DONE]`).
pub type Finisher =
    Box<dyn FnOnce(String) -> futures::future::BoxFuture<'static, Result<Option<String>, ApiError>> + Send>;

/// Streams the answer as SSE, ending with `data: [DONE]`. Dropping the stream (client gone) drops the
/// receiver, and the engine frees the sequence at its next step. At the shutdown deadline a stream that is
/// still running ends with an error chunk and `[DONE]`.
pub fn stream(
    rx: UnboundedReceiver<Event>,
    mut shape: impl Shape,
    include_usage: bool,
    finisher: Option<Finisher>,
    shutdown: ShutdownSignal,
) -> Response {
    let s = async_stream::stream! {
        let mut rx = rx;
        let mut ended = false;
        let mut finisher = finisher;
        let mut full = String::new();
        if let Some(first) = shape.start() {
            yield sse_json(&first);
        }
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = shutdown.reached(Phase::Deadline) => {
                    let e = ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "service_unavailable",
                        "the server is shutting down; this response was cut short",
                    )
                    .with_code("shutting_down");
                    yield sse_json(&e.body());
                    ended = true;
                    break;
                }
            };
            let Some(ev) = ev else { break };
            match ev {
                Event::Token { id, text, logprob } => {
                    let has_lp = logprob.is_some();
                    full.push_str(&text);
                    if !text.is_empty() || has_lp {
                        yield sse_json(&shape.delta(&text, &[TokenOut { id, logprob }]));
                    }
                }
                Event::Done { reason, prompt_tokens, completion_tokens, cached_tokens } => {
                    let mut warning = None;
                    if let Some(f) = finisher.take() {
                        match f(std::mem::take(&mut full)).await {
                            Ok(w) => warning = w,
                            Err(e) => {
                                yield sse_json(&e.body());
                                ended = true;
                                break;
                            }
                        }
                    }
                    yield sse_json(&shape.finish(reason));
                    if include_usage {
                        yield sse_json(&shape.usage(Usage::generated(prompt_tokens, completion_tokens, cached_tokens)));
                    }
                    if let Some(w) = warning {
                        yield sse_json(&shape.warning(&w));
                    }
                    ended = true;
                    break;
                }
                Event::Error(e) => {
                    yield sse_json(&ApiError::internal(e).body());
                    ended = true;
                    break;
                }
                Event::Scored(_) => {}
            }
        }
        if !ended {
            // The engine went away without finishing this request: say so rather than end silently.
            yield sse_json(&ApiError::internal("engine dropped the request").body());
        }
        yield SseEvent::default().data("[DONE]");
    };
    sse_response(s)
}

pub(super) fn sse_response(s: impl Stream<Item = SseEvent> + Send + 'static) -> Response {
    use futures::StreamExt;
    Sse::new(s.map(Ok::<_, Infallible>)).keep_alive(KeepAlive::default()).into_response()
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    struct Plain;
    impl Shape for Plain {
        fn delta(&mut self, text: &str, _: &[TokenOut]) -> Value {
            json!({"text": text})
        }
        fn finish(&mut self, reason: FinishReason) -> Value {
            json!({"finish": reason.as_str()})
        }
        fn usage(&mut self, usage: Usage) -> Value {
            json!({"usage": usage})
        }
    }

    async fn body(resp: Response) -> String {
        String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_request_the_engine_drops_ends_with_an_error_chunk() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Event::Token { id: 1, text: "hi".into(), logprob: None }).unwrap();
        drop(tx);
        let text = body(stream(rx, Plain, false, None, ShutdownSignal::never())).await;
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.len(), 3, "{text}");
        assert!(data[1].contains("\"type\":\"server_error\""), "{text}");
        assert_eq!(data[2], "[DONE]");
    }

    #[tokio::test]
    async fn a_finished_request_streams_text_finish_usage_done() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Event::Token { id: 1, text: "a".into(), logprob: None }).unwrap();
        tx.send(Event::Token { id: 2, text: "b".into(), logprob: None }).unwrap();
        tx.send(Event::Done { reason: FinishReason::Stop, prompt_tokens: 2, completion_tokens: 1, cached_tokens: 0 })
            .unwrap();
        let text = body(stream(rx, Plain, true, None, ShutdownSignal::never())).await;
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(
            data,
            [
                r#"{"text":"a"}"#,
                r#"{"text":"b"}"#,
                r#"{"finish":"stop"}"#,
                r#"{"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":0}}}"#,
                "[DONE]"
            ]
        );
    }
}
