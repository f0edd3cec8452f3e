//! `teal bench chat`: multi-turn conversations over /v1/chat/completions. Each turn sends the whole history, as
//! a chat client does, so a server that keeps the KV of the conversation so far (a prefix cache) answers later
//! turns sooner. Reports, per turn index, the time to first token and the prompt and cached tokens the server
//! says it used. Works against any OpenAI-compatible server (the cached count where it reports one).

use super::client::{send, synthetic_prompt};
use super::stats::{dist, Dist};
use super::{http_client, model_name, report, Common};
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Debug, Args)]
pub struct ChatBench {
    /// --input-len: words per user message; --shared-prefix: words of a system prompt every conversation shares
    #[command(flatten)]
    pub common: Common,
    /// Turns per conversation
    #[arg(long, default_value_t = 5)]
    pub turns: usize,
    /// Conversations in all
    #[arg(long, default_value_t = 8)]
    pub conversations: usize,
    /// Conversations running at once
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
}

/// One turn as the client saw it.
#[derive(Debug, Clone, Default)]
struct Turn {
    ttft: f64,
    e2e: f64,
    prompt_tokens: usize,
    cached_tokens: usize,
    text: String,
    error: Option<String>,
}

/// One turn index over all conversations.
#[derive(Debug, Serialize)]
pub struct TurnRow {
    pub turn: usize,
    pub ttft_ms: Dist,
    pub e2e_ms: Dist,
    pub prompt_tokens_mean: f64,
    pub cached_tokens_mean: f64,
    pub errors: usize,
}

pub async fn chat(b: ChatBench) -> anyhow::Result<()> {
    let http = http_client()?;
    super::response_format(b.common.response_format.as_deref())?; // a bad schema file fails here, not per turn
    let model = model_name(&http, &b.common).await?;
    let pb = super::progress((b.conversations * b.turns) as u64, "turns");
    let runs: Vec<Vec<Turn>> = futures::stream::iter(0..b.conversations)
        .map(|i| conversation(&http, &b, &model, i, &pb))
        .buffer_unordered(b.concurrency.max(1))
        .collect()
        .await;
    pb.finish_and_clear();
    let rows: Vec<TurnRow> = (0..b.turns).map(|t| row(t, runs.iter().filter_map(|r| r.get(t)))).collect();
    println!(
        "{:>5} {:>14} {:>14} {:>14} {:>14} {:>7}",
        "turn", "prompt tok", "cached tok", "TTFT p50 ms", "TTFT p90 ms", "errors"
    );
    for r in &rows {
        println!(
            "{:>5} {:>14.1} {:>14.1} {:>14.1} {:>14.1} {:>7}",
            r.turn + 1,
            r.prompt_tokens_mean,
            r.cached_tokens_mean,
            r.ttft_ms.p50,
            r.ttft_ms.p90,
            r.errors
        );
    }
    if let Some(path) = &b.common.json {
        let config = json!({"url": b.common.url, "model": model, "input_len": b.common.input_len,
                            "output_len": b.common.output_len, "system_words": b.common.shared_prefix,
                            "turns": b.turns, "conversations": b.conversations, "concurrency": b.concurrency});
        report::write_json(path, "chat", config, json!(rows))?;
        println!("results: {}", path.display());
    }
    let errors: usize = rows.iter().map(|r| r.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} turns failed");
    Ok(())
}

fn row<'a>(turn: usize, turns: impl Iterator<Item = &'a Turn>) -> TurnRow {
    let turns: Vec<&Turn> = turns.collect();
    let ok: Vec<&&Turn> = turns.iter().filter(|t| t.error.is_none()).collect();
    let mean = |f: &dyn Fn(&Turn) -> usize| ok.iter().map(|t| f(t) as f64).sum::<f64>() / ok.len().max(1) as f64;
    TurnRow {
        turn,
        ttft_ms: dist(ok.iter().map(|t| t.ttft)),
        e2e_ms: dist(ok.iter().map(|t| t.e2e)),
        prompt_tokens_mean: mean(&|t| t.prompt_tokens),
        cached_tokens_mean: mean(&|t| t.cached_tokens),
        errors: turns.len() - ok.len(),
    }
}

/// Conversation `i`: the shared system prompt, then `turns` user messages, each answered before the next.
async fn conversation(
    http: &reqwest::Client,
    b: &ChatBench,
    model: &str,
    i: usize,
    pb: &indicatif::ProgressBar,
) -> Vec<Turn> {
    let c = &b.common;
    let mut messages = vec![];
    if c.shared_prefix > 0 {
        messages
            .push(json!({"role": "system", "content": synthetic_prompt(c.shared_prefix, c.shared_prefix, c.seed, 0)}));
    }
    let mut out = vec![];
    for t in 0..b.turns {
        let user = synthetic_prompt(c.input_len, 0, c.seed, 1 + i * b.turns + t);
        messages.push(json!({"role": "user", "content": user}));
        let mut body = json!({"model": model, "messages": messages, "max_tokens": c.output_len, "stream": true,
                              "temperature": 0, "ignore_eos": !c.allow_eos, "stream_options": {"include_usage": true}});
        if let (Ok(Some(f)), Some(o)) = (super::response_format(c.response_format.as_deref()), body.as_object_mut()) {
            o.insert("response_format".into(), f);
        }
        let turn = one_turn(http, &format!("{}/v1/chat/completions", c.url), &body).await;
        pb.inc(1);
        let failed = turn.error.is_some();
        messages.push(json!({"role": "assistant", "content": turn.text}));
        out.push(turn);
        if failed {
            break;
        }
    }
    out
}

/// Sends one streamed chat turn and times it; errors land in the turn.
async fn one_turn(http: &reqwest::Client, url: &str, body: &Value) -> Turn {
    let t0 = Instant::now();
    let mut turn = Turn::default();
    let resp = match send(http, url, body).await {
        Ok((r, _)) if r.status().is_success() => r,
        Ok((r, _)) => {
            turn.error = Some(format!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default().trim()));
            return turn;
        }
        Err(e) => {
            turn.error = Some(format!("connect: {e}"));
            return turn;
        }
    };
    let (mut stream, mut buf, mut done) = (resp.bytes_stream(), Vec::<u8>::new(), false);
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            turn.error = Some("stream broke".into());
            break;
        };
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:").map(str::trim) else { continue };
            done |= data == "[DONE]";
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                read_chunk(&mut turn, &v, t0);
            }
        }
    }
    turn.e2e = t0.elapsed().as_secs_f64();
    if turn.error.is_none() && (!done || turn.text.is_empty()) {
        turn.error = Some("the stream ended without an answer and [DONE]".into());
    }
    turn
}

fn read_chunk(turn: &mut Turn, v: &Value, t0: Instant) {
    if let Some(e) = v.get("error") {
        turn.error = Some(format!("error chunk: {e}"));
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        turn.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        turn.cached_tokens = u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) as usize;
    }
    if let Some(text) = v["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
        if turn.text.is_empty() {
            turn.ttft = t0.elapsed().as_secs_f64();
        }
        turn.text.push_str(text);
    }
}
