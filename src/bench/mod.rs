//! `teal bench`: one instrument for every speed claim, against teal or any OpenAI-compatible server.
//! - `serve`: closed loop at each concurrency and open loop at each request rate; TTFT, ITL, TPOT, end-to-end
//!   (p50/p90/p99), throughput, errors (in the spirit of `vllm bench serve` and genai-perf).
//! - `flip` (flips.rs): load while the admin API flips every K ms; flip latency, failed requests, latency
//!   before, during and after.
//! - `cold-warm` (flips.rs): the first requests after a flip to a standby loaded with and without warm-up,
//!   against steady state.
//! - `chat` (conversations.rs): multi-turn conversations, the time to first token of each turn (what a prefix
//!   cache changes).
//!
//! client.rs sends and times one request, load.rs generates load, stats.rs summarizes, report.rs prints the
//! table and writes JSON (with the machine), charts.rs draws SVG.

pub mod charts;
pub mod client;
mod conversations;
mod flips;
pub mod load;
pub mod report;
pub mod stats;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use client::RequestSpec;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Latency and throughput at several concurrencies (closed loop) and request rates (open loop)
    Serve(ServeBench),
    /// Load while flipping the live slot every K ms through the admin API
    Flip(flips::FlipBench),
    /// First requests after a flip to a standby loaded with and without warm-up, against steady state
    ColdWarm(flips::ColdWarmBench),
    /// Multi-turn conversations (the whole history each turn): time to first token per turn, cached tokens
    Chat(conversations::ChatBench),
}

/// Options every benchmark shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Base URL of the OpenAI-compatible server
    #[arg(long, env = "TEAL_BENCH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Model name to send [default: the first of /v1/models]
    #[arg(long)]
    pub model: Option<String>,
    /// Prompt length in tokens (approximate: common words)
    #[arg(long, default_value_t = 128)]
    pub input_len: usize,
    /// Tokens to generate per request
    #[arg(long, default_value_t = 64)]
    pub output_len: usize,
    /// Stop at end-of-sequence instead of always generating --output-len tokens
    #[arg(long)]
    pub allow_eos: bool,
    /// Write the results (with the machine) as JSON
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG charts into this directory
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Seed of the prompts' words and of open-loop arrivals
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Words at the start of every prompt that are the same for all requests (a shared system prompt, on
    /// purpose); by default every prompt is different from its first word, so prefix caches do not help
    #[arg(long, default_value_t = 0)]
    pub shared_prefix: usize,
    /// Constrain every answer (structured output): `json_object`, or a file holding a JSON schema; measures
    /// what constrained decoding costs beside a run without it
    #[arg(long)]
    pub response_format: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeBench {
    #[command(flatten)]
    pub common: Common,
    /// Concurrency levels (closed loop)
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub concurrency: Vec<usize>,
    /// Request rates per second (open loop, Poisson arrivals); none by default
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Requests per level
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
}

/// Runs one `teal bench` command.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match args.command {
            BenchCommand::Serve(b) => serve(b).await,
            BenchCommand::Flip(b) => flips::flip(b).await,
            BenchCommand::ColdWarm(b) => flips::cold_warm(b).await,
            BenchCommand::Chat(b) => conversations::chat(b).await,
        }
    })
}

/// The benchmark's HTTP client: keep-alive, no Nagle delay, no overall timeout (long generations are fine).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(1024).build()?)
}

/// The model to send: --model, or the server's first.
async fn model_name(http: &reqwest::Client, c: &Common) -> anyhow::Result<String> {
    if let Some(m) = &c.model {
        return Ok(m.clone());
    }
    let v: serde_json::Value = http
        .get(format!("{}/v1/models", c.url))
        .send()
        .await
        .with_context(|| format!("cannot reach {}", c.url))?
        .json()
        .await?;
    match v["data"][0]["id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => bail!("{} lists no model; pass --model", c.url),
    }
}

/// The request builder for a run: a different prompt per request.
fn spec_fn(c: &Common, model: String) -> anyhow::Result<load::SpecFn> {
    let (url, input, output, ignore_eos, seed, shared) =
        (c.url.clone(), c.input_len, c.output_len, !c.allow_eos, c.seed, c.shared_prefix);
    let format = response_format(c.response_format.as_deref())?;
    Ok(Arc::new(move |i| RequestSpec {
        url: url.clone(),
        model: model.clone(),
        prompt: client::synthetic_prompt(input, shared, seed, i),
        max_tokens: output,
        ignore_eos,
        response_format: format.clone(),
    }))
}

/// `--response-format`: `json_object`, or a JSON schema file (sent as a strict `json_schema`).
pub(crate) fn response_format(arg: Option<&str>) -> anyhow::Result<Option<serde_json::Value>> {
    match arg {
        None => Ok(None),
        Some("json_object") => Ok(Some(serde_json::json!({"type": "json_object"}))),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the schema {path}"))?;
            let schema: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
            Ok(Some(serde_json::json!({"type": "json_schema",
                                       "json_schema": {"name": "bench", "schema": schema, "strict": true}})))
        }
    }
}

fn progress(total: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

async fn serve(b: ServeBench) -> anyhow::Result<()> {
    let http = http_client()?;
    let model = model_name(&http, &b.common).await?;
    let spec = spec_fn(&b.common, model.clone())?;
    let (mut rows, mut closed_x) = (vec![], vec![]);
    for &c in &b.concurrency {
        let label = format!("c={c}");
        let pb = progress(b.requests as u64, &label);
        let t0 = Instant::now();
        let recs = load::closed_loop(&http, spec.clone(), c, b.requests, t0, &pb).await;
        pb.finish_and_clear();
        rows.push(stats::summarize(&label, &recs, t0.elapsed().as_secs_f64()));
        closed_x.push(c as f64);
    }
    for &r in &b.rate {
        let label = format!("rate={r}/s");
        let pb = progress(b.requests as u64, &label);
        let t0 = Instant::now();
        let recs = load::open_loop(&http, spec.clone(), r, b.requests, b.common.seed, t0, &pb).await;
        pb.finish_and_clear();
        rows.push(stats::summarize(&label, &recs, t0.elapsed().as_secs_f64()));
    }
    report::print_table(&rows);
    if let Some(dir) = &b.common.svg {
        std::fs::create_dir_all(dir)?;
        let n = closed_x.len();
        let path = dir.join("latency_vs_concurrency.svg");
        charts::latency_vs_load(&path, &rows[..n], &closed_x, "concurrent requests")?;
        println!("chart: {}", path.display());
    }
    if let Some(path) = &b.common.json {
        let config = json!({"url": b.common.url, "model": model, "input_len": b.common.input_len,
                            "output_len": b.common.output_len, "requests": b.requests,
                            "concurrency": b.concurrency, "rate": b.rate, "ignore_eos": !b.common.allow_eos});
        report::write_json(path, "serve", config, json!(rows))?;
        println!("results: {}", path.display());
    }
    let errors: usize = rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
