//! Tokenizers rebuilt from GGUF metadata against llama.cpp on the same file: the ids of a mixed text set
//! (whitespace runs, digits, emoji, CJK, code) are llama.cpp's, and decoding them gives the text back. Gemma 3's
//! GGUF carries a SentencePiece vocabulary (262,144 pieces, byte fallback, user-defined whitespace pieces);
//! SmolLM2's a byte-level BPE one. The fixtures come from tests/reference/make_gguf_tokenizer_reference.py.

use crate::common;

use serde_json::Value;
use std::path::Path;

fn check(name: &str, gguf: &Path) {
    let fixture: Value = common::read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/llamacpp_tokens_{name}.json")),
    );
    let tok = teal::models::gguf_tokenizer(gguf).unwrap();
    let mut wrong = vec![];
    for case in fixture["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, false).unwrap();
        if got != want {
            wrong.push(format!("{text:?}\n  llama.cpp {want:?}\n  teal      {got:?}"));
            continue;
        }
        assert_eq!(tok.decode(&got).unwrap(), text, "{name}: decoding {text:?}");
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {} texts differ:\n{}",
        wrong.len(),
        fixture["cases"].as_array().unwrap().len(),
        wrong.join("\n")
    );
}

#[test]
fn gemma3_sentencepiece_from_gguf_tokenizes_like_llama_cpp() {
    let tok = teal::models::gguf_tokenizer(&common::gemma_path()).unwrap();
    assert_eq!((tok.bos_id, tok.add_bos), (Some(2), true));
    assert_eq!(tok.eos_ids, [1, 106], "<eos> and <end_of_turn>");
    check("gemma3", &common::gemma_path());
}

#[test]
fn smollm2_bpe_from_gguf_tokenizes_like_llama_cpp() {
    check("smollm2", &common::smollm_path());
}
