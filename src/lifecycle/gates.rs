//! Gates a standby must pass before it may go live (a forced flip skips them, and is audited). Set per model in
//! the model's teal.toml (`[gates.*]`), overridable per load request. Each gate reports pass/fail with its
//! numbers; the first failure's reason is what a refused flip says.
//!
//! - health: the model answers one generation request.
//! - golden: prompts with expected greedy output (exact text, substrings or token ids); pass rate >= threshold.
//! - smoke: N sampled requests; every one well-formed (finished, ids inside the vocabulary, token count right),
//!   no non-finite logits (the engine fails such a request), no empty output.
//! - latency (off unless configured): p99 time to first token and inter-token latency under concurrent load,
//!   within an SLO and, optionally, within a percentage of the live slot under the same load.
//! - agreement: share of golden and smoke prompts where standby and live give the same greedy text (reported;
//!   fails only below an optional threshold).

use super::probe::{self, ProbePrompt, ProbeResult};
use crate::engine::request::SamplingParams;
use crate::engine::Engine;
use crate::models::chat_template::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatesConfig {
    pub health: HealthGate,
    pub golden: GoldenGate,
    pub smoke: SmokeGate,
    pub latency: LatencyGate,
    pub agreement: AgreementGate,
    /// Image classifiers: images with their expected top-1 label (see batch_checks.rs).
    pub golden_images: Vec<super::batch_checks::GoldenImage>,
    /// Embedding models: sentence pairs with the cosine range they must fall in.
    pub golden_pairs: Vec<super::batch_checks::GoldenPair>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthGate {
    pub enabled: bool,
}

impl Default for HealthGate {
    fn default() -> Self {
        HealthGate { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoldenGate {
    pub enabled: bool,
    /// Share of cases that must pass.
    pub threshold: f64,
    pub max_tokens: usize,
    pub cases: Vec<GoldenCase>,
}

impl Default for GoldenGate {
    fn default() -> Self {
        GoldenGate { enabled: true, threshold: 1.0, max_tokens: 16, cases: vec![] }
    }
}

/// One golden prompt (`prompt` text or chat `messages`) and what its greedy output must be.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoldenCase {
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: Option<usize>,
    /// The whole generated text.
    pub expect_text: Option<String>,
    /// Substrings the generated text must contain.
    pub expect_contains: Vec<String>,
    /// The first generated token ids.
    pub expect_tokens: Option<Vec<u32>>,
}

impl GoldenCase {
    fn probe_prompt(&self) -> Option<ProbePrompt> {
        match (&self.prompt, &self.messages) {
            (_, Some(m)) => Some(ProbePrompt::Chat { messages: m.clone() }),
            (Some(p), None) => Some(ProbePrompt::Text(p.clone())),
            (None, None) => None,
        }
    }

    /// Why `out` does not meet this case, or None.
    fn mismatch(&self, out: &ProbeResult) -> Option<String> {
        if let Some(t) = &self.expect_text {
            if &out.text != t {
                return Some(format!("expected text {t:?}, got {:?}", out.text));
            }
        }
        if let Some(missing) = self.expect_contains.iter().find(|s| !out.text.contains(s.as_str())) {
            return Some(format!("expected {missing:?} in {:?}", out.text));
        }
        if let Some(ids) = &self.expect_tokens {
            if !out.tokens.starts_with(ids) {
                return Some(format!("expected tokens {ids:?}, got {:?}", out.tokens));
            }
        }
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmokeGate {
    pub enabled: bool,
    pub requests: usize,
    pub concurrency: usize,
    pub max_tokens: usize,
    pub temperature: f32,
}

impl Default for SmokeGate {
    fn default() -> Self {
        SmokeGate { enabled: true, requests: 8, concurrency: 4, max_tokens: 16, temperature: 0.8 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyGate {
    pub enabled: bool,
    pub requests: usize,
    pub concurrency: usize,
    pub max_tokens: usize,
    pub ttft_p99_ms: f64,
    pub itl_p99_ms: f64,
    /// Standby p99s may exceed the live slot's by at most this many percent (compared only when set).
    pub max_regression_pct: Option<f64>,
}

impl Default for LatencyGate {
    fn default() -> Self {
        LatencyGate {
            enabled: false,
            requests: 16,
            concurrency: 4,
            max_tokens: 16,
            ttft_p99_ms: 2000.0,
            itl_p99_ms: 500.0,
            max_regression_pct: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgreementGate {
    pub enabled: bool,
    pub max_tokens: usize,
    /// Least share of prompts with identical greedy text; None reports without failing.
    pub threshold: Option<f64>,
}

impl Default for AgreementGate {
    fn default() -> Self {
        AgreementGate { enabled: true, max_tokens: 16, threshold: None }
    }
}

impl GatesConfig {
    /// Caps on every count and size a load request can set, so a gate cannot be asked for unbounded work (the
    /// stage timeout is the backstop).
    pub fn validate(&self) -> Result<(), String> {
        use super::caps::cap;
        const TOKENS: usize = 4096;
        cap("golden.cases", self.golden.cases.len(), 1000)?;
        cap("golden.max_tokens", self.golden.max_tokens, TOKENS)?;
        for c in &self.golden.cases {
            cap("golden.cases[].max_tokens", c.max_tokens.unwrap_or(0), TOKENS)?;
            cap("golden.cases[].expect_tokens", c.expect_tokens.as_ref().map_or(0, Vec::len), TOKENS)?;
            cap("golden.cases[].messages", c.messages.as_ref().map_or(0, Vec::len), 256)?;
        }
        cap("smoke.requests", self.smoke.requests, 10_000)?;
        cap("smoke.concurrency", self.smoke.concurrency, 256)?;
        cap("smoke.max_tokens", self.smoke.max_tokens, TOKENS)?;
        cap("latency.requests", self.latency.requests, 10_000)?;
        cap("latency.concurrency", self.latency.concurrency, 256)?;
        cap("latency.max_tokens", self.latency.max_tokens, TOKENS)?;
        cap("agreement.max_tokens", self.agreement.max_tokens, TOKENS)?;
        cap("golden_images", self.golden_images.len(), 256)?;
        cap("golden_pairs", self.golden_pairs.len(), 1000)?;
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        let temp = self.smoke.temperature;
        if !unit(self.golden.threshold) || !self.agreement.threshold.is_none_or(unit) || !(0.0..=2.0).contains(&temp) {
            return Err("gates: thresholds must be within 0..=1 and smoke.temperature within 0..=2".into());
        }
        Ok(())
    }
}

/// One gate's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    pub gate: &'static str,
    pub passed: bool,
    pub skipped: bool,
    /// One line: the numbers, or why it failed.
    pub summary: String,
    pub details: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub passed: bool,
    /// Set by a forced flip: the slot went live without (passing) gates.
    pub forced: bool,
    pub seconds: f64,
    pub results: Vec<GateResult>,
}

impl GateReport {
    /// "gate: reason" of the first failed gate.
    pub fn first_failure(&self) -> Option<String> {
        self.results.iter().find(|r| !r.passed).map(|r| format!("{} gate failed: {}", r.gate, r.summary))
    }
}

pub(super) fn result(gate: &'static str, passed: bool, summary: String, details: Value) -> GateResult {
    GateResult { gate, passed, skipped: false, summary, details }
}

pub(super) fn skipped(gate: &'static str, why: &str) -> GateResult {
    GateResult { gate, passed: true, skipped: true, summary: why.into(), details: Value::Null }
}

const SMOKE_PROMPTS: [&str; 4] = [
    "Once upon a time",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Count from one to ten.",
];

/// Runs every enabled gate on `standby`, comparing with `live` where a gate needs it.
pub fn run_all(cfg: &GatesConfig, standby: &Engine, live: Option<&Engine>, progress: &dyn Fn(f64)) -> GateReport {
    let t0 = Instant::now();
    let mut results = vec![health(cfg, standby)];
    progress(0.2);
    results.push(golden(&cfg.golden, standby));
    progress(0.4);
    results.push(smoke(cfg, standby));
    progress(0.6);
    results.push(latency(&cfg.latency, standby, live));
    progress(0.8);
    results.push(agreement(cfg, standby, live));
    progress(1.0);
    GateReport { passed: results.iter().all(|r| r.passed), forced: false, seconds: t0.elapsed().as_secs_f64(), results }
}

fn health(cfg: &GatesConfig, engine: &Engine) -> GateResult {
    if !cfg.health.enabled {
        return skipped("health", "disabled");
    }
    let out = ProbePrompt::Instruction(SMOKE_PROMPTS[0].into())
        .tokens(engine)
        .and_then(|p| probe::run(engine, p, probe::greedy(4, true)));
    match out {
        Ok(r) => result(
            "health",
            true,
            format!("answered {} tokens in {:.1} ms", r.completion_tokens, r.total * 1e3),
            json!({"ttft_ms": r.ttft * 1e3, "total_ms": r.total * 1e3}),
        ),
        Err(e) => result("health", false, format!("generation failed: {e}"), Value::Null),
    }
}

fn golden(cfg: &GoldenGate, engine: &Engine) -> GateResult {
    if !cfg.enabled || cfg.cases.is_empty() {
        return skipped("golden", if cfg.enabled { "no golden cases configured" } else { "disabled" });
    }
    let mut cases = vec![];
    let mut passed = 0;
    for (i, case) in cfg.cases.iter().enumerate() {
        let max = case.max_tokens.or(case.expect_tokens.as_ref().map(Vec::len)).unwrap_or(cfg.max_tokens).max(1);
        let out = case
            .probe_prompt()
            .ok_or_else(|| crate::error::TealError::Config("a golden case needs prompt or messages".into()))
            .and_then(|p| p.tokens(engine))
            .and_then(|p| probe::run(engine, p, probe::greedy(max, true)));
        let why = match &out {
            Ok(r) => case.mismatch(r),
            Err(e) => Some(format!("generation failed: {e}")),
        };
        passed += usize::from(why.is_none());
        let text = out.as_ref().map(|r| r.text.clone()).unwrap_or_default();
        cases.push(json!({"case": i, "passed": why.is_none(), "output": text, "reason": why}));
    }
    let rate = passed as f64 / cfg.cases.len() as f64;
    let ok = rate >= cfg.threshold;
    let first = cases.iter().find(|c| c["passed"] == false).and_then(|c| c["reason"].as_str().map(String::from));
    let mut summary =
        format!("{passed}/{} cases passed (rate {rate:.2}, threshold {:.2})", cfg.cases.len(), cfg.threshold);
    if let (false, Some(f)) = (ok, first) {
        summary.push_str(&format!("; first failure: {f}"));
    }
    result("golden", ok, summary, json!({"pass_rate": rate, "threshold": cfg.threshold, "cases": cases}))
}

/// The prompts smoke and agreement use: the golden prompts, then the built-in ones.
fn prompt_set(cfg: &GatesConfig) -> Vec<ProbePrompt> {
    let mut v: Vec<ProbePrompt> = cfg.golden.cases.iter().filter_map(GoldenCase::probe_prompt).collect();
    v.extend(SMOKE_PROMPTS.iter().map(|p| ProbePrompt::Instruction((*p).into())));
    v
}

fn smoke(cfg: &GatesConfig, engine: &Engine) -> GateResult {
    let s = &cfg.smoke;
    if !s.enabled || s.requests == 0 {
        return skipped("smoke", "disabled");
    }
    let prompts: Vec<Vec<u32>> = prompt_set(cfg).iter().filter_map(|p| p.tokens(engine).ok()).collect();
    if prompts.is_empty() {
        return result("smoke", false, "no smoke prompt could be tokenized".into(), Value::Null);
    }
    let reqs = (0..s.requests)
        .map(|i| {
            let params = SamplingParams {
                temperature: s.temperature,
                max_tokens: s.max_tokens.max(1),
                seed: Some(i as u64),
                ..Default::default()
            };
            (prompts[i % prompts.len()].clone(), params)
        })
        .collect();
    let vocab = engine.model().llama.config().vocab_size as u32;
    let mut problems = vec![];
    for (i, r) in probe::run_concurrent(engine, reqs, s.concurrency).into_iter().enumerate() {
        let problem = match r {
            Err(e) => Some(format!("request {i} failed: {e}")),
            Ok(r) if r.completion_tokens != r.tokens.len() => Some(format!(
                "request {i}: usage says {} tokens, {} were streamed",
                r.completion_tokens,
                r.tokens.len()
            )),
            Ok(r) if r.tokens.iter().any(|&t| t >= vocab) => {
                Some(format!("request {i}: token id outside the vocabulary"))
            }
            Ok(r) if r.text.is_empty() => Some(format!("request {i}: empty output")),
            Ok(_) => None,
        };
        problems.extend(problem);
    }
    let summary = match problems.first() {
        None => format!("{} requests well-formed and non-empty", s.requests),
        Some(p) => format!("{} of {} requests bad; first: {p}", problems.len(), s.requests),
    };
    result("smoke", problems.is_empty(), summary, json!({"requests": s.requests, "problems": problems}))
}

/// p99 TTFT and ITL in ms under the gate's load, or the first error.
fn load_p99(g: &LatencyGate, engine: &Engine) -> Result<(f64, f64), String> {
    let prompt = ProbePrompt::Instruction(SMOKE_PROMPTS[0].into()).tokens(engine).map_err(|e| e.to_string())?;
    let reqs = (0..g.requests.max(1)).map(|_| (prompt.clone(), probe::greedy(g.max_tokens.max(2), false))).collect();
    let (mut ttft, mut itl) = (vec![], vec![]);
    for r in probe::run_concurrent(engine, reqs, g.concurrency) {
        let r = r.map_err(|e| e.to_string())?;
        ttft.push(r.ttft * 1e3);
        itl.extend(r.itl.iter().map(|x| x * 1e3));
    }
    Ok((probe::quantile(&ttft, 0.99), probe::quantile(&itl, 0.99)))
}

fn latency(g: &LatencyGate, standby: &Engine, live: Option<&Engine>) -> GateResult {
    if !g.enabled {
        return skipped("latency", "not configured");
    }
    let (ttft, itl) = match load_p99(g, standby) {
        Ok(v) => v,
        Err(e) => return result("latency", false, format!("load failed: {e}"), Value::Null),
    };
    let mut details = json!({"ttft_p99_ms": ttft, "itl_p99_ms": itl, "slo_ttft_p99_ms": g.ttft_p99_ms,
                             "slo_itl_p99_ms": g.itl_p99_ms, "concurrency": g.concurrency, "requests": g.requests});
    let mut fails = vec![];
    if ttft > g.ttft_p99_ms {
        fails.push(format!("p99 TTFT {ttft:.1} ms over the SLO of {:.1} ms", g.ttft_p99_ms));
    }
    if itl > g.itl_p99_ms {
        fails.push(format!("p99 ITL {itl:.1} ms over the SLO of {:.1} ms", g.itl_p99_ms));
    }
    if let (Some(pct), Some(live)) = (g.max_regression_pct, live) {
        match load_p99(g, live) {
            Ok((lt, li)) => {
                details["live_ttft_p99_ms"] = json!(lt);
                details["live_itl_p99_ms"] = json!(li);
                let bound = 1.0 + pct / 100.0;
                if ttft > lt * bound {
                    fails.push(format!("p99 TTFT {ttft:.1} ms is more than {pct}% over live's {lt:.1} ms"));
                }
                if itl > li * bound {
                    fails.push(format!("p99 ITL {itl:.1} ms is more than {pct}% over live's {li:.1} ms"));
                }
            }
            Err(e) => fails.push(format!("could not measure the live slot: {e}")),
        }
    }
    let summary =
        if fails.is_empty() { format!("p99 TTFT {ttft:.1} ms, p99 ITL {itl:.1} ms") } else { fails.join("; ") };
    result("latency", fails.is_empty(), summary, details)
}

fn agreement(cfg: &GatesConfig, standby: &Engine, live: Option<&Engine>) -> GateResult {
    let g = &cfg.agreement;
    let Some(live) = live.filter(|_| g.enabled) else {
        return skipped("agreement", if g.enabled { "no live slot to compare with" } else { "disabled" });
    };
    let greedy_text = |e: &Engine, p: &ProbePrompt| -> Option<String> {
        let ids = p.tokens(e).ok()?;
        probe::run(e, ids, probe::greedy(g.max_tokens.max(1), true)).ok().map(|r| r.text)
    };
    let prompts = prompt_set(cfg);
    let same =
        prompts.iter().filter(|p| greedy_text(standby, p).is_some_and(|t| Some(t) == greedy_text(live, p))).count();
    let share = same as f64 / prompts.len() as f64;
    let ok = g.threshold.is_none_or(|t| share >= t);
    let summary = match g.threshold {
        Some(t) => format!("{same}/{} prompts agree with live (share {share:.2}, threshold {t:.2})", prompts.len()),
        None => format!("{same}/{} prompts agree with live (share {share:.2}; reported only)", prompts.len()),
    };
    result("agreement", ok, summary, json!({"share": share, "prompts": prompts.len(), "threshold": g.threshold}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(text: &str, tokens: Vec<u32>) -> ProbeResult {
        ProbeResult {
            text: text.into(),
            tokens,
            finish: None,
            completion_tokens: 0,
            ttft: 0.0,
            itl: vec![],
            total: 0.0,
        }
    }

    #[test]
    fn golden_case_checks_text_substrings_and_tokens() {
        let c = GoldenCase { expect_text: Some("a b".into()), ..Default::default() };
        assert!(c.mismatch(&out("a b", vec![])).is_none());
        assert!(c.mismatch(&out("a c", vec![])).unwrap().contains("expected text"));
        let c =
            GoldenCase { expect_contains: vec!["Paris".into()], expect_tokens: Some(vec![1, 2]), ..Default::default() };
        assert!(c.mismatch(&out("It is Paris.", vec![1, 2, 3])).is_none());
        assert!(c.mismatch(&out("It is Rome.", vec![1, 2])).unwrap().contains("Paris"));
        assert!(c.mismatch(&out("Paris", vec![1, 3])).unwrap().contains("tokens"));
    }

    #[test]
    fn config_defaults_and_toml() {
        let c: GatesConfig = toml::from_str(
            "[golden]\nthreshold = 0.5\n[[golden.cases]]\nprompt = \"Hi\"\nexpect_contains = [\"there\"]\n\
             [latency]\nenabled = true\nttft_p99_ms = 100.0\n",
        )
        .unwrap();
        assert!(c.health.enabled && c.smoke.enabled && c.latency.enabled && c.agreement.enabled);
        assert_eq!(c.golden.cases.len(), 1);
        assert_eq!(c.latency.itl_p99_ms, 500.0);
        assert!(toml::from_str::<GatesConfig>("[smoke]\nrequest = 3\n").is_err());
    }

    #[test]
    fn first_failure_names_the_gate() {
        let r = GateReport {
            passed: false,
            forced: false,
            seconds: 0.0,
            results: vec![
                skipped("health", "disabled"),
                result("golden", false, "0/1 cases passed".into(), Value::Null),
            ],
        };
        assert_eq!(r.first_failure().unwrap(), "golden gate failed: 0/1 cases passed");
    }
}
