//! The chat completions body and its stream chunks: the assistant's message (text, or tool calls parsed out
//! of it when the request offered tools), logprobs, the finish reason and usage.

#![deny(clippy::indexing_slicing)]

use super::generate::{self, Collected, FullShape, Shape, TokenOut};
use super::openai_types::*;
use super::tool_stream::ToolStream;
use super::tools::{self, Format};
use crate::engine::request::FinishReason;
use crate::models::tokenizer::TextTokenizer;
use crate::models::LanguageModel;
use crate::router::SlotLease;
use serde_json::{json, Value};
use std::sync::Arc;

/// How an answer's tool calls are read: the model's call format, and whether the call was forced.
#[derive(Debug, Clone, Copy)]
pub struct ToolView {
    pub format: Format,
    pub forced: bool,
}

fn chat_logprobs(tok: &TextTokenizer, tokens: &[TokenOut]) -> ChatLogprobs {
    let entry = |id: u32, lp: f32| {
        let t = tok.token_text(id);
        TopLogprob { bytes: t.as_bytes().to_vec(), token: t, logprob: lp }
    };
    let content = tokens
        .iter()
        .filter_map(|t| {
            let lp = t.logprob.as_ref()?;
            let e = entry(t.id, lp.logprob);
            Some(ChatTokenLogprob {
                token: e.token,
                logprob: e.logprob,
                bytes: e.bytes,
                top_logprobs: lp.top.iter().map(|&(id, l)| entry(id, l)).collect(),
            })
        })
        .collect();
    ChatLogprobs { content }
}

pub struct ChatShape {
    id: String,
    created: u64,
    model: String,
    /// Held until the response ends: the slot this request started on.
    _lease: SlotLease,
    /// The leased model (its tokenizer renders logprobs).
    llm: Arc<LanguageModel>,
    logprobs: bool,
    /// Set when the answer may hold tool calls.
    tools: Option<ToolView>,
    stream: Option<ToolStream>,
}

impl ChatShape {
    pub fn new(model: String, lease: SlotLease, llm: Arc<LanguageModel>, logprobs: bool) -> Self {
        ChatShape {
            id: generate::new_id("chatcmpl"),
            created: generate::unix_now(),
            model,
            _lease: lease,
            llm,
            logprobs,
            tools: None,
            stream: None,
        }
    }

    /// Reads tool calls out of the answer.
    pub fn with_tools(mut self, tools: Option<ToolView>) -> Self {
        self.stream = tools.map(|t| ToolStream::new(t.format, t.forced));
        self.tools = tools;
        self
    }

    fn chunk(&self, choices: Value, usage: Option<Usage>) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "system_fingerprint": Value::Null, "choices": choices, "usage": usage})
    }
}

/// `tool_calls` when there are calls, else the plain reason.
fn reason_with(calls: &[tools::Call], reason: FinishReason) -> &'static str {
    if calls.is_empty() {
        reason.as_str()
    } else {
        "tool_calls"
    }
}

impl FullShape for ChatShape {
    fn join(&mut self, first: &Self) {
        (self.id, self.created) = (first.id.clone(), first.created);
    }

    fn full(self, done: Collected) -> Value {
        let logprobs = self.logprobs.then(|| chat_logprobs(&self.llm.tokenizer, &done.tokens));
        let (content, calls) = match self.tools {
            Some(t) => tools::split(t.format, &done.text),
            None => (done.text, vec![]),
        };
        let message = match calls.is_empty() {
            true => json!({"role": "assistant", "content": content}),
            false => {
                let content = (!content.is_empty()).then_some(content);
                json!({"role": "assistant", "content": content, "tool_calls": tools::calls_json(&calls)})
            }
        };
        json!({"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
               "system_fingerprint": Value::Null,
               "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                            "finish_reason": reason_with(&calls, done.reason)}],
               "usage": done.usage})
    }
}

impl Shape for ChatShape {
    fn start(&mut self) -> Option<Value> {
        Some(self.chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            None,
        ))
    }

    fn delta(&mut self, text: &str, tokens: &[TokenOut]) -> Value {
        let lp = self.logprobs.then(|| chat_logprobs(&self.llm.tokenizer, tokens));
        let text = match self.stream.as_mut() {
            Some(s) => s.push(text),
            None => text.to_string(),
        };
        self.chunk(json!([{"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]), None)
    }

    fn finish(&mut self, reason: FinishReason) -> Value {
        let Some(s) = self.stream.as_mut() else {
            return self
                .chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason.as_str()}]), None);
        };
        let (rest, calls) = s.finish();
        let mut delta = serde_json::Map::new();
        if !rest.is_empty() {
            delta.insert("content".into(), rest.into());
        }
        if !calls.is_empty() {
            let list: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({"index": i, "id": c.id, "type": "function",
                                     "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            delta.insert("tool_calls".into(), list.into());
        }
        let reason = reason_with(&calls, reason);
        self.chunk(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}]), None)
    }

    fn usage(&mut self, usage: Usage) -> Value {
        self.chunk(json!([]), Some(usage))
    }
}
