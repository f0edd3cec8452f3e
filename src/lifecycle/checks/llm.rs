//! The LLM as warm-up and the gates see it: probe requests are generation requests the lifecycle itself sends to
//! the engine (`submit_internal`: the same fit check as a client's, outside the client queue and metrics), timed
//! the way a client would see them. Blocking: runs on the loader thread, never on the async runtime.

use super::config::{GatesConfig, GoldenCase, ProbePrompt, WarmupConfig};
use super::subject::{run_concurrent, Golden, Purpose, Sample, Subject};
use crate::engine::request::{Event, FinishReason, SamplingParams};
use crate::engine::Engine;
use crate::error::{Result, TealError};
use crate::models::chat_template::ChatMessage;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Instant;

/// Prompts of teal's own for health, smoke, latency and agreement.
const BUILT_IN: [&str; 4] = [
    "Once upon a time",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Count from one to ten.",
];

/// Warm-up prompts when none are configured: a chat message and a text.
fn default_warm_prompts() -> Vec<ProbePrompt> {
    vec![
        ProbePrompt::Instruction("Tell me something about warm starts.".into()),
        ProbePrompt::Text("Once upon a time, in a quiet town by the sea,".into()),
    ]
}

/// Tokens of each warm-up batch request's prompt: enough to exercise prefill, short so a batch of 32 stays cheap.
const BATCH_PROMPT_TOKENS: usize = 8;

impl ProbePrompt {
    /// Token ids for this model: chat prompts through its chat template.
    pub fn tokens(&self, engine: &Engine) -> Result<Vec<u32>> {
        let model = engine.model();
        match self {
            ProbePrompt::Text(t) => model.tokenizer.encode(t, true),
            ProbePrompt::Instruction(t) if model.chat_template.is_none() => model.tokenizer.encode(t, true),
            ProbePrompt::Instruction(t) => {
                let messages = vec![ChatMessage { role: "user".into(), content: t.clone(), ..Default::default() }];
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

impl GoldenCase {
    fn probe_prompt(&self) -> Option<ProbePrompt> {
        match (&self.prompt, &self.messages) {
            (_, Some(m)) => Some(ProbePrompt::Chat { messages: m.clone() }),
            (Some(p), None) => Some(ProbePrompt::Text(p.clone())),
            (None, None) => None,
        }
    }

    /// Why `out` does not meet this case, or None.
    fn mismatch(&self, out: &Generated) -> Option<String> {
        if let Some(t) = &self.expect_text {
            if &out.text != t {
                return Some(format!("expected text {t:?}, got {:?}", out.text));
            }
        }
        if let Some(missing) = self.expect_contains.iter().find(|s| !out.text.contains(s.as_str())) {
            return Some(format!("expected {missing:?} in {:?}", out.text));
        }
        if let Some(ids) = &self.expect_tokens {
            if !out.tokens.starts_with(ids) {
                return Some(format!("expected tokens {ids:?}, got {:?}", out.tokens));
            }
        }
        None
    }
}

/// One finished generation as the lifecycle sees it.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish: Option<FinishReason>,
    pub completion_tokens: usize,
    pub sample: Sample,
}

/// Greedy decoding of `max_tokens` tokens, eos ignored unless `stop_at_eos`.
pub fn greedy(max_tokens: usize, stop_at_eos: bool) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ignore_eos: !stop_at_eos, ..Default::default() }
}

/// Runs one request to its end.
pub fn generate(engine: &Engine, prompt: Vec<u32>, params: SamplingParams) -> Result<Generated> {
    let t0 = Instant::now();
    let mut rx = engine.submit_internal(prompt, params).map_err(|e| match e {
        crate::engine::SubmitError::TooLong { .. } => TealError::Request(e.to_string()),
        _ => TealError::EngineStopped,
    })?;
    let mut out = Generated::default();
    let mut last: Option<Instant> = None;
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token { id, text, .. } => {
                let now = Instant::now();
                match last {
                    None => out.sample.first_ms = (now - t0).as_secs_f64() * 1e3,
                    Some(prev) => out.sample.gaps_ms.push((now - prev).as_secs_f64() * 1e3),
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
            Event::Scored(_) => {}
        }
    }
    out.sample.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    if out.finish.is_none() {
        return Err(TealError::EngineStopped);
    }
    Ok(out)
}

/// An LLM engine with the settings of its load.
pub struct LlmSubject<'a> {
    engine: &'a Engine,
    warm: &'a WarmupConfig,
    gates: &'a GatesConfig,
    /// The warm-up prompts that render and tokenize (computed on first use).
    warm_prompts: OnceLock<Vec<Vec<u32>>>,
    /// The golden prompts, then the built-in ones (smoke and agreement cycle through them).
    prompt_set: OnceLock<Vec<Vec<u32>>>,
}

impl<'a> LlmSubject<'a> {
    pub fn new(engine: &'a Engine, warm: &'a WarmupConfig, gates: &'a GatesConfig) -> Self {
        LlmSubject { engine, warm, gates, warm_prompts: OnceLock::new(), prompt_set: OnceLock::new() }
    }

    fn warm_prompts(&self) -> &[Vec<u32>] {
        self.warm_prompts.get_or_init(|| {
            let prompts = if self.warm.prompts.is_empty() { default_warm_prompts() } else { self.warm.prompts.clone() };
            // Prompts the model cannot render (a chat prompt on a model without a template) are skipped.
            prompts.iter().filter_map(|p| p.tokens(self.engine).ok()).filter(|t| !t.is_empty()).collect()
        })
    }

    fn prompt_set(&self) -> &[Vec<u32>] {
        self.prompt_set.get_or_init(|| {
            let mut v: Vec<ProbePrompt> = self.gates.golden.cases.iter().filter_map(GoldenCase::probe_prompt).collect();
            v.extend(BUILT_IN.iter().map(|p| ProbePrompt::Instruction((*p).into())));
            v.iter().filter_map(|p| p.tokens(self.engine).ok()).collect()
        })
    }

    /// The first warm-up prompt and the decode length every warm-up request uses.
    fn first_warm(&self) -> std::result::Result<(Vec<u32>, usize), String> {
        let first = self.warm_prompts().first().cloned().ok_or("warm-up: none of the prompts could be tokenized")?;
        let limit = self.engine.max_request_tokens();
        Ok((first.clone(), self.warm.max_tokens.clamp(1, limit.saturating_sub(first.len()).max(1))))
    }

    fn built_in(&self, max_tokens: usize, stop_at_eos: bool) -> std::result::Result<Generated, String> {
        let prompt = ProbePrompt::Instruction(BUILT_IN[0].into()).tokens(self.engine).map_err(|e| e.to_string())?;
        generate(self.engine, prompt, greedy(max_tokens, stop_at_eos)).map_err(|e| e.to_string())
    }

    fn smoke(&self, i: usize) -> std::result::Result<Sample, String> {
        let prompts = self.prompt_set();
        let prompt = prompts.get(i % prompts.len().max(1)).cloned().ok_or("no smoke prompt could be tokenized")?;
        let s = &self.gates.smoke;
        let params = SamplingParams {
            temperature: s.temperature,
            max_tokens: s.max_tokens.max(1),
            seed: Some(i as u64),
            ..Default::default()
        };
        let out = generate(self.engine, prompt, params).map_err(|e| e.to_string())?;
        let vocab = self.engine.model().llama.config().vocab_size as u32;
        let problem = if out.completion_tokens != out.tokens.len() {
            Some(format!("usage says {} tokens, {} were streamed", out.completion_tokens, out.tokens.len()))
        } else if out.tokens.iter().any(|&t| t >= vocab) {
            Some("a token id outside the vocabulary".to_string())
        } else if out.text.is_empty() {
            Some("empty output".to_string())
        } else {
            None
        };
        Ok(Sample { problem, ..out.sample })
    }
}

impl Subject for LlmSubject<'_> {
    fn streams(&self) -> bool {
        true
    }

    fn preload(&self) -> std::result::Result<Vec<String>, String> {
        if self.engine.model().chat_template.is_some() {
            // A template that cannot render one user message (it loops past its budget, raises, explodes) makes
            // the model useless for chat: fail the load with the template's reason rather than every request.
            let hello = vec![ChatMessage { role: "user".into(), content: "Hello".into(), ..Default::default() }];
            ProbePrompt::Chat { messages: hello }
                .tokens(self.engine)
                .map_err(|e| format!("the chat template cannot render a user message: {e}"))?;
        }
        // The grammar engine's view of the vocabulary, built here so that the first structured-output request
        // after a flip does not pay for it (a tokenizer that cannot be constrained only refuses such requests).
        let model = self.engine.model();
        if let Err(e) = model.tokenizer.grammar(model.llama.config().vocab_size) {
            tracing::info!(reason = %e, "constrained decoding is not available for this model");
        }
        crate::ops::preload(self.engine.model().llama.device()).map_err(|e| format!("loading teal's kernels: {e}"))
    }

    fn max_batch(&self) -> usize {
        self.engine.config().max_batch_size
    }

    fn request(&self, purpose: Purpose, i: usize) -> std::result::Result<Sample, String> {
        match purpose {
            Purpose::Warm => {
                let (first, max_tokens) = self.first_warm()?;
                generate(self.engine, first, greedy(max_tokens, false)).map(|o| o.sample).map_err(|e| e.to_string())
            }
            Purpose::Health => self.built_in(4, true).map(|o| o.sample),
            Purpose::Smoke => self.smoke(i),
            Purpose::Latency => self.built_in(self.gates.latency.max_tokens.max(2), false).map(|o| o.sample),
            Purpose::Agree => {
                let prompt = self.prompt_set().get(i).cloned().ok_or("no such agreement prompt")?;
                let out = generate(self.engine, prompt, greedy(self.gates.agreement.max_tokens.max(1), true))
                    .map_err(|e| e.to_string())?;
                Ok(Sample { answer: Some(out.text), ..out.sample })
            }
        }
    }

    fn batch(&self, size: usize) -> std::result::Result<usize, String> {
        let (_, max_tokens) = self.first_warm()?;
        let prompts = self.warm_prompts();
        let short = |j: usize| {
            let p = prompts.get(j % prompts.len().max(1)).cloned().unwrap_or_default();
            p.get(p.len().saturating_sub(BATCH_PROMPT_TOKENS)..).unwrap_or_default().to_vec()
        };
        for r in run_concurrent(size, size, &|j| {
            generate(self.engine, short(j), greedy(max_tokens, false)).map_err(|e| e.to_string())
        }) {
            r?;
        }
        Ok(size)
    }

    fn largest(&self, cfg: &WarmupConfig) -> std::result::Result<usize, String> {
        let (first, _) = self.first_warm()?;
        let want = cfg.prefill_tokens.unwrap_or(self.engine.config().max_step_tokens.min(256));
        let prefill = want.min(self.engine.max_request_tokens().saturating_sub(2)).max(1);
        let long: Vec<u32> = first.iter().copied().cycle().take(prefill).collect();
        generate(self.engine, long, greedy(2, false)).map_err(|e| e.to_string())?;
        Ok(prefill)
    }

    fn cache_prefixes(&self, prompts: &[ProbePrompt]) -> std::result::Result<usize, String> {
        let mut read = 0;
        for (i, p) in prompts.iter().enumerate() {
            let why = |e: TealError| format!("warm-up: cache prompt {i}: {e}");
            let tokens = p.tokens(self.engine).map_err(why)?;
            read += tokens.len();
            generate(self.engine, tokens, greedy(1, false)).map_err(why)?;
        }
        Ok(read)
    }

    fn golden(&self, cfg: &GatesConfig) -> Option<Golden> {
        let g = &cfg.golden;
        if g.cases.is_empty() {
            return None;
        }
        let mut cases = vec![];
        let mut failures = vec![];
        for (i, case) in g.cases.iter().enumerate() {
            let max = case.max_tokens.or(case.expect_tokens.as_ref().map(Vec::len)).unwrap_or(g.max_tokens).max(1);
            let out = case
                .probe_prompt()
                .ok_or_else(|| TealError::Config("a golden case needs prompt or messages".into()))
                .and_then(|p| p.tokens(self.engine))
                .and_then(|p| generate(self.engine, p, greedy(max, true)));
            let why = match &out {
                Ok(r) => case.mismatch(r),
                Err(e) => Some(format!("generation failed: {e}")),
            };
            let text = out.as_ref().map(|r| r.text.clone()).unwrap_or_default();
            cases.push(json!({"case": i, "passed": why.is_none(), "output": text, "reason": why}));
            failures.extend(why);
        }
        Some(Golden { checked: g.cases.len(), failures, details: json!({"cases": cases}) })
    }

    fn agreement_inputs(&self) -> usize {
        self.prompt_set().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(text: &str, tokens: Vec<u32>) -> Generated {
        Generated { text: text.into(), tokens, ..Default::default() }
    }

    #[test]
    fn golden_case_checks_text_substrings_and_tokens() {
        let c = GoldenCase { expect_text: Some("a b".into()), ..Default::default() };
        assert!(c.mismatch(&out("a b", vec![])).is_none());
        assert!(c.mismatch(&out("a c", vec![])).unwrap().contains("expected text"));
        let c =
            GoldenCase { expect_contains: vec!["Paris".into()], expect_tokens: Some(vec![1, 2]), ..Default::default() };
        assert!(c.mismatch(&out("It is Paris.", vec![1, 2, 3])).is_none());
        assert!(c.mismatch(&out("It is Rome.", vec![1, 2])).unwrap().contains("Paris"));
        assert!(c.mismatch(&out("Paris", vec![1, 3])).unwrap().contains("tokens"));
    }
}
