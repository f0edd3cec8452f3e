//! Model outputs against Hugging Face transformers (fixtures made by tests/reference/make_reference.py):
//! last-position logits within 1e-3 relative error and the first 32 greedy tokens identical, for
//! stories260K (safetensors) and SmolLM2 (GGUF dequantized to f32); quantized SmolLM2 against llama.cpp.

use crate::common;

use crate::common::direct::{forced, greedy};
use candle_core::DType;
use serde_json::Value;
use teal::models::{load, LanguageModel, LoadOptions};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/reference_{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// max |a - b| / max |b|
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
}

fn check_model(model: &LanguageModel, fx: &Value, greedy_len: usize, check_logits: bool) {
    for case in fx["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_ids = ids(&case["input_ids"]);
        assert_eq!(model.tokenizer.encode(prompt, true).unwrap(), want_ids, "tokenization of {prompt:?}");
        let (logits, out) = greedy(model, &want_ids, greedy_len).unwrap();
        if check_logits {
            let want: Vec<f32> =
                case["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let err = rel_err(&logits, &want);
            assert!(err < 1e-3, "{prompt:?}: logits relative error {err}");
        }
        let want_greedy = ids(&case["greedy_ids"]);
        assert_eq!(out, want_greedy[..greedy_len], "{prompt:?}: greedy tokens");
    }
    for t in fx["tokenize"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        assert_eq!(model.tokenizer.encode(text, true).unwrap(), ids(&t["ids"]), "tokenization of {text:?}");
    }
}

#[test]
fn stories260k_matches_transformers() {
    let model =
        load(&common::stories_dir(), &LoadOptions { device: candle_core::Device::Cpu, dtype: None, share: None })
            .unwrap();
    check_model(&model, &fixture("stories260k"), 32, true);
}

#[test]
fn smollm2_dequantized_matches_transformers() {
    let opts = LoadOptions { device: candle_core::Device::Cpu, dtype: Some(DType::F32), share: None };
    let model = load(&common::smollm_path(), &opts).unwrap();
    let fx = fixture("smollm2");
    check_model(&model, &fx, 32, true);
    let chat = &fx["chat"];
    let messages: Vec<teal::models::chat_template::ChatMessage> =
        serde_json::from_value(chat["messages"].clone()).unwrap();
    let text = model
        .chat_template
        .as_ref()
        .unwrap()
        .render(&messages, &model.tokenizer.bos_token, &model.tokenizer.eos_token, 1 << 20)
        .unwrap();
    assert_eq!(model.tokenizer.encode(&text, false).unwrap(), ids(&chat["ids"]), "chat prompt ids");
}

/// Quantized (Q4_1) inference against llama.cpp on the same GGUF (fixture from
/// tests/reference/make_llamacpp_reference.py, llama.cpp's KV cache in f32 like teal's). Teacher-forced on
/// llama.cpp's whole greedy continuation: at every position llama.cpp's token is within 0.5 nats of teal's own
/// best (the largest gap measured 2026-12-03 on an AMD EPYC: 0.34, at token 15 of the third prompt). Greedy runs part at the first near tie, and which way a near tie goes follows the last bits of the
/// arithmetic (the exp in SiLU and softmax, the attention's summation order; ggml has its own of each): on
/// "The capital of France is" teal agreed 16, 14 or 7 of 16 tokens as those changed (2026-12-03), so the greedy
/// prefix is only printed, with a floor of 4 tokens that a real fault would not reach. Then, teacher-forced the same way, the
/// transformers f32 tokens wherever llama.cpp keeps them: Q4_1 rounding flips a near-tie at token 6 of "The capital of France
/// is" in llama.cpp and teal alike.
#[test]
fn smollm2_quantized_matches_llama_cpp_and_the_f32_reference() {
    let model =
        load(&common::smollm_path(), &LoadOptions { device: candle_core::Device::Cpu, dtype: None, share: None })
            .unwrap();
    let lcpp_path = format!("{}/tests/fixtures/llamacpp_smollm2_q4_1.json", env!("CARGO_MANIFEST_DIR"));
    let lcpp: Value = serde_json::from_str(&std::fs::read_to_string(lcpp_path).unwrap()).unwrap();
    let mut far = vec![];
    for case in lcpp["cases"].as_array().unwrap() {
        let (input, want) = (ids(&case["input_ids"]), ids(&case["greedy_ids"]));
        for (i, (best, theirs, id)) in forced(&model, &input, &want).unwrap().into_iter().enumerate() {
            if best - theirs > 0.5 {
                let gap = best - theirs;
                far.push(format!(
                    "case {:?} token {i}: llama.cpp's {} is {gap:.2} nats below teal's {id}",
                    case["prompt"], want[i]
                ));
            }
        }
        let (_, got) = greedy(&model, &input, want.len()).unwrap();
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!("agreement with llama.cpp: {same} of {} tokens", want.len());
        assert!(same >= 4, "only {same} greedy tokens agree with llama.cpp: {got:?} vs {want:?}");
    }
    assert!(far.is_empty(), "{}", far.join("\n"));
    let fx = fixture("smollm2");
    for (case, l) in fx["cases"].as_array().unwrap().iter().zip(lcpp["cases"].as_array().unwrap()) {
        let (reference, quantized) = (ids(&case["greedy_ids"]), ids(&l["greedy_ids"]));
        let agree = reference.iter().zip(&quantized).take_while(|(a, b)| a == b).count().min(8);
        assert!(agree >= 5, "Q4_1 and f32 part after {agree} tokens");
        for (i, (best, theirs, id)) in
            forced(&model, &ids(&case["input_ids"]), &reference[..agree]).unwrap().into_iter().enumerate()
        {
            assert!(
                best - theirs <= 0.5,
                "{:?} token {i}: transformers' {} is {:.2} nats below teal's {id}",
                case["prompt"],
                reference[i],
                best - theirs
            );
        }
    }
}
