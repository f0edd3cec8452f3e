//! Generation requests the lifecycle itself sends to an engine (warm-up, gates), timed the way a client would
//! see them. Blocking: runs on the loader thread, never on the async runtime.

use crate::engine::request::{Event, FinishReason, SamplingParams};
use crate::engine::Engine;
use crate::error::{Result, TealError};
use crate::models::chat_template::ChatMessage;
use serde::{Deserialize, Serialize};
use std::time::Instant;

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

impl ProbePrompt {
    /// Token ids for this model: chat prompts through its chat template.
    pub fn tokens(&self, engine: &Engine) -> Result<Vec<u32>> {
        let model = engine.model();
        match self {
            ProbePrompt::Text(t) => model.tokenizer.encode(t, true),
            ProbePrompt::Instruction(t) if model.chat_template.is_none() => model.tokenizer.encode(t, true),
            ProbePrompt::Instruction(t) => {
                let messages = vec![ChatMessage { role: "user".into(), content: t.clone() }];
                ProbePrompt::Chat { messages }.tokens(engine)
            }
            ProbePrompt::Chat { messages } => {
                let tmpl = model
                    .chat_template
                    .as_ref()
                    .ok_or_else(|| TealError::Template("the model has no chat template".into()))?;
                let text = tmpl.render(messages, &model.tokenizer.bos_token, &model.tokenizer.eos_token, 16 << 20)?;
                model.tokenizer.encode(&text, false)
            }
        }
    }
}

/// One finished probe request.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: Option<FinishReason>,
    pub completion_tokens: usize,
    /// Seconds from submit to the first token.
    pub ttft: f64,
    /// Seconds between consecutive tokens.
    pub itl: Vec<f64>,
    pub total: f64,
}

/// Greedy decoding of `max_tokens` tokens, eos ignored unless `stop_at_eos`.
pub fn greedy(max_tokens: usize, stop_at_eos: bool) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ignore_eos: !stop_at_eos, ..Default::default() }
}

/// Runs one request to its end.
pub fn run(engine: &Engine, prompt: Vec<u32>, params: SamplingParams) -> Result<ProbeResult> {
    let t0 = Instant::now();
    let mut rx = engine.submit_internal(prompt, params).map_err(|e| match e {
        crate::engine::SubmitError::TooLong { .. } => TealError::Request(e.to_string()),
        _ => TealError::EngineStopped,
    })?;
    let mut out = ProbeResult {
        text: String::new(),
        tokens: vec![],
        finish: None,
        completion_tokens: 0,
        ttft: 0.0,
        itl: vec![],
        total: 0.0,
    };
    let mut last: Option<Instant> = None;
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token { id, text, .. } => {
                let now = Instant::now();
                match last {
                    None => out.ttft = (now - t0).as_secs_f64(),
                    Some(prev) => out.itl.push((now - prev).as_secs_f64()),
                }
                last = Some(now);
                out.tokens.push(id);
                out.text.push_str(&text);
            }
            Event::Done { reason, completion_tokens, .. } => {
                out.finish = Some(reason);
                out.completion_tokens = completion_tokens;
                break;
            }
            Event::Error(e) => return Err(TealError::Device(e)),
        }
    }
    out.total = t0.elapsed().as_secs_f64();
    if out.finish.is_none() {
        return Err(TealError::EngineStopped);
    }
    Ok(out)
}

/// Runs the requests with `concurrency` in flight (each client on its own thread, so timings are what a client
/// sees); results in request order.
pub fn run_concurrent(
    engine: &Engine,
    requests: Vec<(Vec<u32>, SamplingParams)>,
    concurrency: usize,
) -> Vec<Result<ProbeResult>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let n = requests.len();
    type Queued = Mutex<Option<(Vec<u32>, SamplingParams)>>;
    let queue: Vec<Queued> = requests.into_iter().map(|r| Mutex::new(Some(r))).collect();
    let results: Vec<Mutex<Option<Result<ProbeResult>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let Some((prompt, params)) = queue[i].lock().ok().and_then(|mut q| q.take()) else { continue };
                let r = run(engine, prompt, params);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner().ok().flatten().unwrap_or_else(|| Err(TealError::Device("probe request did not run".into())))
        })
        .collect()
}

/// The `q` quantile (0..=1) of `v`, nearest rank; 0 for an empty slice.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
