//! One benchmark request against any OpenAI-compatible server: a streamed /v1/completions call whose token
//! arrival times are recorded as the client sees them.

use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::Instant;

/// What one request measured. Times are seconds; `start` is relative to the start of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub start: f64,
    pub ttft: f64,
    /// Per token after the first: the time since the previous tokens arrived, shared by the tokens of a chunk.
    pub itl: Vec<f64>,
    pub e2e: f64,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub error: Option<String>,
    /// `x-teal-slot`, when the server sends it.
    pub slot: Option<String>,
}

impl Record {
    /// Time per output token after the first: (e2e - ttft) / (tokens - 1).
    pub fn tpot(&self) -> Option<f64> {
        (self.error.is_none() && self.output_tokens > 1)
            .then(|| (self.e2e - self.ttft) / (self.output_tokens - 1) as f64)
    }

    fn failed(start: f64, e2e: f64, error: String) -> Self {
        Record {
            start,
            ttft: 0.0,
            itl: vec![],
            e2e,
            prompt_tokens: 0,
            output_tokens: 0,
            error: Some(error),
            slot: None,
        }
    }
}

/// The request every benchmark client sends.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub url: String,
    pub model: String,
    pub prompt: String,
    pub max_tokens: usize,
    pub ignore_eos: bool,
}

/// A prompt of about `tokens` tokens: common English words, each one token in the usual BPE vocabularies.
pub fn synthetic_prompt(tokens: usize, salt: usize) -> String {
    const WORDS: [&str; 16] = [
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "the", "sun", "rises", "in",
        "the", "east",
    ];
    (0..tokens.max(1)).map(|i| WORDS[(i + salt) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

/// Times `texts` tokens that arrived together at `arrived`: the first token ever sets the TTFT; the gap since the
/// previous arrival is shared evenly by the tokens of this one (tokens that came in one chunk came together, so
/// timing each SSE event as it is parsed would record gaps of zero).
fn record_arrival(rec: &mut Record, t0: Instant, last: &mut Option<Instant>, arrived: Instant, texts: usize) {
    if texts == 0 {
        return;
    }
    match *last {
        None => {
            rec.ttft = (arrived - t0).as_secs_f64();
            rec.itl.extend(std::iter::repeat_n(0.0, texts - 1));
        }
        Some(prev) => {
            let gap = (arrived - prev).as_secs_f64() / texts as f64;
            rec.itl.extend(std::iter::repeat_n(gap, texts));
        }
    }
    *last = Some(arrived);
}

/// Sends one streamed completion and records it; never panics, errors land in the record.
pub async fn run(http: &reqwest::Client, spec: &RequestSpec, run_start: Instant) -> Record {
    let t0 = Instant::now();
    let start = (t0 - run_start).as_secs_f64();
    let body = json!({"model": spec.model, "prompt": spec.prompt, "max_tokens": spec.max_tokens, "stream": true,
                      "temperature": 0, "ignore_eos": spec.ignore_eos, "stream_options": {"include_usage": true}});
    let resp = match http.post(format!("{}/v1/completions", spec.url)).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return Record::failed(start, t0.elapsed().as_secs_f64(), format!("connect: {e}")),
    };
    let status = resp.status();
    let slot = resp.headers().get("x-teal-slot").and_then(|v| v.to_str().ok()).map(String::from);
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Record::failed(start, t0.elapsed().as_secs_f64(), format!("HTTP {status}: {}", text.trim()));
    }
    let mut rec =
        Record { start, ttft: 0.0, itl: vec![], e2e: 0.0, prompt_tokens: 0, output_tokens: 0, error: None, slot };
    let (mut last, mut chunks, mut done) = (None::<Instant>, 0usize, false);
    let mut stream = resp.bytes_stream();
    // Bytes, not text: a chunk may end inside a UTF-8 character.
    let mut buf: Vec<u8> = vec![];
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                rec.error = Some(format!("stream: {e}"));
                break;
            }
        };
        // Every event of a chunk reached the client when the chunk did.
        let arrived = Instant::now();
        buf.extend_from_slice(&chunk);
        let mut texts = 0usize;
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:").map(str::trim) else { continue };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else { continue };
            if let Some(e) = v.get("error") {
                rec.error = Some(format!("error chunk: {e}"));
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                rec.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                rec.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
            }
            texts += usize::from(v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()));
        }
        record_arrival(&mut rec, t0, &mut last, arrived, texts);
        chunks += texts;
    }
    rec.e2e = t0.elapsed().as_secs_f64();
    if rec.output_tokens == 0 {
        rec.output_tokens = chunks;
    }
    if rec.error.is_none() && !done {
        rec.error = Some("stream ended without [DONE]".into());
    }
    if rec.error.is_none() && chunks == 0 {
        rec.error = Some("no tokens".into());
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_arrive_together_share_the_gap_before_them() {
        let t0 = Instant::now();
        let mut rec = Record::failed(0.0, 0.0, String::new());
        let mut last = None;
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        record_arrival(&mut rec, t0, &mut last, at(100), 2);
        record_arrival(&mut rec, t0, &mut last, at(130), 0);
        record_arrival(&mut rec, t0, &mut last, at(160), 3);
        assert!((rec.ttft - 0.1).abs() < 1e-9);
        let want = [0.0, 0.02, 0.02, 0.02];
        assert_eq!(rec.itl.len(), want.len(), "one entry per token after the first");
        for (got, want) in rec.itl.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{:?}", rec.itl);
        }
    }

    #[test]
    fn prompts_have_the_asked_number_of_words() {
        assert_eq!(synthetic_prompt(5, 0).split(' ').count(), 5);
        assert_ne!(synthetic_prompt(5, 0), synthetic_prompt(5, 1));
    }

    #[test]
    fn tpot_excludes_the_first_token() {
        let r = Record {
            start: 0.0,
            ttft: 0.1,
            itl: vec![],
            e2e: 0.5,
            prompt_tokens: 1,
            output_tokens: 5,
            error: None,
            slot: None,
        };
        assert!((r.tpot().unwrap() - 0.1).abs() < 1e-12);
    }
}
