//! Qwen2, Qwen3, Phi-3, Mistral (sliding window) and Gemma 3 as HF directories hold it, and Qwen2, Qwen3 and Phi-3 as
//! llama.cpp's converter writes them to GGUF, against transformers: tiny checkpoints made from the real
//! config classes with random weights (tests/reference/make_tiny_arch_reference.py), last-position logits within
//! 1e-3 and 32 greedy tokens identical, on the CPU and through the paged KV cache like every model teal serves.

use crate::common::direct::greedy;
use candle_core::{DType, Device};
use serde_json::Value;
use std::path::PathBuf;
use teal::models::{load, LoadOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn check(arch: &str) {
    check_file(arch, &fixtures().join(arch), Some(DType::F32));
}

/// The same checkpoint as llama.cpp's converter writes it (tests/fixtures/tiny/<arch>.gguf, from
/// tests/reference/make_tiny_gguf.py): the same logits and tokens, and a vocabulary that tokenizes as the
/// checkpoint's tokenizer.json does.
fn check_gguf(arch: &str) {
    let file = fixtures().join(format!("{arch}.gguf"));
    check_file(arch, &file, None);
    let from_gguf = teal::models::gguf_tokenizer(&file).unwrap();
    let opts = LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), share: None };
    let dir_model = load(&fixtures().join(arch), &opts).unwrap();
    let from_json = &dir_model.tokenizer;
    for text in ["Once upon a time, there was a little girl.", "  two  spaces\nand 123 digits", "Lily's cat."] {
        assert_eq!(from_gguf.encode(text, true).unwrap(), from_json.encode(text, true).unwrap(), "{arch}: {text:?}");
    }
}

fn check_file(arch: &str, path: &std::path::Path, dtype: Option<DType>) {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(reference["prompt_ids"].clone()).unwrap();
    let steps = reference["steps"].as_u64().unwrap() as usize;
    let want = &reference["models"][arch];
    let want_logits: Vec<f32> = serde_json::from_value(want["last_logits"].clone()).unwrap();
    let want_ids: Vec<u32> = serde_json::from_value(want["greedy"].clone()).unwrap();
    let m = load(path, &LoadOptions { device: Device::Cpu, dtype, share: None })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (logits, got) = greedy(&m, &ids, steps).unwrap();
    let diff = logits.iter().zip(&want_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert_eq!(logits.len(), want_logits.len());
    assert!(diff < 1e-3, "{arch}: logits differ from transformers by {diff}");
    assert_eq!(got, want_ids, "{arch}: greedy tokens differ from transformers");
}

#[test]
fn qwen2_with_qkv_bias_matches_transformers() {
    check("qwen2");
}

#[test]
fn qwen3_with_qk_norm_and_tied_embeddings_matches_transformers() {
    check("qwen3");
}

#[test]
fn phi3_with_fused_projections_matches_transformers() {
    check("phi3");
}

#[test]
fn qwen2_qwen3_and_phi3_from_llama_cpps_gguf_match_transformers() {
    for arch in ["qwen2", "qwen3", "phi3"] {
        check_gguf(arch);
    }
}

#[test]
fn mistral_with_a_sliding_window_shorter_than_the_text_matches_transformers() {
    check("mistral");
}

#[test]
fn gemma3_from_an_hf_directory_matches_transformers() {
    check("gemma3");
}

#[test]
fn a_config_teal_cannot_run_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::copy_dir(&fixtures().join("qwen2"), dir.path());
    let cfg = dir.path().join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["use_sliding_window"] = true.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    let opts = LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), share: None };
    let err = load(dir.path(), &opts).err().expect("refused").to_string();
    assert!(err.contains("use_sliding_window"), "{err}");
    crate::common::copy_dir(&fixtures().join("phi3"), dir.path());
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["attention_bias"] = true.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    let err = load(dir.path(), &opts).err().expect("refused").to_string();
    assert!(err.contains("phi3 with attention_bias"), "{err}");
}

/// Every family through a real server (memory estimate from the file headers, engine thread, paged KV cache,
/// continuous batching): the greedy answer to the reference prompt is transformers' 32 tokens (compared as the
/// tokens `logprobs` names: the random models write stray byte tokens, whose text a stream cannot match exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_serves_the_reference_answer_over_http() {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(reference["prompt_ids"].clone()).unwrap();
    for arch in ["qwen2", "qwen3", "phi3", "mistral", "gemma3"] {
        let want: Vec<u32> = serde_json::from_value(reference["models"][arch]["greedy"].clone()).unwrap();
        let args = teal::config::ServeArgs { served_model_name: Some("m".into()), ..Default::default() };
        let s = crate::common::TestServer::start(fixtures().join(arch), args).await;
        let body = serde_json::json!({"model": "m", "prompt": ids, "max_tokens": want.len(), "temperature": 0,
            "ignore_eos": true, "logprobs": 0});
        let r = reqwest::Client::new().post(format!("{}/v1/completions", s.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{arch}");
        let v: Value = r.json().await.unwrap();
        let tok = load(&fixtures().join(arch), &LoadOptions { device: Device::Cpu, dtype: None, share: None })
            .unwrap()
            .tokenizer;
        let want: Vec<String> = want.iter().map(|&id| tok.token_text(id)).collect();
        let got: Vec<String> = serde_json::from_value(v["choices"][0]["logprobs"]["tokens"].clone()).unwrap();
        assert_eq!(got, want, "{arch}: {v}");
        s.stop().await.unwrap();
    }
}
