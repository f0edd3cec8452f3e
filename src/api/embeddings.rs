//! POST /v1/embeddings in OpenAI's shape: `input` as a string, an array of strings, an array of token ids or an
//! array of such arrays; `encoding_format` float (default) or base64 (little-endian f32, what the official SDK
//! asks for); `usage` counts the tokens. Every input is checked before any is computed: empty inputs, inputs
//! longer than the model takes and token ids outside its vocabulary are a 400 naming the input.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::{AppState, JsonBody, ServedBy};
use crate::backend::Backend;
use crate::batcher::InferError;
use crate::models::embedding::Embedder;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// How many embeddings the request asks for (checked against the per-request limit before any work).
    fn count(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Ids(_) => 1,
            EmbeddingInput::Texts(v) => v.len(),
            EmbeddingInput::IdLists(v) => v.len(),
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::Overloaded(_) => ApiError::overloaded(e.to_string()),
            InferError::Stopped => ApiError::not_ready(),
            InferError::Failed(cause) => ApiError::internal(cause),
        }
    }
}

/// The input as token id lists, validated against the model; texts over `max_bytes` are refused untokenized.
fn tokenize(model: &Embedder, input: EmbeddingInput, max_bytes: usize) -> Result<Vec<Vec<u32>>, ApiError> {
    let ids: Vec<Vec<u32>> = match input {
        EmbeddingInput::Text(t) => vec![text_ids(model, 0, &t, max_bytes)?],
        EmbeddingInput::Texts(v) => {
            check_count(v.len())?;
            v.iter().enumerate().map(|(i, t)| text_ids(model, i, t, max_bytes)).collect::<Result<_, _>>()?
        }
        EmbeddingInput::Ids(ids) => vec![ids],
        EmbeddingInput::IdLists(v) => {
            check_count(v.len())?;
            v
        }
    };
    let vocab = model.vocab_size() as u32;
    for (i, x) in ids.iter().enumerate() {
        if x.is_empty() {
            return Err(ApiError::invalid("input", format!("input[{i}] is empty")));
        }
        if x.len() > model.max_tokens {
            return Err(ApiError::invalid(
                "input",
                format!("input[{i}] has {} tokens; this model takes at most {}", x.len(), model.max_tokens),
            )
            .with_code("context_length_exceeded"));
        }
        if let Some(bad) = x.iter().find(|&&t| t >= vocab) {
            return Err(ApiError::invalid(
                "input",
                format!("input[{i}]: token id {bad} is outside the vocabulary (size {vocab})"),
            ));
        }
    }
    Ok(ids)
}

fn check_count(n: usize) -> Result<(), ApiError> {
    match n {
        0 => Err(ApiError::invalid("input", "input must not be an empty array")),
        n if n > MAX_INPUTS => Err(ApiError::invalid("input", format!("{n} inputs; at most {MAX_INPUTS} per request"))),
        _ => Ok(()),
    }
}

fn text_ids(model: &Embedder, i: usize, text: &str, max_bytes: usize) -> Result<Vec<u32>, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid("input", format!("input[{i}] is an empty string")));
    }
    if text.len() > max_bytes {
        return Err(ApiError::invalid("input", format!("input[{i}] is {} bytes; at most {max_bytes}", text.len()))
            .with_code("context_length_exceeded"));
    }
    Ok(model.tokenize(text)?)
}

fn encode(v: &[f32], base64: bool) -> Value {
    if base64 {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(v)
    }
}

pub async fn embeddings(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let lease = state.router.lease().ok_or_else(ApiError::not_ready)?;
    if !state.router.accepts(&req.model, &lease) {
        return Err(ApiError::model_not_found(&req.model));
    }
    let Backend::Embed(batcher) = &lease.backend else {
        return Err(ApiError::wrong_kind(&lease.identity.name, lease.identity.kind, "/v1/embeddings"));
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be float or base64, not {other:?}"),
            ))
        }
    };
    let model: Arc<Embedder> = batcher.model().clone();
    if let Some(d) = req.dimensions.filter(|&d| d != model.dimensions) {
        return Err(ApiError::invalid(
            "dimensions",
            format!("this model's embeddings have {} dimensions; it cannot return {d}", model.dimensions),
        ));
    }
    if state.log_prompts {
        tracing::info!(input = ?req.input, "embedding request");
    }
    let input = req.input;
    // Queue space first, then tokenizing (on the bounded pool): a request the queue cannot take costs nothing.
    check_count(input.count())?;
    let held = batcher.reserve(input.count())?;
    let limit = state.limits.max_prompt_bytes;
    let ids = state.cpu.run(move || tokenize(&model, input, limit)).await??;
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let vectors = batcher.infer_reserved(held, ids).await?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": encode(v, base64)}))
        .collect();
    let body = json!({"object": "list", "data": data, "model": state.served_name(&lease),
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    let mut resp = Json(body).into_response();
    resp.extensions_mut().insert(ServedBy::of(&lease));
    Ok(resp)
}
