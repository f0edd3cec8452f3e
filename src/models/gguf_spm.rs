//! SentencePiece vocabularies inside GGUF (`tokenizer.ggml.model = "llama"`: Llama 2, Mistral, Gemma), rebuilt as
//! a Hugging Face BPE tokenizer the way transformers converts a SentencePiece model: every way of splitting a
//! piece into two pieces of the vocabulary is a merge, ranked by the piece's score (higher first), with byte
//! fallback for characters outside the vocabulary; spaces become "▁" (and a leading one is added when
//! `tokenizer.ggml.add_space_prefix` says so); control tokens are special, user-defined ones are matched whole.

#![deny(clippy::indexing_slicing)]

use crate::error::{Result, TealError};
use tokenizers::decoders::{byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence, strip::Strip};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, Tokenizer};

/// Token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The longest piece split into merges: longer pieces (rare) are reached through their shorter splits.
const MAX_PIECE_CHARS: usize = 64;
/// Most merges a vocabulary may imply (Gemma 3's 262,144 pieces need far fewer): a file whose every piece splits
/// every way into other pieces is refused before it costs gigabytes.
const MAX_MERGES: usize = 8 << 20;

/// What the GGUF says about a SentencePiece vocabulary.
pub struct SpmVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i64>,
    pub add_space_prefix: bool,
    pub unk: Option<u32>,
}

/// The merges implied by the vocabulary: for each normal piece, each split into two pieces of the vocabulary,
/// ordered by the piece's score (then by id, then by the split point, so the order is total and stable).
fn merges(v: &SpmVocab, vocab: &ahash::AHashMap<String, u32>, max: usize) -> Result<Vec<(String, String)>> {
    let mut ranked: Vec<(f32, u32, usize, String, String)> = vec![];
    for (id, piece) in v.tokens.iter().enumerate() {
        let kind = v.types.get(id).copied().unwrap_or(1);
        if kind != NORMAL || piece.chars().count() > MAX_PIECE_CHARS {
            continue;
        }
        let score = v.scores.get(id).copied().unwrap_or(0.0);
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                if ranked.len() >= max {
                    return Err(TealError::InvalidModel(format!(
                        "GGUF tokenizer: the vocabulary implies more than {max} merges"
                    )));
                }
                ranked.push((score, id as u32, at, left.to_string(), right.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    Ok(ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect())
}

/// The Hugging Face tokenizer for a SentencePiece vocabulary.
pub fn tokenizer(v: &SpmVocab) -> Result<Tokenizer> {
    if v.scores.len() != v.tokens.len() {
        return Err(TealError::InvalidModel(format!(
            "GGUF tokenizer: {} tokens but {} scores",
            v.tokens.len(),
            v.scores.len()
        )));
    }
    let vocab: ahash::AHashMap<String, u32> = v.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges(v, &vocab, MAX_MERGES)?;
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = v.unk.and_then(|i| v.tokens.get(i as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(|e| TealError::Tokenizer(format!("GGUF SentencePiece: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(|e| TealError::Tokenizer(e.to_string()));
    let mut norm = vec![];
    if v.add_space_prefix {
        norm.push(NormalizerWrapper::Prepend(Prepend::new("▁".into())));
    }
    norm.push(NormalizerWrapper::Replace(replace(" ", "▁")?));
    tok.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norm)));
    let mut dec = vec![DecoderWrapper::Replace(replace("▁", " ")?), ByteFallback::default().into(), Fuse::new().into()];
    if v.add_space_prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(Sequence::new(dec)));
    // Control tokens are special (matched in a prompt only where special tokens are, skipped in output);
    // user-defined ones are ordinary text matched whole, as llama.cpp does.
    let of_type = |kind: i64| -> Vec<AddedToken> {
        let pieces = v.tokens.iter().zip(&v.types).filter(|(_, &t)| t == kind);
        pieces.map(|(s, _)| AddedToken::from(s.replace('▁', " "), kind == CONTROL).normalized(false)).collect()
    };
    tok.add_special_tokens(&of_type(CONTROL));
    tok.add_tokens(&of_type(USER_DEFINED));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(pieces: &[&str]) -> SpmVocab {
        SpmVocab {
            tokens: pieces.iter().map(|p| p.to_string()).collect(),
            scores: (0..pieces.len()).map(|i| -(i as f32)).collect(),
            types: vec![NORMAL; pieces.len()],
            add_space_prefix: false,
            unk: None,
        }
    }

    #[test]
    fn merges_follow_scores_and_their_number_is_bounded() {
        let v = vocab(&["a", "b", "c", "ab", "abc", "bc"]);
        let map: ahash::AHashMap<String, u32> =
            v.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let m = merges(&v, &map, 100).unwrap();
        // "ab" (score -3) before "abc"'s splits (-4) before "bc" (-5).
        assert_eq!(m.first(), Some(&("a".to_string(), "b".to_string())));
        assert_eq!(m.len(), 4, "{m:?}");
        let err = merges(&v, &map, 3).unwrap_err().to_string();
        assert!(err.contains("more than 3 merges"), "{err}");
        let tok = tokenizer(&v).unwrap();
        let ids = tok.encode("abcab", false).unwrap();
        assert_eq!(ids.get_ids(), [4, 3], "abc then ab");
    }
}
