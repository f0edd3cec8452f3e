//! Constrained decoding's view of a model's vocabulary: every token id as the bytes it stands for (what a
//! grammar engine matches against), and the llguidance parser factory built from them once per model.
//! Grammars (JSON schemas, Lark) compile here into matchers; the engine applies their token masks.
//!
//! The bytes come from the tokenizer's own vocabulary and decoder: byte-level BPE (GPT-2 style, each byte
//! written as a printable character) or SentencePiece (a marker character for the space, `<0xHH>` byte
//! fallback pieces). Special tokens get the grammar engine's special marker, so no grammar can produce them as
//! text. A vocabulary of another kind (WordPiece) cannot be constrained and says so.

#![deny(clippy::indexing_slicing)]

use crate::error::{Result, TealError};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// A grammar the output must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON schema (OpenAI's `json_schema`; `{"type": "object"}` for `json_object`).
    JsonSchema(Value),
    /// A Lark grammar (tool calls wrap JSON in the model's markup).
    Lark(String),
}

/// The compiled vocabulary of one model: makes a matcher per request.
pub struct GrammarEnv {
    factory: ParserFactory,
    closing: Arc<Closing>,
}

/// Most tokens the search for a grammar's shortest ending may take.
const MAX_CLOSE_STEPS: usize = 256;

/// The tokens that finish a document fastest, preferred when a request's token budget runs low: a token made
/// only of `"`, `]`, `}` (and spaces) ends the string, array or object it is in; a comma ends a number or a
/// value when the closing bracket is not allowed yet. With them, any JSON value reaches its end in a few
/// tokens per open level, so output that must parse does parse within `max_tokens`.
pub struct Closing {
    /// Closers that start with `"` (end a string; outside one, start an empty one).
    quotes: Vec<u32>,
    /// Closers that start with `]` or `}`.
    brackets: Vec<u32>,
    /// `,` and `, `.
    commas: Vec<u32>,
    eos: Vec<u32>,
    /// Each token's bytes (to follow how deep the output is nested).
    words: Vec<Vec<u8>>,
}

impl Closing {
    fn new(words: &[Vec<u8>], eos: &[u32]) -> Self {
        let only = |w: &[u8], set: &[u8]| !w.is_empty() && w.iter().all(|b| set.contains(b));
        let closer = |w: &[u8]| only(w, b"\"]} ") && w.iter().any(|&b| b != b' ');
        let ids = |keep: &dyn Fn(&[u8]) -> bool| -> Vec<u32> {
            words.iter().enumerate().filter(|(_, w)| keep(w)).map(|(i, _)| i as u32).collect()
        };
        Closing {
            quotes: ids(&|w| closer(w) && w.first() == Some(&b'"')),
            brackets: ids(&|w| closer(w) && matches!(w.first(), Some(b']' | b'}'))),
            commas: ids(&|w| w.first() == Some(&b',') && only(w, b", ")),
            eos: eos.to_vec(),
            words: words.to_vec(),
        }
    }

    /// Narrows `allowed` (a grammar's mask, as a predicate) to the fastest way to the end: an end-of-sequence
    /// token; else a closer that ends what is open (`"` inside a string, `]` or `}` outside one); else a
    /// closer that starts an empty string; else a comma; else anything allowed. Returns the ids kept, or None
    /// to keep all.
    pub fn narrow(&self, allowed: impl Fn(u32) -> bool, in_string: bool) -> Option<Vec<u32>> {
        let order: [&[u32]; 4] = if in_string {
            [&self.eos, &self.quotes, &[], &[]]
        } else {
            [&self.eos, &self.brackets, &self.quotes, &self.commas]
        };
        order
            .into_iter()
            .map(|set| set.iter().copied().filter(|&t| allowed(t)).collect::<Vec<u32>>())
            .find(|ids| !ids.is_empty())
    }

    /// The bytes token `t` stands for (empty for an unknown id).
    pub fn bytes(&self, t: u32) -> &[u8] {
        self.words.get(t as usize).map(Vec::as_slice).unwrap_or_default()
    }
}

impl GrammarEnv {
    /// Builds the token trie for a model whose logits have `vocab` entries (ids past the tokenizer's
    /// vocabulary never match anything).
    pub fn new(tok: &Tokenizer, vocab: usize, eos_ids: &[u32]) -> Result<Self> {
        let words = token_bytes(tok, vocab)?;
        let closing = Closing::new(&words, eos_ids);
        let first_eos = eos_ids.first().copied().unwrap_or(0);
        let info = TokRxInfo::new(words.len() as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos_ids);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| unsupported(e.to_string()))?;
        factory.quiet();
        // Errors go to clients: the parser's state and the grammar stay out of them.
        factory.limits_mut().verbose_errors = false;
        Ok(GrammarEnv { factory, closing: Arc::new(closing) })
    }

    pub fn closing(&self) -> Arc<Closing> {
        self.closing.clone()
    }

    /// Tokens the fastest ending takes from `m`'s state (following `Closing::narrow`, the lowest id where it
    /// leaves a choice); at most `MAX_CLOSE_STEPS`.
    pub fn close_length(&self, m: &Matcher) -> usize {
        let mut m = m.clone();
        let mut in_string = false;
        for steps in 0..MAX_CLOSE_STEPS {
            if m.is_stopped() {
                return steps;
            }
            let Ok(mask) = m.compute_mask() else { return steps };
            // The longest token where the policy leaves a choice: a model takes whole words, not letters.
            let ids = match self.closing.narrow(|t| mask.is_allowed(t), in_string) {
                Some(ids) => ids,
                None => {
                    let mut all = vec![];
                    mask.iter_set_entries(|t| all.push(t as u32));
                    all
                }
            };
            let pick = ids.into_iter().max_by_key(|&t| (self.closing.bytes(t).len(), std::cmp::Reverse(t)));
            let Some(t) = pick else { return steps };
            in_string ^= self.closing.bytes(t).iter().filter(|&&b| b == b'"').count() % 2 == 1;
            if self.closing.eos.contains(&t) || m.consume_token(t).is_err() {
                return steps + 1;
            }
        }
        MAX_CLOSE_STEPS
    }

    /// Compiles `grammar` into a fresh matcher (the grammar's own cost is bounded by the factory's limits).
    pub fn matcher(&self, grammar: &Grammar) -> std::result::Result<Matcher, String> {
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Grammar::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        };
        let parser = self.factory.create_parser(top).map_err(|e| e.to_string())?;
        let m = Matcher::new(Ok(parser));
        match m.get_error() {
            Some(e) => Err(e),
            None => Ok(m),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }
}

/// JSON as a model should write it: one space after `:` and `,`, no other whitespace (free whitespace lets a
/// weak model pad forever). A schema's own `x-guidance` settings win.
pub fn compact(mut schema: Value) -> Value {
    let defaults = serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
    if let Some(obj) = schema.as_object_mut() {
        let xg = obj.entry("x-guidance").or_insert_with(|| Value::Object(Default::default()));
        if let (Some(xg), Some(d)) = (xg.as_object_mut(), defaults.as_object()) {
            for (k, v) in d {
                xg.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    schema
}

fn unsupported(why: String) -> TealError {
    TealError::InvalidModel(format!("constrained decoding is not available for this tokenizer: {why}"))
}

/// How the decoder turns pieces into text.
enum Pieces {
    /// GPT-2 byte-level: each character of a piece stands for one byte.
    ByteLevel(HashMap<char, u8>),
    /// SentencePiece: `space` stands for ' ', `<0xHH>` pieces are single bytes.
    SentencePiece { space: char },
}

/// `v[k]`, Null when absent.
fn field<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or(&Value::Null)
}

fn pieces_kind(tok: &Tokenizer) -> Result<Pieces> {
    let dec = serde_json::to_value(tok.get_decoder()).unwrap_or(Value::Null);
    let kind = |d: &Value| field(d, "type").as_str().map(String::from);
    let parts: Vec<&Value> = match kind(&dec).as_deref() {
        Some("Sequence") => field(&dec, "decoders").as_array().map(|a| a.iter().collect()).unwrap_or_default(),
        _ => vec![&dec],
    };
    if parts.iter().any(|d| kind(d).as_deref() == Some("ByteLevel")) {
        return Ok(Pieces::ByteLevel(byte_level_chars()));
    }
    let mut space = None;
    for d in &parts {
        match kind(d).as_deref() {
            Some("Metaspace") => {
                space = field(d, "replacement").as_str().and_then(|s| s.chars().next()).or(Some('▁'));
            }
            Some("Replace") if field(d, "content") == " " => {
                space = field(field(d, "pattern"), "String").as_str().and_then(single_char).or(space);
            }
            Some("ByteFallback") => space = space.or(Some('▁')),
            _ => {}
        }
    }
    space.map(|space| Pieces::SentencePiece { space }).ok_or_else(|| {
        unsupported(format!("decoder {} is neither byte-level BPE nor SentencePiece", field(&dec, "type")))
    })
}

fn single_char(s: &str) -> Option<char> {
    let mut c = s.chars();
    match (c.next(), c.next()) {
        (Some(ch), None) => Some(ch),
        _ => None,
    }
}

/// GPT-2's byte-to-character table, inverted: printable Latin-1 bytes are themselves, the rest are numbered
/// from U+0100 in byte order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    let mut map = HashMap::with_capacity(256);
    for b in 0..=255u8 {
        if printable(b) {
            map.insert(char::from(b), b);
        } else {
            map.insert(char::from_u32(next).unwrap_or('\0'), b);
            next += 1;
        }
    }
    map
}

/// Each id's bytes (empty for ids the tokenizer does not have). Special added tokens are marked so that only a
/// grammar naming them can produce them.
pub fn token_bytes(tok: &Tokenizer, vocab: usize) -> Result<Vec<Vec<u8>>> {
    let kind = pieces_kind(tok)?;
    let added = tok.get_added_tokens_decoder();
    let mut words = vec![vec![]; vocab];
    for (id, word) in words.iter_mut().enumerate() {
        let id = id as u32;
        if let Some(a) = added.get(&id) {
            *word = a.content.as_bytes().to_vec();
            if a.special {
                word.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            }
            continue;
        }
        let Some(piece) = tok.id_to_token(id) else { continue };
        *word = match &kind {
            Pieces::ByteLevel(map) => match piece.chars().map(|c| map.get(&c).copied()).collect::<Option<Vec<u8>>>() {
                Some(b) => b,
                None => piece.into_bytes(), // an odd piece is matched as its literal text
            },
            Pieces::SentencePiece { space } => match byte_piece(&piece) {
                Some(b) => vec![b],
                None => piece.replace(*space, " ").into_bytes(),
            },
        };
    }
    Ok(words)
}

/// `<0xHH>` → the byte.
fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pieces_and_the_gpt2_table() {
        assert_eq!(byte_piece("<0x0A>"), Some(10));
        assert_eq!(byte_piece("<0xZZ>"), None);
        assert_eq!(byte_piece("<0x0A0>"), None);
        let m = byte_level_chars();
        assert_eq!(m.len(), 256);
        assert_eq!(m.get(&'Ġ'), Some(&b' '));
        assert_eq!(m.get(&'Ċ'), Some(&b'\n'));
        assert_eq!(m.get(&'a'), Some(&b'a'));
    }

    #[test]
    fn closing_prefers_the_end_then_what_closes_then_a_comma() {
        let words: Vec<Vec<u8>> =
            ["a", "\"", "}", "\"}", ",", ", ", " ", "x}"].iter().map(|w| w.as_bytes().to_vec()).collect();
        let c = Closing::new(&words, &[0]);
        let all = |_: u32| true;
        assert_eq!(c.narrow(all, false), Some(vec![0]), "end of sequence first");
        let no_eos = |t: u32| t != 0;
        assert_eq!(c.narrow(no_eos, false), Some(vec![2]), "outside a string: a bracket");
        assert_eq!(c.narrow(no_eos, true), Some(vec![1, 3]), "inside: a quote, never a bracket or a comma");
        assert_eq!(c.narrow(|t| t == 4 || t == 5 || t == 7, false), Some(vec![4, 5]));
        assert_eq!(c.narrow(|t| t == 7 || t == 6, false), None, "nothing that closes: the model chooses");
    }

    #[test]
    fn compact_keeps_a_schemas_own_settings() {
        let s = compact(serde_json::json!({"type": "object", "x-guidance": {"key_separator": ":"}}));
        assert_eq!(s["x-guidance"]["key_separator"], ":");
        assert_eq!(s["x-guidance"]["whitespace_flexible"], false);
    }
}
