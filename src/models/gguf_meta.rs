//! Reads what a GGUF file says about the model besides its tensors: the llama hyper-parameters and the
//! tokenizer (rebuilt as a Hugging Face BPE tokenizer from `tokenizer.ggml.*`) and the chat template.

#![deny(clippy::indexing_slicing)]

use super::config::{LlamaConfig, RopeScaling, RopeStyle};
use super::tokenizer::TextTokenizer;
use crate::error::{Result, TealError};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::{
    byte_level::ByteLevel, digits::Digits, sequence::Sequence, split::Split, PreTokenizerWrapper,
};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

fn get<'a>(c: &'a Content, key: &str) -> Result<&'a Value> {
    c.metadata.get(key).ok_or_else(|| TealError::InvalidModel(format!("GGUF metadata lacks {key}")))
}

fn get_usize(c: &Content, key: &str) -> Result<usize> {
    let v = get(c, key)?;
    let n = v.to_u32().map(|x| x as u64).or_else(|_| v.to_u64()).or_else(|_| v.to_i32().map(|x| x as u64));
    n.map(|x| x as usize).map_err(|e| TealError::InvalidModel(format!("GGUF {key}: {e}")))
}

fn get_f32(c: &Content, key: &str) -> Option<f32> {
    c.metadata.get(key).and_then(|v| v.to_f32().ok())
}

/// The llama hyper-parameters of a GGUF file (architecture `llama` only).
pub fn llama_config(c: &Content) -> Result<LlamaConfig> {
    let arch = get(c, "general.architecture")?.to_string().map_err(|e| TealError::InvalidModel(e.to_string()))?;
    if arch != "llama" {
        return Err(TealError::UnsupportedModel(format!("GGUF architecture '{arch}' (only 'llama')")));
    }
    let heads = get_usize(c, "llama.attention.head_count")?;
    let hidden = get_usize(c, "llama.embedding_length")?;
    let vocab = match get_usize(c, "llama.vocab_size") {
        Ok(v) => v,
        Err(_) => get(c, "tokenizer.ggml.tokens")?.to_vec().map(|v| v.len()).unwrap_or(0),
    };
    let head_dim = get_usize(c, "llama.rope.dimension_count").unwrap_or(hidden / heads.max(1));
    let cfg = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: get_usize(c, "llama.feed_forward_length")?,
        num_layers: get_usize(c, "llama.block_count")?,
        num_heads: heads,
        num_kv_heads: get_usize(c, "llama.attention.head_count_kv").unwrap_or(heads),
        head_dim,
        vocab_size: vocab,
        max_position_embeddings: get_usize(c, "llama.context_length")?,
        rms_norm_eps: get_f32(c, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64,
        rope_theta: get_f32(c, "llama.rope.freq_base").unwrap_or(10000.0),
        rope_scaling: match get_f32(c, "llama.rope.scale_linear") {
            Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
            _ => RopeScaling::None,
        },
        rope_style: RopeStyle::Interleaved,
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        qkv_bias: c.tensor_infos.contains_key("blk.0.attn_q.bias"),
    };
    cfg.validate()?;
    Ok(cfg)
}

pub fn chat_template(c: &Content) -> Option<String> {
    c.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok().cloned())
}

fn strings(c: &Content, key: &str) -> Result<Vec<String>> {
    let arr = get(c, key)?.to_vec().map_err(|e| TealError::InvalidModel(format!("{key}: {e}")))?;
    arr.iter().map(|v| v.to_string().cloned().map_err(|e| TealError::InvalidModel(format!("{key}: {e}")))).collect()
}

/// The pre-tokenizer llama.cpp applies for a given `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = |regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    Ok(match pre {
        "smollm" | "starcoder" | "refact" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ])),
        "llama-bpe" | "llama3" | "qwen2" | "smaug-bpe" => {
            let split = Split::new(
                tokenizers::pre_tokenizers::split::SplitPattern::Regex(LLAMA3.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TealError::Tokenizer(e.to_string()))?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Split(split), byte_level(false)]))
        }
        _ => byte_level(true),
    })
}

/// Rebuilds the tokenizer from `tokenizer.ggml.*` (BPE "gpt2" vocabularies: SmolLM, Llama 3, Qwen2...).
pub fn tokenizer(c: &Content) -> Result<TextTokenizer> {
    let model = get(c, "tokenizer.ggml.model")?.to_string().cloned().unwrap_or_default();
    if model != "gpt2" {
        return Err(TealError::UnsupportedModel(format!(
            "GGUF tokenizer model '{model}'; put a tokenizer.json next to the .gguf file"
        )));
    }
    let tokens = strings(c, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(c, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| TealError::Tokenizer(format!("GGUF BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let pre = c.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
    tok.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
    tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    // Control tokens (type 3) are special: matched whole in text, skipped when decoding output.
    let types: Vec<i64> = get(c, "tokenizer.ggml.token_type")?
        .to_vec()
        .map(|v| v.iter().map(|x| x.to_i32().map(i64::from).unwrap_or(1)).collect())
        .unwrap_or_default();
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(s, &t)| AddedToken::from(s.clone(), t == 3))
        .collect();
    tok.add_special_tokens(&specials);
    let id = |k: &str| c.metadata.get(k).and_then(|v| v.to_u32().ok());
    let add_bos = c.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    let eos: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
    Ok(TextTokenizer::new(tok, id("tokenizer.ggml.bos_token_id"), eos, add_bos))
}
