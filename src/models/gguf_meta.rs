//! Reads what a GGUF file says about the model besides its tensors: the llama hyper-parameters and the
//! tokenizer (rebuilt as a Hugging Face BPE tokenizer from `tokenizer.ggml.*`: byte-level "gpt2" vocabularies
//! here, SentencePiece "llama" ones in gguf_spm.rs) and the chat template.

#![deny(clippy::indexing_slicing)]

use super::config::{Family, LlamaConfig, RopeScaling, RopeStyle};
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

/// The GGUF architectures teal runs.
const ARCHITECTURES: &[&str] = &["llama", "gemma3", "qwen2", "qwen3", "phi3"];

/// The hyper-parameters of a GGUF file (`ARCHITECTURES`, tensors and keys as llama.cpp's converter writes them).
pub fn llama_config(c: &Content) -> Result<LlamaConfig> {
    let arch = get(c, "general.architecture")?.to_string().map_err(|e| TealError::InvalidModel(e.to_string()))?;
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(TealError::UnsupportedModel(format!(
            "GGUF architecture '{arch}' (teal runs {})",
            ARCHITECTURES.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let heads = get_usize(c, &key("attention.head_count"))?;
    let hidden = get_usize(c, &key("embedding_length"))?;
    let vocab = match get_usize(c, &key("vocab_size")) {
        Ok(v) => v,
        Err(_) => get(c, "tokenizer.ggml.tokens")?.to_vec().map(|v| v.len()).unwrap_or(0),
    };
    // llama.cpp's converter writes key_length where a head is not hidden / heads wide; rope.dimension_count
    // is how much of a head rotates (Phi-3 with a partial rotary writes less than the head).
    let head_dim = get_usize(c, &key("attention.key_length")).unwrap_or(hidden / heads.max(1));
    if let Ok(rotated) = get_usize(c, &key("rope.dimension_count")) {
        if rotated != head_dim {
            return Err(TealError::UnsupportedModel(format!(
                "{arch}: rotary embedding on {rotated} of {head_dim} dimensions (partial rotary)"
            )));
        }
    }
    if c.tensor_infos.contains_key("rope_factors_long.weight") {
        return Err(TealError::UnsupportedModel(format!("{arch}: long-context rotary factors (LongRoPE)")));
    }
    let gemma = arch == "gemma3";
    let family = if gemma {
        // llama.cpp's defaults for Gemma 3: every sixth layer global, local layers on a 10,000 rotary base.
        let window = get_usize(c, &key("attention.sliding_window")).unwrap_or(512);
        if window == 0 {
            return Err(TealError::InvalidModel("gemma3.attention.sliding_window is 0".into()));
        }
        Family::Gemma3 { window, global_every: 6, local_rope_theta: 10_000.0 }
    } else {
        Family::Llama
    };
    let max_positions = get_usize(c, &key("context_length"))?;
    let cfg = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: get_usize(c, &key("feed_forward_length"))?,
        num_layers: get_usize(c, &key("block_count"))?,
        num_heads: heads,
        num_kv_heads: get_usize(c, &key("attention.head_count_kv")).unwrap_or(heads),
        head_dim,
        vocab_size: vocab,
        max_position_embeddings: max_positions,
        rms_norm_eps: get_f32(c, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64,
        rope_theta: get_f32(c, &key("rope.freq_base")).unwrap_or(10000.0),
        rope_scaling: match get_f32(c, &key(if gemma { "rope.scaling.factor" } else { "rope.scale_linear" })) {
            Some(f) if f != 1.0 => RopeScaling::Linear { factor: f },
            _ => RopeScaling::None,
        },
        // llama.cpp permutes q/k of Llama checkpoints into adjacent pairs; the others rotate halves (NeoX).
        rope_style: if arch == "llama" { RopeStyle::Interleaved } else { RopeStyle::Halves },
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        qkv_bias: c.tensor_infos.contains_key("blk.0.attn_q.bias"),
        family,
        qk_norm: arch == "qwen3",
        // Phi-3: q/k/v in one attn_qkv, gate and up in one ffn_up.
        fused_projections: arch == "phi3",
        // Phi-3's window (0: none, as llama.cpp writes Phi-4's); Gemma's windows are the family's.
        sliding_window: match arch.as_str() {
            "phi3" => get_usize(c, &key("attention.sliding_window")).ok().filter(|&w| w > 0 && w < max_positions),
            _ => None,
        },
        norm_plus_one: false,
        ggml_gelu: true,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The file's chat template; for a Gemma 3 file without one (as some conversions ship), Gemma's turn format, as
/// llama.cpp falls back to it.
pub fn chat_template(c: &Content) -> Option<String> {
    let own = c.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok().cloned());
    let arch = c.metadata.get("general.architecture").and_then(|v| v.to_string().ok().cloned());
    own.or_else(|| (arch.as_deref() == Some("gemma3")).then(|| GEMMA_TEMPLATE.to_string()))
}

/// Gemma's turns: `<start_of_turn>user|model ... <end_of_turn>`, a system message folded into the first user turn.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}\
{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}\
{%- for m in turns -%}\
{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}\
{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + (m['content'] | trim) + '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

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
        "llama-bpe" | "llama3" | "llama-v3" | "qwen2" | "smaug-bpe" => {
            // Qwen2's pattern is Llama 3's with digits one at a time.
            let regex = if pre == "qwen2" { LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}") } else { LLAMA3.to_string() };
            let split = Split::new(
                tokenizers::pre_tokenizers::split::SplitPattern::Regex(regex),
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
    match model.as_str() {
        "gpt2" => {}
        "llama" => return sentencepiece(c),
        _ => {
            return Err(TealError::UnsupportedModel(format!(
                "GGUF tokenizer model '{model}' (teal reads 'gpt2' and 'llama'); put a tokenizer.json next to the \
                 .gguf file"
            )))
        }
    }
    let tokens = strings(c, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(c, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let vocab: ahash::AHashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let pre = c.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok().cloned()).unwrap_or_default();
    // Llama 3's tokenizer takes a pre-token that is in the vocabulary whole, whether or not merges reach it
    // (`ignore_merges`, as llama.cpp sets for these names).
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(matches!(pre.as_str(), "llama-bpe" | "llama3" | "llama-v3"))
        .build()
        .map_err(|e| TealError::Tokenizer(format!("GGUF BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
    tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    // Control tokens (type 3) are special: matched whole in text, skipped when decoding output.
    let types = token_types(c)?;
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(s, &t)| AddedToken::from(s.clone(), t == 3))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(with_specials(c, tok, false))
}

/// `tokenizer.ggml.token_type` (1, normal, where a value is missing or odd).
fn token_types(c: &Content) -> Result<Vec<i64>> {
    Ok(get(c, "tokenizer.ggml.token_type")?
        .to_vec()
        .map(|v| v.iter().map(|x| x.to_i32().map(i64::from).unwrap_or(1)).collect())
        .unwrap_or_default())
}

/// The tokenizer with its BOS, its end ids (end of sequence and, where the GGUF names one, end of turn) and
/// whether prompts start with BOS (`add_bos` when the GGUF does not say).
fn with_specials(c: &Content, tok: Tokenizer, add_bos: bool) -> TextTokenizer {
    let id = |k: &str| c.metadata.get(k).and_then(|v| v.to_u32().ok());
    let add_bos = c.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(add_bos);
    let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
    // The end of a chat turn ends generation too: the GGUF's eot id, else a known end-of-turn token (as
    // llama.cpp guesses it; Gemma's <end_of_turn> is not named in its GGUF).
    let eot = id("tokenizer.ggml.eot_token_id")
        .or_else(|| ["<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>"].iter().find_map(|t| tok.token_to_id(t)));
    eos.extend(eot.filter(|e| !eos.contains(e)));
    TextTokenizer::new(tok, id("tokenizer.ggml.bos_token_id"), eos, add_bos)
}

/// A SentencePiece ("llama") vocabulary: Llama 2, Mistral, Gemma.
fn sentencepiece(c: &Content) -> Result<TextTokenizer> {
    let scores = get(c, "tokenizer.ggml.scores")?
        .to_vec()
        .map_err(|e| TealError::InvalidModel(format!("tokenizer.ggml.scores: {e}")))?
        .iter()
        .map(|v| v.to_f32().unwrap_or(0.0))
        .collect();
    let vocab = super::gguf_spm::SpmVocab {
        tokens: strings(c, "tokenizer.ggml.tokens")?,
        scores,
        types: token_types(c)?,
        add_space_prefix: c
            .metadata
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true),
        unk: c.metadata.get("tokenizer.ggml.unknown_token_id").and_then(|v| v.to_u32().ok()),
    };
    Ok(with_specials(c, super::gguf_spm::tokenizer(&vocab)?, true))
}

#[cfg(test)]
mod tests {
    use super::{llama_config, pre_tokenizer};
    use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
    use candle_core::quantized::GgmlDType;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let mut s = PreTokenizedString::from(text);
        pre_tokenizer(pre).unwrap().pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(p, _, _)| p.to_string()).collect()
    }

    #[test]
    fn qwen2_splits_digits_one_by_one_where_llama3_takes_three() {
        assert_eq!(pieces("qwen2", "x 12345"), ["x", "Ġ", "1", "2", "3", "4", "5"]);
        assert_eq!(pieces("llama-bpe", "x 12345"), ["x", "Ġ", "123", "45"]);
    }

    /// A tiny model's keys for `arch`, with `extra` keys added or replaced and tensors by name.
    fn content(arch: &str, extra: &[(&str, Value)], tensors: &[&str]) -> Content {
        let mut metadata: std::collections::HashMap<String, Value> = [
            ("general.architecture".to_string(), Value::String(arch.into())),
            (format!("{arch}.attention.head_count"), Value::U32(4)),
            (format!("{arch}.attention.head_count_kv"), Value::U32(2)),
            (format!("{arch}.embedding_length"), Value::U32(64)),
            (format!("{arch}.feed_forward_length"), Value::U32(96)),
            (format!("{arch}.block_count"), Value::U32(2)),
            (format!("{arch}.context_length"), Value::U32(256)),
            (format!("{arch}.vocab_size"), Value::U32(512)),
        ]
        .into_iter()
        .collect();
        for (k, v) in extra {
            metadata.insert(format!("{arch}.{k}"), v.clone());
        }
        let info = || TensorInfo { ggml_dtype: GgmlDType::F32, shape: (1,).into(), offset: 0 };
        let tensor_infos = tensors.iter().map(|t| (t.to_string(), info())).collect();
        Content { magic: VersionedMagic::GgufV3, metadata, tensor_infos, tensor_data_offset: 0 }
    }

    #[test]
    fn architectures_read_their_own_keys() {
        let qwen3 = llama_config(&content("qwen3", &[("attention.key_length", Value::U32(24))], &[])).unwrap();
        assert!(qwen3.qk_norm && qwen3.head_dim == 24 && !qwen3.fused_projections);
        let phi3 = llama_config(&content("phi3", &[("attention.sliding_window", Value::U32(24))], &[])).unwrap();
        assert!(phi3.fused_projections && phi3.sliding_window == Some(24));
        // Phi-4 writes 0 (no window); a window past the context is no window either.
        for w in [0, 256, u32::MAX] {
            let c = llama_config(&content("phi3", &[("attention.sliding_window", Value::U32(w))], &[])).unwrap();
            assert_eq!(c.sliding_window, None, "{w}");
        }
    }

    #[test]
    fn what_teal_cannot_run_is_refused_by_name() {
        let partial = content("phi3", &[("rope.dimension_count", Value::U32(8))], &[]);
        let err = llama_config(&partial).unwrap_err().to_string();
        assert!(err.contains("partial rotary"), "{err}");
        let long = content("phi3", &[], &["rope_factors_long.weight"]);
        let err = llama_config(&long).unwrap_err().to_string();
        assert!(err.contains("LongRoPE"), "{err}");
        let err = llama_config(&content("qwen2moe", &[], &[])).unwrap_err().to_string();
        assert!(err.contains("GGUF architecture 'qwen2moe'") && err.contains("'phi3'"), "{err}");
    }
}
