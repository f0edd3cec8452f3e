//! Turning a request's prompt or messages into token ids, with the cost bounded before it is paid: the text's
//! size is checked first (against the server's `--max-prompt-bytes` and against what could possibly fit the
//! model's longest request), then the chat template renders within its fuel and output budget and the
//! tokenizer runs, both on the bounded CPU pool (429 when it is saturated).

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::limits::PoolError;
use super::openai_types::Prompt;
use super::AppState;
use crate::engine::Engine;
use crate::models::chat_template::ChatMessage;
use crate::models::LanguageModel;
use std::sync::Arc;

/// Normalizers (NFKC) can shrink text, so the token-based bound allows this much slack.
const NORMALIZE_SLACK: usize = 4;

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Saturated(_) => ApiError::overloaded(e.to_string()),
            PoolError::Failed => ApiError::internal(e),
        }
    }
}

/// The most prompt text this engine could take: the server's limit, and the longest request it serves times
/// the longest token (with slack): anything longer cannot fit once tokenized.
pub fn max_prompt_bytes(state: &AppState, engine: &Engine) -> usize {
    let tokens = engine.max_request_tokens();
    let per_token = engine.model().tokenizer.max_token_bytes;
    state.limits.max_prompt_bytes.min(tokens.saturating_mul(per_token).saturating_mul(NORMALIZE_SLACK))
}

fn too_long(param: &'static str, bytes: usize, limit: usize) -> ApiError {
    ApiError {
        code: Some("context_length_exceeded"),
        ..ApiError::invalid(
            param,
            format!("the prompt is {bytes} bytes of text; this model takes at most {limit} bytes in one request"),
        )
    }
}

/// Renders the conversation with the model's own chat template and tokenizes it, after checking its size.
/// `tools` is what the template's `tools` variable gets (None for no tools, or a template that knows none).
pub async fn chat_tokens(
    state: &AppState,
    engine: &Engine,
    messages: Vec<ChatMessage>,
    tools: Option<serde_json::Value>,
) -> Result<Vec<u32>, ApiError> {
    let limit = max_prompt_bytes(state, engine);
    let bytes: usize = messages.iter().map(|m| m.content.len() + m.role.len()).sum();
    if bytes > limit {
        return Err(too_long("messages", bytes, limit));
    }
    let model: Arc<LanguageModel> = engine.model().clone();
    // The template adds its own markup: allow it room, but not without bound.
    let rendered_cap = limit.saturating_mul(2).saturating_add(64 << 10);
    state
        .cpu
        .run(move || -> Result<Vec<u32>, ApiError> {
            let tmpl = model
                .chat_template
                .as_ref()
                .ok_or_else(|| ApiError::invalid("messages", "this model has no chat template; use /v1/completions"))?;
            let tok = &model.tokenizer;
            let text =
                tmpl.render_with_tools(&messages, tools.as_ref(), &tok.bos_token, &tok.eos_token, rendered_cap)?;
            Ok(tok.encode(&text, false)?)
        })
        .await?
}

/// A completion request's prompt as ids (text is tokenized with the model's BOS rule), checked against the
/// size limit and the vocabulary.
pub async fn completion_tokens(state: &AppState, engine: &Engine, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
    let limit = max_prompt_bytes(state, engine);
    let vocab = engine.model().llama.config().vocab_size as u32;
    let text = match prompt {
        Prompt::Text(t) => t,
        Prompt::Texts(v) if v.len() == 1 => v.into_iter().next().unwrap_or_default(),
        Prompt::Ids(ids) => return checked_ids(ids, vocab, engine.max_request_tokens()),
        Prompt::IdLists(v) if v.len() == 1 => {
            return checked_ids(v.into_iter().next().unwrap_or_default(), vocab, engine.max_request_tokens())
        }
        _ => return Err(ApiError::invalid("prompt", "only one prompt per request is supported")),
    };
    if text.len() > limit {
        return Err(too_long("prompt", text.len(), limit));
    }
    let model: Arc<LanguageModel> = engine.model().clone();
    let ids = state.cpu.run(move || model.tokenizer.encode(&text, true)).await??;
    checked_ids(ids, vocab, usize::MAX)
}

fn checked_ids(ids: Vec<u32>, vocab: u32, max: usize) -> Result<Vec<u32>, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    if ids.len() > max {
        return Err(too_long("prompt", ids.len(), max));
    }
    if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
        return Err(ApiError::invalid("prompt", format!("token id {bad} is outside the vocabulary (size {vocab})")));
    }
    Ok(ids)
}
