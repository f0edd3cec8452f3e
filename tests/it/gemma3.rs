//! Gemma 3 270M Q4_K_M served from its GGUF alone (weights, tokenizer, Gemma's turn format), against llama.cpp on the
//! same file: tests/fixtures/llamacpp_gemma3_q4_k_m*.json, from tests/reference/make_llamacpp_gemma_reference.py,
//! hold llama.cpp's greedy tokens and, at each step, its five most likely tokens with their log-probabilities.
//!
//! teal computes what ggml computes for a GGUF (8-bit activations, one scale per 32 values, per 256 for
//! K-quants as Q8_K; ggml's f16 GELU table), but sums in other orders, and Gemma's 8-bit activations turn
//! last-bit differences into ~0.05 nats. Greedy runs part at near ties: "Once upon a time, there was a" has four
//! first tokens within 0.33 nats, and llama.cpp's own builds part there: the same sources compiled natively on an
//! AMD EPYC Zen 5, natively on an Intel Xeon (both AVX-512 VNNI) and for AVX2 alone start that continuation with
//! three different tokens (its `-ub 2` and `-fa off` do not reproduce its default either). ggml picks its kernels,
//! and so its summation orders, when it is compiled, so each reference records its build. teal's AVX-512 VNNI
//! kernels agree with the native Xeon build for 16 of 16 tokens on the two prompts, and are held to at
//! least 12 there (its VNNI run agreed with the Zen 5 reference for the same 16, 0, 16 and 2 tokens on that Zen 5
//! and on the Xeon). teal's AVX2 kernels agree with the AVX2 build for 16, 0, 16, 16 and with the Xeon build for
//! 16, 16, 16, 2 (2026-12-03, on the Xeon with `TEAL_CPU_KERNEL=avx2`); no build is held to them, since no
//! AVX2-only CPU has run this comparison.
//! Every reference is also checked teacher-forced: at every position llama.cpp's token's log-probability under
//! teal is within 0.4 nats of llama.cpp's own, and within 0.5 nats of teal's best.

use crate::common;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use teal::config::ServeArgs;
use teal::engine::request::{Event, PositionScore, SamplingParams};
use teal::engine::{Engine, EngineConfig};
use teal::models::cpu_quant::Isa;
use teal::models::{load, LoadOptions};

/// llama.cpp's references, one per build (`ggml_isa` in each says which; `teal_kernel` names the teal kernel
/// whose greedy run is held to it, if any).
const REFERENCES: [&str; 3] =
    ["llamacpp_gemma3_q4_k_m.json", "llamacpp_gemma3_q4_k_m_xeon_avx512.json", "llamacpp_gemma3_q4_k_m_avx2.json"];

/// The prompts the issue holds greedy agreement to (the first two of every reference).
const HELD: usize = 2;

fn reference(name: &str) -> Value {
    common::read_json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
}

fn fixture() -> Value {
    reference(REFERENCES[0])
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

async fn scores(e: &Engine, tokens: Vec<u32>, from: usize) -> Vec<PositionScore> {
    let mut rx = e.submit_score(tokens, from, vec![]).unwrap();
    while let Some(ev) = rx.recv().await {
        if let Event::Scored(s) = ev {
            return s;
        }
    }
    panic!("no scores")
}

async fn greedy(e: &Engine, prompt: Vec<u32>, n: usize) -> Vec<u32> {
    let params = SamplingParams { temperature: 0.0, max_tokens: n, ignore_eos: true, ..Default::default() };
    let mut rx = e.submit(prompt, params).unwrap();
    let mut out = vec![];
    while let Some(ev) = rx.recv().await {
        if let Event::Token { id, .. } = ev {
            out.push(id);
        }
    }
    out
}

/// llama.cpp's continuation of one case, teacher-forced through teal: the positions where its token scores
/// far from llama.cpp's own log-probability or far below teal's best.
async fn far_positions(e: &Engine, input: &[u32], case: &Value, build: &str) -> Vec<String> {
    let prompt = case["prompt"].as_str().unwrap();
    let want = ids(&case["greedy_ids"]);
    let all: Vec<u32> = input.iter().chain(&want).copied().collect();
    let mut far = vec![];
    for (i, s) in scores(e, all, input.len()).await.iter().enumerate() {
        let gap = s.top1.1 - s.logprob;
        let theirs = case["top_logprobs"][i].as_array().unwrap().iter().find(|t| t[0] == want[i]).unwrap()[1]
            .as_f64()
            .unwrap() as f32;
        if (s.logprob - theirs).abs() > 0.4 {
            far.push(format!(
                "{build}, {prompt:?} token {i}: llama.cpp's {} has log-probability {:.3} under teal, {theirs:.3} under llama.cpp",
                want[i], s.logprob
            ));
        }
        if gap > 0.5 {
            far.push(format!(
                "{build}, {prompt:?} token {i}: llama.cpp's {} is {gap:.2} nats below teal's {}",
                want[i], s.top1.0
            ));
        }
    }
    far
}

#[tokio::test]
async fn llama_cpps_tokens_score_as_in_llama_cpp_and_greedy_agrees_with_its_build() {
    let opts = LoadOptions { device: candle_core::Device::Cpu, dtype: None, share: None };
    let model = Arc::new(load(&common::gemma_path(), &opts).unwrap());
    assert_eq!(model.llama.config().num_layers, 18);
    let metrics = teal::telemetry::Metrics::new().for_slot("gemma3", "blue", "v");
    let e =
        Engine::start(model.clone(), EngineConfig { max_total_tokens: 2048, ..Default::default() }, metrics).unwrap();
    let kernel = format!("{:?}", Isa::active());
    let refs: Vec<Value> = REFERENCES.iter().map(|n| reference(n)).collect();
    let mut far = vec![];
    let mut held = 0;
    for (n, case) in refs[0]["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = case["prompt"].as_str().unwrap();
        let input = ids(&case["input_ids"]);
        assert_eq!(model.tokenizer.encode(prompt, true).unwrap(), input, "tokenization of {prompt:?}");
        let got = greedy(&e, input.clone(), 16).await;
        for r in &refs {
            let (build, case) = (r["ggml_isa"].as_str().unwrap(), &r["cases"][n]);
            assert_eq!(ids(&case["input_ids"]), input, "{build}: llama.cpp's tokens of {prompt:?}");
            far.extend(far_positions(&e, &input, case, build).await);
            let want = ids(&case["greedy_ids"]);
            let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            eprintln!(
                "{prompt:?}: teal ({kernel}) agrees with llama.cpp ({build}) for {same} of {} tokens",
                want.len()
            );
            if n < HELD && r["teal_kernel"] == kernel.as_str() {
                held += 1;
                if same < 12 {
                    far.push(format!("{prompt:?}: greedy agrees with llama.cpp ({build}) for {same} of 16 tokens"));
                }
            }
        }
    }
    eprintln!("greedy agreement held to a reference for {held} prompts (kernel {kernel})");
    if Isa::active() == Isa::Avx512Vnni {
        assert_eq!(held, HELD, "the VNNI kernels' greedy runs are held to one reference per prompt");
    }
    assert!(far.is_empty(), "{}", far.join("\n"));
}

#[tokio::test]
async fn teal_serves_gemma3_from_its_gguf_alone() {
    let s = common::TestServer::start(common::gemma_path(), ServeArgs::default()).await;
    let model = s.get("/v1/models").await.json::<Value>().await.unwrap()["data"][0]["id"].as_str().unwrap().to_string();
    let body = json!({"model": model, "prompt": "def fibonacci(n):", "max_tokens": 16, "temperature": 0,
                      "ignore_eos": true});
    let v: Value = s.post("/v1/completions", body).await.json().await.unwrap();
    let text = v["choices"][0]["text"].as_str().unwrap_or_else(|| panic!("{v}"));
    let want = ids(&fixture()["cases"][2]["greedy_ids"]);
    let tok = teal::models::gguf_tokenizer(&common::gemma_path()).unwrap();
    assert_eq!(text, tok.decode(&want).unwrap(), "the greedy continuation llama.cpp gives");
    // This GGUF is the pretrained (not instruction-tuned) 270M and carries no chat template: teal renders Gemma's
    // turn format for it; the answer's quality is not this test's business, the prompt is.
    let chat = json!({"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "What is the capital of France?"}],
                      "max_tokens": 8, "temperature": 0});
    let v: Value = s.post("/v1/chat/completions", chat).await.json().await.unwrap();
    let rendered = "<bos><start_of_turn>user\nBe brief.\n\nWhat is the capital of France?<end_of_turn>\n\
                    <start_of_turn>model\n";
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(tok.encode(rendered, false).unwrap().len() as u64), "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
}
