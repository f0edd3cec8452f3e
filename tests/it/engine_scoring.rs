//! Teacher-forced scoring (what a rollout's teacher-forced shadow runs on the other version): reading a greedy
//! answer back in one prefill reproduces, position by position, what the model chose and reported while it
//! generated the answer, also when the prefill is cut into chunks that predict nothing. Out-of-bounds scoring
//! requests are refused before they are queued.

use crate::common;
use std::path::Path;
use std::sync::Arc;
use teal::engine::request::{Event, PositionScore, SamplingParams, TokenLogprob};
use teal::engine::{score, Engine, EngineConfig};
use teal::models::{load, LoadOptions};
use teal::rollout::teacher;

fn engine(path: &Path, max_step_tokens: usize) -> Engine {
    let model = load(path, &LoadOptions { device: candle_core::Device::Cpu, dtype: None, share: None }).unwrap();
    let metrics = teal::telemetry::Metrics::new().for_slot("m", "blue", "v");
    Engine::start(Arc::new(model), EngineConfig { max_step_tokens, ..Default::default() }, metrics).unwrap()
}

async fn greedy(e: &Engine, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<TokenLogprob>) {
    let params =
        SamplingParams { temperature: 0.0, max_tokens: n, ignore_eos: true, logprobs: Some(5), ..Default::default() };
    let mut rx = e.submit(prompt.to_vec(), params).unwrap();
    let (mut ids, mut lps) = (vec![], vec![]);
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { id, logprob, .. } => {
                ids.push(id);
                lps.push(logprob.unwrap());
            }
            Event::Done { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    (ids, lps)
}

async fn scored(e: &Engine, prompt: &[u32], ids: &[u32], live: &[TokenLogprob]) -> Vec<PositionScore> {
    let all: Vec<u32> = prompt.iter().chain(ids).copied().collect();
    let ask = live.iter().map(|l| l.top.iter().map(|t| t.0).collect()).collect();
    let mut rx = e.submit_score(all, prompt.len(), ask).unwrap();
    let mut out = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Scored(s) => out = Some(s),
            Event::Done { completion_tokens, .. } => {
                assert_eq!(completion_tokens, 0, "scoring generates nothing");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out.expect("a Scored event before Done")
}

/// Greedy answer, then its scores with whole and with chunked prefill: (top-1 matches, largest logprob gap).
async fn check(path: &Path, prompt_text: &str, n: usize) -> (usize, f32, teacher::Forced) {
    let whole = engine(path, 512);
    let prompt = whole.model().tokenizer.encode(prompt_text, true).unwrap();
    let (ids, live) = greedy(&whole, &prompt, n).await;
    let s = scored(&whole, &prompt, &ids, &live).await;
    assert_eq!(s.len(), n);
    // 7 tokens per step: the prompt's first chunks have no scored position (no logits rows at all).
    let chunked = engine(path, 7);
    let c = scored(&chunked, &prompt, &ids, &live).await;
    for (a, b) in s.iter().zip(&c) {
        assert_eq!(a.top1.0, b.top1.0, "chunking changed a top choice");
        assert!((a.logprob - b.logprob).abs() < 1e-3, "{} vs {}", a.logprob, b.logprob);
    }
    let matches = s.iter().zip(&ids).filter(|(p, id)| p.top1.0 == **id).count();
    let gap = s.iter().zip(&live).map(|(p, l)| (p.logprob - l.logprob).abs()).fold(0.0, f32::max);
    let f = teacher::compare(&live, &s).unwrap();
    whole.shutdown();
    chunked.shutdown();
    (matches, gap, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_a_greedy_answer_reproduces_its_choices_and_logprobs() {
    // stories260K (f32): prefill and decode do the same arithmetic in another order.
    let (matches, gap, f) = check(&common::stories_dir(), "Once upon a time, there was a", 40).await;
    eprintln!("stories260K: {matches}/40 top-1, largest logprob gap {gap}, {f:?}");
    assert_eq!(matches, 40, "every greedy choice is the scored top choice");
    assert!(gap < 1e-3, "logprob gap {gap}");
    assert!(f.top1 == 1.0 && f.kl < 1e-4 && f.ll_delta.abs() < 1e-3, "{f:?}");
    // SmolLM2 Q4_1: a prefill quantizes activations in blocks of another batch shape; ties may flip.
    let (matches, gap, f) = check(&common::smollm_path(), "The capital of France is", 32).await;
    eprintln!("SmolLM2 Q4_1: {matches}/32 top-1, largest logprob gap {gap}, {f:?}");
    assert!(matches >= 30, "{matches}/32");
    assert!(f.kl < 0.01 && f.ll_delta.abs() < 0.05, "{f:?}");
}

#[tokio::test]
async fn out_of_bounds_scoring_requests_are_refused() {
    let e = engine(&common::stories_dir(), 512);
    let toks = vec![1u32; score::MAX_SCORED + 2];
    assert!(e.submit_score(toks.clone(), 1, vec![]).is_err(), "too many scored tokens");
    assert!(e.submit_score(toks.clone(), 0, vec![]).is_err(), "nothing before the first scored token");
    assert!(e.submit_score(toks.clone(), toks.len(), vec![]).is_err(), "nothing scored");
    let many = vec![vec![1u32; score::MAX_ASKED + 1]];
    assert!(e.submit_score(toks.clone(), toks.len() - 1, many).is_err(), "too many asked ids");
    let out_of_vocab = vec![vec![u32::MAX]];
    let mut rx = e.submit_score(vec![1, 2, 3], 2, out_of_vocab).unwrap();
    let Some(Event::Scored(s)) = rx.recv().await else { panic!("no scores") };
    assert_eq!(s[0].asked, vec![f32::NEG_INFINITY], "an id outside the vocabulary has no probability");
    e.shutdown();
}
