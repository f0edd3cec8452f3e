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
    /// The first attempt got no response (a pooled keep-alive connection the server had closed): sent again,
    /// once, on a fresh connection.
    pub retried: bool,
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
            retried: false,
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
    /// Structured output asked of every answer (the completions endpoint takes it as an extension).
    pub response_format: Option<serde_json::Value>,
}

/// Words of one token each in the usual BPE and SentencePiece vocabularies.
const WORDS: [&str; 64] = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "sun", "rises", "in", "east", "and",
    "river", "runs", "to", "sea", "old", "man", "reads", "book", "by", "fire", "small", "cat", "sleeps", "on", "warm",
    "mat", "bird", "sings", "tree", "green", "hill", "under", "blue", "sky", "child", "plays", "with", "red", "ball",
    "near", "house", "door", "open", "wind", "cold", "night", "moon", "light", "star", "far", "away", "ship", "sails",
    "home", "long", "road", "ends", "at", "town",
];

/// The prompt of request `i`: about `tokens` words, the first `shared` of them the same for every request of a
/// run (a shared prefix on purpose), the rest drawn at random per request, seeded by `seed` and `i`, so that no
/// server's prefix cache makes requests cheaper than they are unless asked to.
pub fn synthetic_prompt(tokens: usize, shared: usize, seed: u64, i: usize) -> String {
    use rand::{Rng, SeedableRng};
    let tokens = tokens.max(1);
    let shared = shared.min(tokens);
    let mut common = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_5a7e_d000);
    let mut own =
        rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 + 1));
    let word = |r: &mut rand::rngs::StdRng| WORDS[r.random_range(0..WORDS.len())];
    let mut out: Vec<&str> = (0..shared).map(|_| word(&mut common)).collect();
    out.extend((shared..tokens).map(|_| word(&mut own)));
    out.join(" ")
}

/// Sends `body`; when no response comes at all (most often a keep-alive connection the server closed while it sat
/// in the pool), sends it once more on a fresh connection. The response, and whether it was the second try.
pub(super) async fn send(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(reqwest::Response, bool), reqwest::Error> {
    match http.post(url).json(body).send().await {
        Ok(r) => Ok((r, false)),
        Err(_) => fresh_client().post(url).json(body).send().await.map(|r| (r, true)),
    }
}

/// A client that opens a new connection for its request (none is kept idle).
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(0).build().unwrap_or_default()
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

/// The completion request `spec` describes (streamed, greedy).
fn request_body(spec: &RequestSpec) -> serde_json::Value {
    let mut body = json!({"model": spec.model, "prompt": spec.prompt, "max_tokens": spec.max_tokens, "stream": true,
                          "temperature": 0, "ignore_eos": spec.ignore_eos, "stream_options": {"include_usage": true}});
    if let (Some(f), Some(o)) = (&spec.response_format, body.as_object_mut()) {
        o.insert("response_format".into(), f.clone());
        // llama-server's completions endpoint reads the schema from `json_schema` instead (teal ignores it).
        let schema = f.pointer("/json_schema/schema").cloned().unwrap_or_else(|| json!({"type": "object"}));
        o.insert("json_schema".into(), schema);
    }
    body
}

/// Sends one streamed completion and records it; never panics, errors land in the record.
pub async fn run(http: &reqwest::Client, spec: &RequestSpec, run_start: Instant) -> Record {
    let t0 = Instant::now();
    let start = (t0 - run_start).as_secs_f64();
    let body = request_body(spec);
    let (resp, retried) = match send(http, &format!("{}/v1/completions", spec.url), &body).await {
        Ok(r) => r,
        Err(e) => {
            return Record {
                retried: true,
                ..Record::failed(start, t0.elapsed().as_secs_f64(), format!("connect: {e}"))
            }
        }
    };
    let status = resp.status();
    let slot = resp.headers().get("x-teal-slot").and_then(|v| v.to_str().ok()).map(String::from);
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let mut rec = Record::failed(start, t0.elapsed().as_secs_f64(), format!("HTTP {status}: {}", text.trim()));
        rec.retried = retried;
        return rec;
    }
    let mut rec = Record {
        start,
        ttft: 0.0,
        itl: vec![],
        e2e: 0.0,
        prompt_tokens: 0,
        output_tokens: 0,
        error: None,
        slot,
        retried,
    };
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
            texts += usize::from(read_event(&mut rec, &v));
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

/// Takes one stream event's error and usage into `rec`; whether it carried text.
fn read_event(rec: &mut Record, v: &Value) -> bool {
    if let Some(e) = v.get("error") {
        rec.error = Some(format!("error chunk: {e}"));
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        rec.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        rec.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
    }
    v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty())
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
        assert_eq!(synthetic_prompt(5, 0, 0, 0).split(' ').count(), 5);
        assert_ne!(synthetic_prompt(5, 0, 0, 0), synthetic_prompt(5, 0, 0, 1));
        assert_eq!(synthetic_prompt(64, 0, 7, 3), synthetic_prompt(64, 0, 7, 3), "seeded");
    }

    #[test]
    fn a_response_format_goes_out_for_teal_and_as_json_schema_for_llama_server() {
        let spec = |f: Option<serde_json::Value>| RequestSpec {
            url: String::new(),
            model: "m".into(),
            prompt: "p".into(),
            max_tokens: 4,
            ignore_eos: false,
            response_format: f,
        };
        assert!(request_body(&spec(None)).get("response_format").is_none());
        let b = request_body(&spec(Some(json!({"type": "json_object"}))));
        assert_eq!(
            (b["response_format"]["type"].as_str(), &b["json_schema"]),
            (Some("json_object"), &json!({"type": "object"}))
        );
        let f = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}});
        assert_eq!(request_body(&spec(Some(f)))["json_schema"], json!({"type": "integer"}));
    }

    #[test]
    fn prompts_are_distinct_unless_a_shared_prefix_is_asked() {
        let words = |p: String| p.split(' ').map(String::from).collect::<Vec<_>>();
        let (a, b) = (words(synthetic_prompt(128, 0, 1, 0)), words(synthetic_prompt(128, 0, 1, 1)));
        // Without a shared prefix, two prompts do not even start alike (one word in 64 by chance at most).
        assert!(a.iter().zip(&b).take(4).filter(|(x, y)| x == y).count() < 4);
        let (a, b) = (words(synthetic_prompt(128, 100, 1, 0)), words(synthetic_prompt(128, 100, 1, 1)));
        assert_eq!(a[..100], b[..100], "the shared prefix");
        assert_ne!(a[100..], b[100..]);
        assert_eq!(words(synthetic_prompt(8, 100, 1, 0)).len(), 8, "a prefix longer than the prompt is the prompt");
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
            retried: false,
        };
        assert!((r.tpot().unwrap() - 0.1).abs() < 1e-12);
    }

    /// A server that closes its first connection without answering (as a server closes an idle keep-alive
    /// connection), then answers a stream: the request is sent again once, on a fresh connection, and counted.
    #[tokio::test]
    async fn a_request_that_gets_no_response_is_sent_again_once_and_counted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let _ = first.read(&mut buf).await;
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let _ = second.read(&mut buf).await;
            let events = "data: {\"choices\":[{\"text\":\"hi\"}]}\n\ndata: [DONE]\n\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                events.len()
            );
            second.write_all(format!("{head}{events}").as_bytes()).await.unwrap();
        });
        let spec = RequestSpec {
            url,
            model: "m".into(),
            prompt: "p".into(),
            max_tokens: 1,
            ignore_eos: true,
            response_format: None,
        };
        let rec = run(&reqwest::Client::new(), &spec, Instant::now()).await;
        assert_eq!(rec.error, None);
        assert!(rec.retried);
        assert_eq!(rec.output_tokens, 1);
    }
}
