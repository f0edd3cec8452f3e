//! Tokenizers rebuilt from GGUF metadata against llama.cpp on the same file: the ids of a mixed text set
//! (whitespace runs, digits, emoji, CJK, code) are llama.cpp's, and decoding them gives the text back. Gemma 3's
//! GGUF carries a SentencePiece vocabulary (262,144 pieces, byte fallback, user-defined whitespace pieces);
//! SmolLM2's a byte-level BPE one. The fixtures come from tests/reference/make_gguf_tokenizer_reference.py.
//! Other families' real vocabularies (Qwen2, Phi-3, Llama 2 and 3, GPT-2, StarCoder, Refact) come as GGUF vocab
//! files with texts and the ids their Hugging Face tokenizers give (llama.cpp's tokenizer tests, fetched by
//! scripts/fetch-models.sh).

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

/// Each family's texts (`.inp`, separated by `__ggml_vocab_test__` lines) tokenize to the ids its Hugging Face
/// tokenizer gave without special tokens (`.out`, a line per text).
#[test]
fn vocabularies_of_other_families_tokenize_as_their_hugging_face_tokenizers() {
    let mut wrong = vec![];
    for name in ["qwen2", "phi-3", "llama-spm", "llama-bpe", "gpt-2", "starcoder", "refact"] {
        let gguf = common::vocab_path(name);
        let tok = teal::models::gguf_tokenizer(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
        let inp = std::fs::read_to_string(gguf.with_extension("gguf.inp")).unwrap();
        let out = std::fs::read_to_string(gguf.with_extension("gguf.out")).unwrap();
        const SEP: &str = "\n__ggml_vocab_test__\n";
        let texts: Vec<&str> = inp.strip_suffix(SEP).unwrap_or(&inp).split(SEP).collect();
        let ids: Vec<Vec<u32>> =
            out.lines().map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect()).collect();
        assert_eq!(texts.len(), ids.len(), "{name}: texts and id lines");
        assert!(texts.len() >= 40, "{name}: {} texts", texts.len());
        for (text, want) in texts.iter().zip(&ids) {
            let got = tok.encode(text, false).unwrap();
            if &got != want {
                wrong.push(format!("{name} {text:?}\n  hf   {want:?}\n  teal {got:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{} texts differ:\n{}", wrong.len(), wrong.join("\n"));
}
