//! OpenAI-compatible endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models.
//! Parsing and prompt building happen here (tokenization off the async runtime); generation is shared
//! (generate.rs).

#![deny(clippy::indexing_slicing)]

use super::body::RequestId;
use super::chat_shape::{ChatShape, ToolView};
use super::error::ApiError;
use super::generate::{self, Collected, FullShape, Shape, TokenOut};
use super::openai_types::*;
use super::shadow::ShadowPrompt;
use super::{choices, prompt, rollout_tap, sessions, structured, tools, unsupported, AppState, JsonBody};

/// Most messages in one chat request.
const MAX_MESSAGES: usize = 4096;
use crate::engine::request::FinishReason;
use crate::engine::Engine;
use crate::models::chat_template::ChatMessage;
use crate::models::grammar::Grammar;
use crate::models::LanguageModel;
use crate::router::SlotLease;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// The lease's LLM engine: a model of another kind (embeddings, images) does not serve generation routes.
fn llm<'a>(lease: &'a SlotLease, route: &str) -> Result<&'a Engine, ApiError> {
    lease.engine().ok_or_else(|| ApiError::wrong_kind(&lease.identity.name, lease.identity.kind, route))
}

/// Finishes a generation response: stream or JSON, with the slot headers of the lease that served it.
async fn respond(
    state: &AppState,
    served: super::ServedBy,
    rx: tokio::sync::mpsc::UnboundedReceiver<crate::engine::request::Event>,
    shape: impl Shape + FullShape,
    stream: Option<bool>,
    finisher: Option<generate::Finisher>,
) -> Result<Response, ApiError> {
    let mut resp = match stream {
        Some(include_usage) => generate::stream(rx, shape, include_usage, finisher, state.shutdown.clone()),
        None => {
            let done = generate::collect(rx).await?;
            let warning = match finisher {
                Some(f) => f(done.text.clone()).await?,
                None => None,
            };
            let mut resp = Json(shape.full(done)).into_response();
            if let Some(w) = warning {
                sessions::warn_header(&mut resp, &w);
            }
            resp
        }
    };
    resp.extensions_mut().insert(served);
    Ok(resp)
}

/// Finishes a generation with `n` > 1 choices (no session: nothing is stored).
async fn respond_choices<S: Shape + FullShape>(
    state: &AppState,
    served: super::ServedBy,
    rxs: Vec<tokio::sync::mpsc::UnboundedReceiver<crate::engine::request::Event>>,
    shapes: Vec<S>,
    stream: Option<bool>,
) -> Result<Response, ApiError> {
    let mut resp = match stream {
        Some(include_usage) => choices::stream(rxs, shapes, include_usage, state.shutdown.clone()),
        None => Json(choices::full(rxs, shapes).await?).into_response(),
    };
    resp.extensions_mut().insert(served);
    Ok(resp)
}

/// `n` shapes answering as one response, the first holding `lease`, the others their own lease on its slot.
fn shapes_for<S: FullShape>(n: usize, lease: SlotLease, make: impl Fn(SlotLease) -> S) -> Vec<S> {
    let others: Vec<SlotLease> = (1..n).map(|_| lease.resident().lease()).collect();
    let first = make(lease);
    let mut rest: Vec<S> = others.into_iter().map(&make).collect();
    rest.iter_mut().for_each(|s| s.join(&first));
    std::iter::once(first).chain(rest).collect()
}

/// The `n` a request asks for (validated with the other sampling fields).
fn choices_of(f: &SamplingFields) -> usize {
    f.n.unwrap_or(1).clamp(1, generate::MAX_N as i64) as usize
}

/// What bounds this engine's sampling parameters.
fn bounds(state: &AppState, engine: &Engine) -> generate::Bounds {
    generate::Bounds {
        max_total: engine.max_request_tokens(),
        vocab: engine.model().llama.config().vocab_size,
        max_stop_token_ids: state.limits.max_stop_token_ids,
    }
}

/// A finished answer as the engine would have sent it (a replayed session turn).
fn replayed(text: String) -> tokio::sync::mpsc::UnboundedReceiver<crate::engine::request::Event> {
    use crate::engine::request::Event;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = tx.send(Event::Token { id: 0, text, logprob: None });
    let _ =
        tx.send(Event::Done { reason: FinishReason::Stop, prompt_tokens: 0, completion_tokens: 0, cached_tokens: 0 });
    rx
}

fn message_text(m: ChatMessageIn) -> Result<ChatMessage, ApiError> {
    let content = match m.content {
        None => String::new(),
        Some(MessageContent::Text(t)) => t,
        Some(MessageContent::Parts(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => s.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("content part type '{kind}' is not supported"),
                        ))
                    }
                }
            }
            s
        }
    };
    if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer" | "tool") {
        return Err(ApiError::invalid("messages", format!("unknown role '{}'", m.role)));
    }
    let tool_calls = m.tool_calls.filter(|c| !c.is_null());
    if tool_calls.as_ref().is_some_and(|c| !c.is_array() || m.role != "assistant") {
        return Err(ApiError::invalid("messages", "tool_calls must be an array, on an assistant message"));
    }
    Ok(ChatMessage { role: m.role, content, tool_calls, tool_call_id: m.tool_call_id })
}

pub async fn chat(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    request_id: Option<axum::Extension<RequestId>>,
    JsonBody(mut req): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = std::time::Instant::now();
    let requested = sessions::requested(&headers, req.session_id.take(), req.session)?;
    check_model(&state, &req.model)?;
    unsupported::refuse_functions(&req)?;
    let grammar = structured::response_grammar(req.response_format.as_ref())?;
    let tools = tools::parse(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls)?;
    if grammar.is_some() && tools.as_ref().is_some_and(|t| tools::forced_grammar(t, tools::Format::Hermes).is_some()) {
        return Err(ApiError::invalid(
            "response_format",
            "response_format cannot be combined with a forced tool_choice",
        ));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    if req.messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid("messages", format!("at most {MAX_MESSAGES} messages per request")));
    }
    let top = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if !(0..=20).contains(&n) => {
            return Err(ApiError::invalid("top_logprobs", "top_logprobs must be between 0 and 20"))
        }
        (false, Some(n)) if n > 0 => {
            return Err(ApiError::invalid("top_logprobs", "top_logprobs requires logprobs: true"))
        }
        (true, n) => Some(n.unwrap_or(0) as usize),
        (false, _) => None,
    };
    let new_messages = req.messages.into_iter().map(message_text).collect::<Result<Vec<_>, _>>()?;
    let rid = request_id.map(|r| r.0 .0);
    let user = req.sampling.user.take();
    rollout_tap::check_keys(user.as_deref(), &headers)?;
    let session = match requested {
        Some((id, new)) => Some(sessions::open(&state, id, new, rid).await?),
        None => None,
    };
    let session_id = session.as_ref().map(|s| s.id.as_str());
    let key = rollout_tap::route_key(session_id, user.as_deref(), &headers);
    let history = session.as_ref().map(|s| s.history.as_slice()).unwrap_or_default();
    let (lease, routed) = state
        .router
        .lease_routed(session_id, key, |split| rollout_tap::sticky(history, &split.rollout_id))
        .ok_or_else(ApiError::not_ready)?;
    if !state.router.accepts(&req.model, &lease) {
        return Err(ApiError::model_not_found(&req.model));
    }
    let observed = rollout_tap::Observed::of(&state, routed.as_ref(), arrived);
    let tag = routed.as_ref().map(|(split, arm)| rollout_tap::tag(&split.rollout_id, *arm));
    let stream = req.stream.then(|| req.stream_options.unwrap_or_default().include_usage);
    let turn = ChatTurn { session, new_messages, top, stream, sampling: req.sampling, tag, grammar, tools };
    let out = chat_on(&state, lease, turn, observed.as_ref()).await;
    if let (Err(e), Some(o)) = (&out, &observed) {
        o.error(e);
    }
    out
}

/// 503 before anything is live; 404 when the request names neither the served name nor the live model.
fn check_model(state: &AppState, requested: &str) -> Result<(), ApiError> {
    let live = state.router.peek().ok_or_else(ApiError::not_ready)?;
    if state.router.served_name() == Some(requested) || live.identity.name == requested {
        Ok(())
    } else {
        Err(ApiError::model_not_found(requested))
    }
}

/// A chat request after routing: its session, new messages and parameters.
struct ChatTurn {
    session: Option<sessions::ActiveSession>,
    new_messages: Vec<ChatMessage>,
    top: Option<usize>,
    stream: Option<bool>,
    sampling: SamplingFields,
    /// The rollout arm that serves it, stored with the session's reply.
    tag: Option<String>,
    /// What the answer must follow (response_format).
    grammar: Option<Grammar>,
    tools: Option<tools::Tools>,
}

/// Generates a chat answer on `lease` (the arm the router chose) and stores the session turn.
async fn chat_on(
    state: &AppState,
    lease: SlotLease,
    turn: ChatTurn,
    observed: Option<&rollout_tap::Observed>,
) -> Result<Response, ApiError> {
    let ChatTurn { session, new_messages, top, stream, sampling, tag, grammar, tools } = turn;
    let engine = llm(&lease, "/v1/chat/completions")?;
    let model = engine.model().clone();
    if let Some(s) = session.as_ref().filter(|s| s.replay.is_some()) {
        // A retry of a turn that is stored already: the same answer again, stored once.
        let shape = ChatShape::new(state.served_name(&lease), lease.resident().lease(), model, false);
        let shape = shape.with_tools(None);
        let rx = replayed(s.replay.clone().unwrap_or_default());
        let mut resp = respond(state, super::ServedBy::of(&lease), rx, shape, stream, None).await?;
        s.stamp(&mut resp);
        return Ok(resp);
    }
    let mut messages = session.as_ref().map(|s| s.history_messages()).unwrap_or_default();
    if session.is_some() {
        sessions::check_size(state, &messages, &new_messages)?;
    }
    let stored = messages.len();
    messages.extend(new_messages.iter().cloned());
    if state.log_prompts {
        tracing::info!(messages = ?messages, "chat request");
    }
    let replay = observed.map(|_| messages.clone());
    let n = choices_of(&sampling);
    if n > 1 && session.is_some() {
        return Err(ApiError::invalid("n", "a session stores one answer per turn: n must be 1"));
    }
    let (messages, template_tools, view, grammar) = with_tools(tools.as_ref(), &model, messages, grammar);
    let prompt =
        prompt::chat_tokens(state, engine, messages, template_tools).await.map_err(|e| with_history_note(e, stored))?;
    let mut params = generate::sampling_params(sampling, top, prompt.len(), &bounds(state, engine))
        .map_err(|e| with_history_note(e, stored))?;
    if let Some(g) = grammar {
        let param = if view.is_some_and(|v| v.forced) { "tool_choice" } else { "response_format" };
        params.constraint = Some(structured::compile(state, engine, g, param).await?);
    }
    let shadow = match (observed, replay) {
        (Some(o), Some(m)) => o.shadow(state, engine.queued(), &mut params, ShadowPrompt::Chat(m), &prompt),
        _ => None,
    };
    let mut rxs = choices::submit(engine, prompt, params, n).await?;
    let mut rx = rxs.remove(0);
    if let Some(o) = observed {
        rx = o.tap(rx, shadow);
    }
    let served = super::ServedBy::of(&lease);
    if n > 1 {
        let (name, logprobs) = (state.served_name(&lease), top.is_some());
        let shapes =
            shapes_for(n, lease, |l| ChatShape::new(name.clone(), l, model.clone(), logprobs).with_tools(view));
        return respond_choices(state, served, std::iter::once(rx).chain(rxs).collect(), shapes, stream).await;
    }
    let finisher = session.as_ref().map(|s| {
        let (state, active, hold) = (state.clone(), s.clone_for_store(), lease.resident().lease());
        let finish: generate::Finisher = Box::new(move |text: String| {
            Box::pin(async move { sessions::store_turn(&state, &active, &new_messages, &text, &hold, tag).await })
        });
        finish
    });
    let shape = ChatShape::new(state.served_name(&lease), lease, model, top.is_some()).with_tools(view);
    let mut resp = respond(state, served, rx, shape, stream, finisher).await?;
    if let Some(s) = &session {
        s.stamp(&mut resp);
    }
    Ok(resp)
}

/// A request with tools: its messages as the template takes them, the template's `tools`, how to read calls out
/// of the answer, and the grammar (a forced call's, else the response format's).
fn with_tools(
    tools: Option<&tools::Tools>,
    model: &LanguageModel,
    messages: Vec<ChatMessage>,
    grammar: Option<Grammar>,
) -> (Vec<ChatMessage>, Option<Value>, Option<ToolView>, Option<Grammar>) {
    let (Some(t), Some(tmpl)) = (tools, model.chat_template.as_ref()) else {
        return (messages, None, None, grammar);
    };
    let (format, native) = tools::format_of(tmpl);
    let forced = tools::forced_grammar(t, format);
    let view = (t.choice != tools::Choice::None).then_some(ToolView { format, forced: forced.is_some() });
    let grammar = forced.or(grammar);
    match native {
        true => (tools::native_messages(messages), Some(t.raw.clone()), view, grammar),
        false => (tools::fallback_messages(t, messages), None, view, grammar),
    }
}

/// Says that a context overflow includes the session's stored history.
fn with_history_note(mut e: ApiError, stored: usize) -> ApiError {
    if stored > 0 && e.code == Some("context_length_exceeded") {
        e.message.push_str(&format!(
            " The messages include this session's stored history ({stored} messages), which the live model \
             cannot take; start a new session or delete this one."
        ));
    }
    e
}

pub async fn completions(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    JsonBody(mut req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = std::time::Instant::now();
    check_model(&state, &req.model)?;
    if req.echo && req.logprobs.is_some() {
        return Err(ApiError::invalid("echo", "echo together with logprobs is not supported"));
    }
    if req.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("best_of", "only best_of = 1 is supported"));
    }
    let top = match req.logprobs {
        Some(n) if !(0..=5).contains(&n) => {
            return Err(ApiError::invalid("logprobs", "logprobs must be between 0 and 5"))
        }
        n => n.map(|n| n as usize),
    };
    let user = req.sampling.user.take();
    rollout_tap::check_keys(user.as_deref(), &headers)?;
    let key = rollout_tap::route_key(None, user.as_deref(), &headers);
    let (lease, routed) = state.router.lease_routed(None, key, |_| None).ok_or_else(ApiError::not_ready)?;
    if !state.router.accepts(&req.model, &lease) {
        return Err(ApiError::model_not_found(&req.model));
    }
    let observed = rollout_tap::Observed::of(&state, routed.as_ref(), arrived);
    let out = completion_on(&state, lease, req, top, observed.as_ref()).await;
    if let (Err(e), Some(o)) = (&out, &observed) {
        o.error(e);
    }
    out
}

async fn completion_on(
    state: &AppState,
    lease: SlotLease,
    req: CompletionRequest,
    top: Option<usize>,
    observed: Option<&rollout_tap::Observed>,
) -> Result<Response, ApiError> {
    if state.log_prompts {
        tracing::info!(prompt = ?req.prompt, "completion request");
    }
    let engine = llm(&lease, "/v1/completions")?;
    let model = engine.model().clone();
    let replay = observed.map(|_| req.prompt.clone());
    let echo_text = match (&req.prompt, req.echo) {
        (Prompt::Text(t), true) => Some(t.clone()),
        (Prompt::Texts(v), true) => v.first().cloned(),
        _ => None,
    };
    let prompt = prompt::completion_tokens(state, engine, req.prompt).await?;
    let echo = match (req.echo, echo_text) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => Some(model.tokenizer.decode(&prompt)?),
    };
    let n = choices_of(&req.sampling);
    let grammar = structured::response_grammar(req.response_format.as_ref())?;
    let mut params = generate::sampling_params(req.sampling, top, prompt.len(), &bounds(state, engine))?;
    if let Some(g) = grammar {
        params.constraint = Some(structured::compile(state, engine, g, "response_format").await?);
    }
    let shadow = match (observed, replay) {
        (Some(o), Some(p)) => o.shadow(state, engine.queued(), &mut params, ShadowPrompt::Completion(p), &prompt),
        _ => None,
    };
    let mut rxs = choices::submit(engine, prompt, params, n).await?;
    let mut rx = rxs.remove(0);
    if let Some(o) = observed {
        rx = o.tap(rx, shadow);
    }
    let served = super::ServedBy::of(&lease);
    let name = state.served_name(&lease);
    let shape = |l: SlotLease| CompletionShape {
        id: generate::new_id("cmpl"),
        created: generate::unix_now(),
        model: name.clone(),
        _lease: l,
        llm: model.clone(),
        logprobs: top.is_some(),
        offset: 0,
        echo: echo.clone(),
    };
    let stream = req.stream.then(|| req.stream_options.unwrap_or_default().include_usage);
    if n > 1 {
        let shapes = shapes_for(n, lease, shape);
        return respond_choices(state, served, std::iter::once(rx).chain(rxs).collect(), shapes, stream).await;
    }
    respond(state, served, rx, shape(lease), stream, None).await
}

struct CompletionShape {
    id: String,
    created: u64,
    model: String,
    /// Held until the response ends: the slot this request started on.
    _lease: SlotLease,
    llm: Arc<LanguageModel>,
    logprobs: bool,
    /// Bytes of text sent so far (text_offset of the next token).
    offset: usize,
    /// `echo`: the prompt, sent before the completion.
    echo: Option<String>,
}

impl CompletionShape {
    fn logprobs(&mut self, tokens: &[TokenOut]) -> Option<CompletionLogprobs> {
        if !self.logprobs {
            return None;
        }
        let tok = &self.llm.tokenizer;
        let mut out = CompletionLogprobs::default();
        for t in tokens {
            let Some(lp) = &t.logprob else { continue };
            let text = tok.token_text(t.id);
            out.text_offset.push(self.offset);
            self.offset += text.len();
            out.tokens.push(text);
            out.token_logprobs.push(lp.logprob);
            out.top_logprobs.push(lp.top.iter().map(|&(id, l)| (tok.token_text(id), json!(l))).collect());
        }
        Some(out)
    }

    fn chunk(&self, choices: Value, usage: Option<Usage>) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "system_fingerprint": Value::Null, "choices": choices, "usage": usage})
    }
}

impl FullShape for CompletionShape {
    fn join(&mut self, first: &Self) {
        (self.id, self.created) = (first.id.clone(), first.created);
    }

    fn full(mut self, done: Collected) -> Value {
        let lp = self.logprobs(&done.tokens);
        let text = self.echo.take().unwrap_or_default() + &done.text;
        self.chunk(
            json!([{"index": 0, "text": text, "logprobs": lp, "finish_reason": done.reason.as_str()}]),
            Some(done.usage),
        )
    }
}

impl Shape for CompletionShape {
    fn start(&mut self) -> Option<Value> {
        let echo = self.echo.take()?;
        Some(self.chunk(json!([{"index": 0, "text": echo, "logprobs": null, "finish_reason": null}]), None))
    }

    fn delta(&mut self, text: &str, tokens: &[TokenOut]) -> Value {
        let lp = self.logprobs(tokens);
        self.chunk(json!([{"index": 0, "text": text, "logprobs": lp, "finish_reason": null}]), None)
    }

    fn finish(&mut self, reason: FinishReason) -> Value {
        self.chunk(json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": reason.as_str()}]), None)
    }

    fn usage(&mut self, usage: Usage) -> Value {
        self.chunk(json!([]), Some(usage))
    }
}

/// The served name, and the live model's own name when it differs (requests may use either).
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let mut ids = vec![];
    if let Some(live) = state.router.peek() {
        ids.extend(state.router.served_name().map(String::from));
        if !ids.contains(&live.identity.name) {
            ids.push(live.identity.name.clone());
        }
    }
    let data: Vec<ModelCard> = ids
        .into_iter()
        .map(|id| ModelCard { id, object: "model", created: state.started_at, owned_by: "teal" })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
