//! Warm-up and gates of the batched kinds (embeddings, image classification), the counterparts of warmup.rs and
//! gates.rs for a model that answers one-shot requests through its dynamic batcher.
//!
//! - warm-up: one timed cold request, then one batch of every size the batcher will form (and, for text, the
//!   longest input the model takes), then the first request timed again.
//! - health: one request answers with finite outputs of the model's width.
//! - golden: images with their expected top-1 label (`gates.golden_images`, files inside the model directory);
//!   sentence pairs with the cosine range their embeddings must fall in (`gates.golden_pairs`).
//! - smoke: concurrent requests of mixed batch sizes all answer with finite outputs.
//! - latency (when configured): p99 request time under concurrent load within `ttft_p99_ms` and, optionally,
//!   within a percentage of the live slot's.

use super::gates::{result, skipped, GateReport, GateResult, GatesConfig, LatencyGate};
use super::probe::quantile;
use super::warmup::{default_batch_sizes, Timing, WarmupConfig, WarmupReport};
use crate::backend::Backend;
use crate::batcher::Batcher;
use crate::error::{Result, TealError};
use crate::models::classifier::Classifier;
use crate::models::embedding::Embedder;
use crate::models::image;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// An image file (inside the model directory) and the label its top-1 must be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenImage {
    pub image: String,
    pub top1: String,
}

/// Two sentences and the range their embeddings' cosine similarity must fall in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenPair {
    pub a: String,
    pub b: String,
    #[serde(default = "minus_one")]
    pub min: f64,
    #[serde(default = "one")]
    pub max: f64,
}

fn minus_one() -> f64 {
    -1.0
}

fn one() -> f64 {
    1.0
}

/// Synthetic requests of the model's own shape.
enum Probe<'a> {
    Embed(&'a Batcher<Embedder>),
    Classify(&'a Batcher<Classifier>),
}

impl<'a> Probe<'a> {
    fn of(b: &'a Backend) -> Option<Probe<'a>> {
        match b {
            Backend::Embed(e) => Some(Probe::Embed(e)),
            Backend::Classify(c) => Some(Probe::Classify(c)),
            Backend::Llm(_) => None,
        }
    }

    fn max_batch(&self) -> usize {
        match self {
            Probe::Embed(b) => b.config().max_batch,
            Probe::Classify(b) => b.config().max_batch,
        }
    }

    /// Width of one output: embedding dimensions or classes.
    fn width(&self) -> usize {
        match self {
            Probe::Embed(b) => b.model().dimensions,
            Probe::Classify(b) => b.model().net.num_classes,
        }
    }

    /// `n` synthetic inputs as one request; `salt` varies them; `long` makes text inputs as long as allowed.
    fn run(&self, n: usize, salt: usize, long: bool) -> Result<Vec<Vec<f32>>> {
        match self {
            Probe::Embed(b) => {
                let m = b.model();
                let ids =
                    m.tokenize(&format!("Warm-up sentence {salt}: the quick brown fox jumps over the lazy dog."))?;
                let ids = if long { stretch(&ids, m.max_tokens) } else { ids };
                b.infer_blocking(vec![ids; n]).map_err(|e| TealError::Config(e.to_string()))
            }
            Probe::Classify(b) => {
                let len = 3 * b.model().input_size().pow(2);
                let x: Vec<f32> = (0..len).map(|i| ((i * 7 + salt) % 255) as f32 / 255.0 - 0.5).collect();
                b.infer_blocking(vec![x; n]).map_err(|e| TealError::Config(e.to_string()))
            }
        }
    }
}

/// The ids with their middle repeated until they are `len` long (first and last special tokens kept).
fn stretch(ids: &[u32], len: usize) -> Vec<u32> {
    if ids.len() < 3 || len <= ids.len() {
        return ids.to_vec();
    }
    let body = &ids[1..ids.len() - 1];
    let mut out = vec![ids[0]];
    out.extend(body.iter().copied().cycle().take(len - 2));
    out.push(ids[ids.len() - 1]);
    out
}

fn timed(p: &Probe, salt: usize) -> Result<Timing> {
    let t = Instant::now();
    p.run(1, salt, false)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(Timing { ttft_ms: ms, total_ms: ms })
}

/// Warm-up of an embedding or image model.
pub fn warm(backend: &Backend, cfg: &WarmupConfig, progress: &dyn Fn(f64)) -> Result<WarmupReport> {
    let t0 = Instant::now();
    let p = Probe::of(backend).ok_or_else(|| TealError::Config("not a batched model".into()))?;
    let mut report = WarmupReport::empty(cfg.enabled);
    if !cfg.enabled {
        return Ok(report);
    }
    report.first_request_cold = Some(timed(&p, 0)?);
    let max = p.max_batch();
    let sizes = if cfg.batch_sizes.is_empty() { default_batch_sizes(max) } else { cfg.batch_sizes.clone() };
    let sizes: Vec<usize> = sizes.into_iter().filter(|&b| b >= 1).map(|b| b.min(max)).collect();
    for (i, &b) in sizes.iter().enumerate() {
        p.run(b, i, false)?;
        report.requests += 1;
        progress((i + 1) as f64 / (sizes.len() + 2) as f64);
    }
    if let Probe::Embed(b) = &p {
        p.run(1, 0, true)?;
        report.prefill_tokens = b.model().max_tokens;
    }
    report.batch_sizes = sizes;
    report.first_request_warm = Some(timed(&p, 0)?);
    report.requests += 2;
    report.seconds = t0.elapsed().as_secs_f64();
    progress(1.0);
    Ok(report)
}

/// Runs the gates of an embedding or image model (`live`: the live slot, when there is one).
pub fn gates(
    cfg: &GatesConfig,
    standby: &Backend,
    live: Option<&Backend>,
    dir: &Path,
    progress: &dyn Fn(f64),
) -> GateReport {
    let t0 = Instant::now();
    let Some(p) = Probe::of(standby) else {
        let r = result("health", false, "not a batched model".into(), Value::Null);
        return GateReport { passed: false, forced: false, seconds: 0.0, results: vec![r] };
    };
    let mut results = vec![health(cfg, &p)];
    progress(0.25);
    results.push(golden(cfg, &p, dir));
    progress(0.5);
    results.push(smoke(cfg, &p));
    progress(0.75);
    let live = live.and_then(Probe::of).filter(|l| l.width() == p.width());
    results.push(latency(&cfg.latency, &p, live.as_ref()));
    progress(1.0);
    GateReport { passed: results.iter().all(|r| r.passed), forced: false, seconds: t0.elapsed().as_secs_f64(), results }
}

fn well_formed(out: &[Vec<f32>], width: usize) -> Option<String> {
    out.iter().find_map(|o| {
        if o.len() != width {
            Some(format!("output of width {} (expected {width})", o.len()))
        } else if o.iter().any(|x| !x.is_finite()) {
            Some("non-finite output".into())
        } else {
            None
        }
    })
}

fn health(cfg: &GatesConfig, p: &Probe) -> GateResult {
    if !cfg.health.enabled {
        return skipped("health", "disabled");
    }
    let t = Instant::now();
    match p.run(1, 0, false) {
        Ok(out) => match well_formed(&out, p.width()) {
            None => result(
                "health",
                true,
                format!("answered in {:.1} ms", t.elapsed().as_secs_f64() * 1e3),
                json!({"total_ms": t.elapsed().as_secs_f64() * 1e3}),
            ),
            Some(bad) => result("health", false, bad, Value::Null),
        },
        Err(e) => result("health", false, format!("inference failed: {e}"), Value::Null),
    }
}

/// The bytes of a file the gates name, inside the model directory and under the golden-image size cap.
fn golden_file(dir: &Path, name: &str) -> std::result::Result<Vec<u8>, String> {
    use crate::models::files::{ModelDir, MAX_GOLDEN_IMAGE_BYTES};
    let dir = ModelDir::of(dir).map_err(|e| e.to_string())?;
    dir.read(name, MAX_GOLDEN_IMAGE_BYTES).map_err(|e| e.to_string())?.ok_or_else(|| format!("{name}: missing"))
}

fn golden(cfg: &GatesConfig, p: &Probe, dir: &Path) -> GateResult {
    if !cfg.golden.enabled {
        return skipped("golden", "disabled");
    }
    let (checked, failures) = match p {
        Probe::Classify(b) if !cfg.golden_images.is_empty() => {
            let fails: Vec<String> = cfg.golden_images.iter().filter_map(|g| golden_image(b, g, dir).err()).collect();
            (cfg.golden_images.len(), fails)
        }
        Probe::Embed(b) if !cfg.golden_pairs.is_empty() => {
            let fails: Vec<String> = cfg.golden_pairs.iter().filter_map(|g| golden_pair(b, g).err()).collect();
            (cfg.golden_pairs.len(), fails)
        }
        _ => return skipped("golden", "no golden cases for this model kind configured"),
    };
    let passed = checked - failures.len();
    let rate = passed as f64 / checked as f64;
    let ok = rate >= cfg.golden.threshold;
    let summary = match failures.first() {
        None => format!("{passed}/{checked} golden cases passed"),
        Some(f) => format!("{passed}/{checked} golden cases passed; first failure: {f}"),
    };
    result("golden", ok, summary, json!({"passed": passed, "total": checked, "failures": failures}))
}

fn golden_image(b: &Batcher<Classifier>, g: &GoldenImage, dir: &Path) -> std::result::Result<(), String> {
    let bytes = golden_file(dir, &g.image)?;
    let m = b.model();
    let img = image::decode(&bytes, 100_000_000).map_err(|e| format!("{}: {e}", g.image))?;
    let x = image::preprocess(&img, &m.preprocess).map_err(|e| format!("{}: {e}", g.image))?;
    let logits = b.infer_blocking(vec![x]).map_err(|e| e.to_string())?;
    let row = logits.first().ok_or("the classifier returned no output")?;
    let top = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    let got = m.labels.get(top).ok_or("the classifier returned more classes than it has labels")?;
    if *got == g.top1 {
        Ok(())
    } else {
        Err(format!("{}: top-1 is {got:?}, expected {:?}", g.image, g.top1))
    }
}

fn golden_pair(b: &Batcher<Embedder>, g: &GoldenPair) -> std::result::Result<(), String> {
    let m = b.model();
    let ids = [&g.a, &g.b].map(|t| m.tokenize(t).map_err(|e| e.to_string()));
    let [a, c] = ids;
    let out = b.infer_blocking(vec![a?, c?]).map_err(|e| e.to_string())?;
    let cos = cosine(&out[0], &out[1]);
    if (g.min..=g.max).contains(&cos) {
        Ok(())
    } else {
        Err(format!("cosine({:?}, {:?}) = {cos:.4}, outside [{}, {}]", g.a, g.b, g.min, g.max))
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Total milliseconds of `requests` requests of `n` inputs each, `concurrency` at a time.
fn concurrent(
    p: &Probe<'_>,
    requests: usize,
    concurrency: usize,
    sizes: &(dyn Fn(usize) -> usize + Sync),
) -> Vec<Result<(f64, Vec<Vec<f32>>)>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, 64) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t = Instant::now();
                let r = p.run(sizes(i), i, false).map(|o| (t.elapsed().as_secs_f64() * 1e3, o));
                out.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    out.into_inner().unwrap_or_else(|e| e.into_inner())
}

fn smoke(cfg: &GatesConfig, p: &Probe) -> GateResult {
    let s = &cfg.smoke;
    if !s.enabled || s.requests == 0 {
        return skipped("smoke", "disabled");
    }
    let mut problems = vec![];
    for r in concurrent(p, s.requests, s.concurrency, &|i| 1 + i % 3) {
        match r {
            Ok((_, out)) => problems.extend(well_formed(&out, p.width())),
            Err(e) => problems.push(format!("request failed: {e}")),
        }
    }
    let summary = match problems.first() {
        None => format!("{} requests answered with well-formed outputs", s.requests),
        Some(f) => format!("{} of {} requests bad; first: {f}", problems.len(), s.requests),
    };
    result("smoke", problems.is_empty(), summary, json!({"requests": s.requests, "problems": problems}))
}

fn p99(g: &LatencyGate, p: &Probe) -> std::result::Result<f64, String> {
    let mut ms = vec![];
    for r in concurrent(p, g.requests.max(1), g.concurrency, &|_| 1) {
        ms.push(r.map_err(|e| e.to_string())?.0);
    }
    Ok(quantile(&ms, 0.99))
}

fn latency(g: &LatencyGate, standby: &Probe, live: Option<&Probe>) -> GateResult {
    if !g.enabled {
        return skipped("latency", "not configured");
    }
    let ms = match p99(g, standby) {
        Ok(v) => v,
        Err(e) => return result("latency", false, format!("load failed: {e}"), Value::Null),
    };
    let mut details = json!({"p99_ms": ms, "slo_p99_ms": g.ttft_p99_ms, "concurrency": g.concurrency});
    let mut fails = vec![];
    if ms > g.ttft_p99_ms {
        fails.push(format!("p99 request time {ms:.1} ms over the SLO of {:.1} ms", g.ttft_p99_ms));
    }
    if let (Some(pct), Some(live)) = (g.max_regression_pct, live) {
        match p99(g, live) {
            Ok(l) => {
                details["live_p99_ms"] = json!(l);
                if ms > l * (1.0 + pct / 100.0) {
                    fails.push(format!("p99 request time {ms:.1} ms is more than {pct}% over live's {l:.1} ms"));
                }
            }
            Err(e) => fails.push(format!("could not measure the live slot: {e}")),
        }
    }
    let summary = if fails.is_empty() { format!("p99 request time {ms:.1} ms") } else { fails.join("; ") };
    result("latency", fails.is_empty(), summary, details)
}
