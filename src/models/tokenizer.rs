//! Text <-> token ids for one model: the Hugging Face tokenizer (from tokenizer.json or rebuilt from GGUF
//! metadata), its special ids (BOS, every EOS), and streaming detokenization that never splits a UTF-8
//! character or drops a SentencePiece leading space.

#![deny(clippy::indexing_slicing)]

use super::grammar::GrammarEnv;
use crate::error::{Result, TealError};
use std::path::Path;
use tokenizers::Tokenizer;

pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos_id: Option<u32>,
    /// Every id that ends generation (tokenizer eos plus all of generation_config's eos ids).
    pub eos_ids: Vec<u32>,
    /// Whether a plain-text prompt gets a BOS token prepended.
    pub add_bos: bool,
    pub bos_token: String,
    pub eos_token: String,
    /// The longest token's text in bytes: a text longer than `tokens * max_token_bytes` needs more than
    /// `tokens` tokens, so prompts can be refused by length before they are tokenized.
    pub max_token_bytes: usize,
    /// The vocabulary as a grammar engine sees it, built at the first constrained request.
    grammar: std::sync::OnceLock<std::result::Result<std::sync::Arc<GrammarEnv>, String>>,
}

impl TextTokenizer {
    pub fn new(inner: Tokenizer, bos_id: Option<u32>, eos_ids: Vec<u32>, add_bos: bool) -> Self {
        let text = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i)).unwrap_or_default();
        let bos_token = text(bos_id);
        let eos_token = text(eos_ids.first().copied());
        // The vocabulary's strings are at least as long as the text they stand for (byte-level BPE maps each
        // byte to a character of one or two bytes; SentencePiece pieces are the text itself).
        let max_token_bytes = inner.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1);
        TextTokenizer {
            inner,
            bos_id,
            eos_ids,
            add_bos,
            bos_token,
            eos_token,
            max_token_bytes,
            grammar: Default::default(),
        }
    }

    /// A tokenizer.json, read under the size cap for tokenizer files.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let bytes = super::files::read_capped(path, super::files::MAX_TOKENIZER_BYTES)?;
        let mut tok =
            Tokenizer::from_bytes(bytes).map_err(|e| TealError::InvalidModel(format!("{}: {e}", path.display())))?;
        // Some exported tokenizers pad every input to a fixed length; generation needs the raw ids.
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| TealError::Tokenizer(e.to_string()))?;
        Ok(tok)
    }

    /// The grammar engine's view of this vocabulary for a model with `vocab` logits (built once; an error when
    /// the tokenizer's kind cannot be constrained).
    pub fn grammar(&self, vocab: usize) -> Result<std::sync::Arc<GrammarEnv>> {
        let env = self.grammar.get_or_init(|| {
            GrammarEnv::new(&self.inner, vocab, &self.eos_ids).map(std::sync::Arc::new).map_err(|e| e.to_string())
        });
        env.clone().map_err(TealError::InvalidModel)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes a prompt. `special` adds BOS as the model expects for raw text; chat prompts are rendered by
    /// the template, which already places its special tokens, so they pass `false` (as transformers does).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, special).map_err(|e| TealError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if special && self.add_bos {
            if let Some(bos) = self.bos_id {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| TealError::Tokenizer(e.to_string()))
    }

    /// The token's own text with special tokens kept (for logprobs).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }
}

/// Streaming detokenizer: decodes a small window of ids and emits only text that is complete.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

/// Prompt tokens a decoder starts from: enough context for the first new token's leading space.
const CONTEXT_TOKENS: usize = 4;
/// The longest context tried when the last tokens end inside characters written as byte tokens (a CJK word in a
/// vocabulary without it takes 3 byte tokens a character).
const MAX_CONTEXT_TOKENS: usize = 24;

impl IncrementalDecoder {
    /// A decoder whose text continues `prompt`: its last few tokens are the first window's context, so the first
    /// new token is written as it reads after the prompt (" he" after "because", not "he"). Without context
    /// (empty prompt, or a tail that ends inside a character) it starts from nothing.
    pub fn after(tok: &TextTokenizer, prompt: &[u32]) -> Self {
        // The shortest tail of at least CONTEXT_TOKENS that decodes cleanly: a tail that starts inside a character
        // written as byte tokens decodes to replacement characters, and would lose the leading space.
        let clean = (CONTEXT_TOKENS..=MAX_CONTEXT_TOKENS.min(prompt.len()).max(CONTEXT_TOKENS)).find_map(|k| {
            let tail = prompt.get(prompt.len().saturating_sub(k)..)?;
            tok.decode(tail).ok().filter(|t| !t.contains('\u{FFFD}')).map(|_| tail)
        });
        let fallback = || {
            let tail = prompt.get(prompt.len().saturating_sub(CONTEXT_TOKENS)..).unwrap_or_default();
            tok.decode(tail).ok().filter(|t| !t.ends_with('\u{FFFD}')).map(|_| tail)
        };
        match clean.or_else(fallback) {
            Some(tail) => IncrementalDecoder { ids: tail.to_vec(), prefix_offset: 0, read_offset: tail.len() },
            None => IncrementalDecoder::default(),
        }
    }

    /// Adds one id and returns the text it completes (possibly empty while a character is incomplete).
    pub fn step(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(self.ids.get(self.prefix_offset..self.read_offset).unwrap_or_default())?;
        let full = tok.decode(self.ids.get(self.prefix_offset..).unwrap_or_default())?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let delta = match full.get(prefix.len()..) {
                Some(d) if full.starts_with(&prefix) => d.to_string(),
                // The window's decoding changed its prefix (rare, e.g. merged spaces): emit the difference
                // against the whole text so far instead.
                _ => return self.resync(tok),
            };
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(delta);
        }
        Ok(String::new())
    }

    /// At the end of generation: whatever is still held back (an incomplete character at the very end decodes
    /// to the replacement character, as it does in the whole text).
    pub fn finish(&mut self, tok: &TextTokenizer) -> Result<String> {
        if self.read_offset >= self.ids.len() {
            return Ok(String::new());
        }
        let prefix = tok.decode(self.ids.get(self.prefix_offset..self.read_offset).unwrap_or_default())?;
        let full = tok.decode(self.ids.get(self.prefix_offset..).unwrap_or_default())?;
        match full.get(prefix.len()..) {
            Some(d) if full.starts_with(&prefix) => {
                let d = d.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                Ok(d)
            }
            _ => self.resync(tok),
        }
    }

    fn resync(&mut self, tok: &TextTokenizer) -> Result<String> {
        let before = tok.decode(self.ids.get(..self.read_offset).unwrap_or_default())?;
        let all = tok.decode(&self.ids)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        // Decoding all of it may have rewritten text already sent (a valid byte token that a later stray byte
        // turns into a replacement character): what was sent stays, and the rest is sent from the next whole
        // character on, so no later text is lost.
        let mut at = before.len().min(all.len());
        while !all.is_char_boundary(at) {
            at += 1;
        }
        Ok(all.get(at..).unwrap_or_default().to_string())
    }
}
