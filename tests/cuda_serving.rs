//! The served CUDA path, on cuda:0 (issue 22): SmolLM2's Q4_1/Q8_0 weights as served (candle's quantized
//! matmuls) against the CPU; two models generating at the same time on one GPU against their solo runs (the one
//! stream per device keeps them from racing on candle's shared scratch buffers); through a real server, a prompt
//! longer than a step (chunked prefill, where a step can have no logits rows) against the same prompt in one
//! step; and park/wake moving the weights device -> host -> device. Built only with `--features cuda`; run on a
//! machine with a GPU: `cargo test --release --features cuda --test cuda_serving` (scripts/gpu/check.sh does).
#![cfg(feature = "cuda")]

mod common;

use candle_core::Device;
use common::direct::greedy;
use common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;
use teal::config::ServeArgs;
use teal::models::{load, LanguageModel, LoadOptions};

/// Largest difference allowed between the CPU's and the GPU's logits for quantized weights: both quantize the
/// activations to 8 bits per 32 values, but round and sum in a different order (logits of SmolLM2 span ~40).
const QUANTIZED_LOGIT_TOLERANCE: f32 = 0.25;

fn gpu() -> Device {
    teal::device::parse_device("cuda:0").expect("these tests need a CUDA GPU (cuda:0)")
}

/// `path` as `teal serve` loads it (no dtype override: GGUF weights stay quantized).
fn served(path: &Path, device: Device) -> LanguageModel {
    load(path, &LoadOptions { device, dtype: None, share: None }).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn quantized_smollm2_on_cuda_matches_the_cpu() {
    let path = common::smollm_path();
    let prompt = "The capital of France is";
    let run = |device: Device| {
        let m = served(&path, device);
        let ids = m.tokenizer.encode(prompt, true).unwrap();
        greedy(&m, &ids, 16).unwrap()
    };
    let (l_cpu, t_cpu) = run(Device::Cpu);
    let (l_gpu, t_gpu) = run(gpu());
    let d = max_diff(&l_cpu, &l_gpu);
    eprintln!("SmolLM2 Q4_1 as served: max logit difference {d} (tolerance {QUANTIZED_LOGIT_TOLERANCE})");
    assert_eq!(t_cpu, t_gpu, "greedy tokens differ");
    assert!(d < QUANTIZED_LOGIT_TOLERANCE, "logits differ by {d}");
}

#[test]
fn two_models_generating_at_once_on_one_gpu_match_their_solo_runs() {
    let dev = gpu();
    let models = [served(&common::smollm_path(), dev.clone()), served(&common::stories_dir(), dev)];
    let prompt = "Once upon a time, there was a little robot who";
    let solo: Vec<(Vec<f32>, Vec<u32>)> =
        models.iter().map(|m| greedy(m, &m.tokenizer.encode(prompt, true).unwrap(), 32).unwrap()).collect();
    std::thread::scope(|scope| {
        for (m, want) in models.iter().zip(&solo) {
            scope.spawn(move || {
                let ids = m.tokenizer.encode(prompt, true).unwrap();
                for round in 0..6 {
                    let got = greedy(m, &ids, 32).unwrap();
                    assert_eq!(got.1, want.1, "round {round}: tokens differ from the solo run");
                    assert_eq!(got.0, want.0, "round {round}: logits differ from the solo run");
                }
            });
        }
    });
}

async fn complete(s: &TestServer, prompt: &str) -> String {
    let body = json!({"model": "m", "prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": true});
    let r = reqwest::Client::new().post(format!("{}/v1/completions", s.url)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

async fn op(s: &TestServer, path: &str) -> Value {
    let r = s.admin(Method::POST, path, None).await;
    assert_eq!(r.status(), 202, "{path}");
    let v: Value = r.json().await.unwrap();
    s.wait_op(v["operation"]["id"].as_str().unwrap()).await
}

fn args(max_step_tokens: usize) -> ServeArgs {
    ServeArgs {
        served_model_name: Some("m".into()),
        green: Some(common::smollm_path()),
        device: Some("cuda:0".into()),
        max_step_tokens: Some(max_step_tokens),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_prefill_and_park_wake_on_cuda() {
    // ~420 tokens: more than seven 64-token steps; the last chunks hold no logits row until the prompt ends.
    let prompt: String = (0..60).map(|i| format!("Item {i} is a small red box. ")).collect();
    let whole = TestServer::start(common::smollm_path(), args(2048)).await;
    let want = complete(&whole, &prompt).await;
    whole.stop().await.unwrap();

    let s = TestServer::start(common::smollm_path(), args(64)).await;
    assert_eq!(complete(&s, &prompt).await, want, "chunked prefill answers as one step does");
    s.wait_slot("green", "ready").await;
    let flip = |to: &'static str| {
        let s = &s;
        async move { s.admin(Method::POST, "/admin/flip", Some(json!({"to": to}))).await.status() }
    };
    assert_eq!(flip("green").await, 200);
    let before = complete(&s, "The capital of France is").await;
    assert_eq!(flip("blue").await, 200);
    s.wait_slot("green", "ready").await;
    let parked = op(&s, "/admin/slots/green/park").await;
    assert_eq!(parked["status"], "succeeded", "{parked}");
    let woken = op(&s, "/admin/slots/green/wake").await;
    assert_eq!(woken["status"], "succeeded", "{woken}");
    assert_eq!(flip("green").await, 200);
    assert_eq!(complete(&s, "The capital of France is").await, before, "identical after park and wake on the GPU");
    assert_eq!(complete(&s, &prompt).await, want, "and the long prompt too");
    s.stop().await.unwrap();
}
