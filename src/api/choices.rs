//! `n` > 1: several choices for one prompt. The first choice runs alone until the engine has read its prompt
//! (its full KV blocks are then in the prefix cache); the others are submitted after it and reuse those
//! blocks, so the prompt is prefilled once and each further choice recomputes less than one block. Each choice
//! is an ordinary engine request (seeded requests give choice i the seed + i); this module submits them,
//! collects them into one body, or streams them as one SSE stream with each chunk's `index`.

#![deny(clippy::indexing_slicing)]

use super::error::ApiError;
use super::generate::{self, Collected, FullShape, Shape};
use super::openai_types::Usage;
use crate::engine::request::{Event, SamplingParams};
use crate::engine::Engine;
use crate::net::shutdown::{Phase, ShutdownSignal};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Submits `n` choices of `prompt`: the first at once, the others once the first has its prompt in the cache.
/// Dropping the receivers cancels them all.
pub async fn submit(
    engine: &Engine,
    prompt: Vec<u32>,
    params: SamplingParams,
    n: usize,
) -> Result<Vec<UnboundedReceiver<Event>>, ApiError> {
    let mut first = engine.submit(prompt.clone(), params.clone())?;
    if n <= 1 {
        return Ok(vec![first]);
    }
    // The first event (a token, or an error) comes after the prompt's prefill.
    let head = first.recv().await;
    let (tx, rx) = unbounded_channel();
    if let Some(ev) = head {
        let _ = tx.send(ev);
    }
    forward(first, tx);
    let mut out = vec![rx];
    for i in 1..n {
        let p = SamplingParams { seed: params.seed.map(|s| s.wrapping_add(i as u64)), ..params.clone() };
        out.push(engine.submit(prompt.clone(), p)?);
    }
    Ok(out)
}

/// Copies `rx` into `tx` until either side ends (a closed `tx` drops `rx`, which cancels the request).
fn forward<T: Send + 'static>(mut rx: UnboundedReceiver<T>, tx: UnboundedSender<T>) {
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
}

/// The whole answer of every choice as one body (the first choice's, with every choice in `choices` and the
/// usage of all).
pub async fn full<S: FullShape>(rxs: Vec<UnboundedReceiver<Event>>, shapes: Vec<S>) -> Result<Value, ApiError> {
    let done: Vec<Collected> = futures::future::join_all(rxs.into_iter().map(generate::collect))
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let usage = total_usage(&done);
    let bodies = shapes.into_iter().zip(done).map(|(s, d)| s.full(d)).collect();
    Ok(merge_bodies(bodies, usage))
}

/// The usage of all choices: the prompt once, every choice's completion.
fn total_usage(done: &[Collected]) -> Option<Usage> {
    let first = done.first()?.usage;
    let completion = done.iter().map(|d| d.usage.completion_tokens).sum();
    let cached = first.prompt_tokens_details.map(|d| d.cached_tokens).unwrap_or_default();
    Some(Usage::generated(first.prompt_tokens, completion, cached))
}

/// Sets the `index` of every choice in a body or chunk.
fn at(mut v: Value, i: usize) -> Value {
    if let Some(cs) = v.get_mut("choices").and_then(Value::as_array_mut) {
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            c.insert("index".into(), i.into());
        }
    }
    v
}

/// One body from the choices' bodies: the first's, with every choice in `choices` and the total usage.
fn merge_bodies(bodies: Vec<Value>, usage: Option<Usage>) -> Value {
    let mut bodies = bodies.into_iter().enumerate().map(|(i, b)| at(b, i));
    let Some(mut first) = bodies.next() else { return Value::Null };
    let rest: Vec<Value> = bodies
        .flat_map(|mut b| b.get_mut("choices").and_then(Value::as_array_mut).map(std::mem::take))
        .flatten()
        .collect();
    if let Some(cs) = first.get_mut("choices").and_then(Value::as_array_mut) {
        cs.extend(rest);
    }
    if let (Some(u), Some(body)) = (usage, first.as_object_mut()) {
        body.insert("usage".into(), serde_json::to_value(u).unwrap_or_default());
    }
    first
}

/// Streams every choice as one SSE stream (chunks carry their choice's index), the usage of all at the end,
/// then `[DONE]`. Dropping it (client gone) cancels every choice.
pub fn stream<S: Shape>(
    rxs: Vec<UnboundedReceiver<Event>>,
    mut shapes: Vec<S>,
    include_usage: bool,
    shutdown: ShutdownSignal,
) -> axum::response::Response {
    let n = rxs.len();
    let (tx, mut rx) = unbounded_channel::<(usize, Event)>();
    for (i, r) in rxs.into_iter().enumerate() {
        forward_tagged(i, r, tx.clone());
    }
    drop(tx);
    let s = async_stream::stream! {
        for (i, shape) in shapes.iter_mut().enumerate() {
            if let Some(first) = shape.start() {
                yield generate::sse_json(&at(first, i));
            }
        }
        let (mut finished, mut completion, mut usage) = (0, 0, None);
        while finished < n {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = shutdown.reached(Phase::Deadline) => None,
            };
            let Some((i, ev)) = ev else { break };
            let Some(shape) = shapes.get_mut(i) else { continue };
            match ev {
                Event::Token { id, text, logprob } => {
                    if !text.is_empty() || logprob.is_some() {
                        yield generate::sse_json(&at(shape.delta(&text, &[generate::TokenOut { id, logprob }]), i));
                    }
                }
                Event::Done { reason, prompt_tokens, completion_tokens, cached_tokens } => {
                    yield generate::sse_json(&at(shape.finish(reason), i));
                    finished += 1;
                    completion += completion_tokens;
                    usage.get_or_insert((prompt_tokens, cached_tokens));
                }
                Event::Error(e) => {
                    yield generate::sse_json(&ApiError::internal(e).body());
                    break;
                }
                Event::Scored(_) => {}
            }
        }
        if finished < n {
            let e = ApiError::internal("the response ended before every choice finished (shutdown or engine stop)");
            yield generate::sse_json(&e.body());
        } else if let (true, Some((prompt, cached)), Some(shape)) = (include_usage, usage, shapes.first_mut()) {
            yield generate::sse_json(&shape.usage(Usage::generated(prompt, completion, cached)));
        }
        yield axum::response::sse::Event::default().data("[DONE]");
    };
    generate::sse_response(s)
}

fn forward_tagged(i: usize, mut rx: UnboundedReceiver<Event>, tx: UnboundedSender<(usize, Event)>) {
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if tx.send((i, ev)).is_err() {
                break;
            }
        }
    });
}
