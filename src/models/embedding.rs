//! A sentence-embedding model version from a sentence-transformers directory: the BERT encoder of
//! candle-transformers over config.json and model.safetensors, the tokenizer (its padding and truncation turned
//! off: teal pads each batch itself and masks the padding), then the modules.json pipeline - pooling as
//! 1_Pooling/config.json says (mean, CLS or max over the real tokens) and L2 normalization when a Normalize
//! module is listed.

#![deny(clippy::indexing_slicing)]

use super::files::{ModelDir, MAX_CONFIG_BYTES};
use crate::error::{Result, TealError};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

pub struct Embedder {
    pub name: String,
    pub source: PathBuf,
    bert: BertModel,
    tokenizer: Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Longest input in tokens (special tokens included).
    pub max_tokens: usize,
    pub dimensions: usize,
    pad_id: u32,
    pub device: Device,
    pub format: String,
    bytes: u64,
}

/// A JSON file of the model directory (under the config size cap), or None when it is absent.
fn read_json(dir: &ModelDir, name: &str) -> Result<Option<Value>> {
    dir.read_json(name, MAX_CONFIG_BYTES)
}

/// Whether a directory looks like a sentence-transformers / BERT embedding model.
pub fn is_embedding_dir(dir: &Path) -> bool {
    let Ok(md) = ModelDir::of(dir) else { return false };
    if md.find("modules.json").is_ok_and(|f| f.is_some()) {
        return true;
    }
    let Ok(Some(cfg)) = read_json(&md, "config.json") else { return false };
    matches!(cfg.get("model_type").and_then(Value::as_str), Some("bert"))
}

/// The pooling module's folder and whether a Normalize module follows, from modules.json (absent: mean pooling
/// from the directory itself, no normalization, as sentence-transformers does for a plain BERT checkpoint).
fn pipeline(dir: &ModelDir) -> Result<(Option<String>, bool)> {
    let Some(modules) = read_json(dir, "modules.json")? else { return Ok((None, false)) };
    let list = modules.as_array().ok_or_else(|| TealError::InvalidModel("modules.json: not a list".into()))?;
    let of_type =
        |suffix: &str| list.iter().find(|m| m.get("type").and_then(Value::as_str).is_some_and(|t| t.ends_with(suffix)));
    let pooling = of_type(".Pooling").and_then(|m| m.get("path")).and_then(Value::as_str).map(String::from);
    Ok((pooling, of_type(".Normalize").is_some()))
}

fn pooling_mode(dir: &ModelDir, folder: Option<String>) -> Result<Pooling> {
    let Some(folder) = folder else { return Ok(Pooling::Mean) };
    let name = format!("{}/config.json", folder.trim_end_matches('/'));
    let cfg = read_json(dir, &name)?.ok_or_else(|| TealError::InvalidModel(format!("{name}: missing")))?;
    let on = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token"), on("pooling_mode_max_tokens")) {
        (true, false, false) => Ok(Pooling::Mean),
        (false, true, false) => Ok(Pooling::Cls),
        (false, false, true) => Ok(Pooling::Max),
        _ => Err(TealError::UnsupportedModel(format!("{name}: pooling must be exactly one of mean, cls, max"))),
    }
}

impl Embedder {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let md = ModelDir::of(dir)?;
        let cfg_json = read_json(&md, "config.json")?
            .ok_or_else(|| TealError::InvalidModel(format!("{}: config.json missing", dir.display())))?;
        let config: Config = serde_json::from_value(cfg_json.clone())
            .map_err(|e| TealError::InvalidModel(format!("config.json: {e}")))?;
        let (pool_dir, normalize) = pipeline(&md)?;
        let pooling = pooling_mode(&md, pool_dir)?;
        let tokenizer = super::tokenizer::TextTokenizer::from_file(&md.require("tokenizer.json")?)?;
        let max_seq =
            read_json(&md, "sentence_bert_config.json")?.and_then(|c| c.get("max_seq_length").and_then(Value::as_u64));
        let max_tokens =
            max_seq.map(|m| m as usize).unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
        let weights = md.require("model.safetensors")?;
        super::safetensors_check::header(&weights)?;
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| TealError::InvalidModel(format!("{}: {e}", weights.display())))?;
        let bytes = tensors.values().map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64).sum();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let bert = BertModel::load(vb, &config).map_err(|e| TealError::InvalidModel(format!("BERT weights: {e}")))?;
        let pad_id = cfg_json.get("pad_token_id").and_then(Value::as_u64).unwrap_or(0) as u32;
        Ok(Embedder {
            name: String::new(),
            source: dir.to_path_buf(),
            bert,
            tokenizer,
            pooling,
            normalize,
            max_tokens,
            dimensions: config.hidden_size,
            pad_id,
            device: device.clone(),
            format: "safetensors F32".into(),
            bytes,
        })
    }

    pub fn weight_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The model's input ids for a text ([CLS] ... [SEP]).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| TealError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// One embedding per input (each a non-empty id list of at most `max_tokens`), computed as one batch padded
    /// to its longest input.
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let len = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        if len == 0 || len > self.max_tokens {
            return Err(TealError::Config(format!("inputs must have 1..={} tokens", self.max_tokens)));
        }
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut mask = Vec::with_capacity(batch.len() * len);
        for x in batch {
            ids.extend(x.iter().copied().chain(std::iter::repeat_n(self.pad_id, len - x.len())));
            mask.extend((0..len).map(|i| u32::from(i < x.len())));
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let shape = (batch.len(), len);
            let ids = Tensor::from_vec(ids, shape, &self.device)?;
            let mask = Tensor::from_vec(mask, shape, &self.device)?;
            let hidden = self.bert.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
            let pooled = pool(&hidden, &mask.to_dtype(DType::F32)?, self.pooling)?;
            let out = if self.normalize {
                let norm = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
                pooled.broadcast_div(&norm)?
            } else {
                pooled
            };
            out.to_vec2::<f32>()
        };
        run().map_err(TealError::from)
    }
}

/// [B, L, H] hidden states and [B, L] mask (1 for real tokens) -> [B, H].
fn pool(hidden: &Tensor, mask: &Tensor, mode: Pooling) -> candle_core::Result<Tensor> {
    let m = mask.unsqueeze(D::Minus1)?;
    match mode {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => {
            let sum = hidden.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
            sum.broadcast_div(&count)
        }
        Pooling::Max => {
            // Padding positions get a large negative value so they never win.
            let neg = ((m.ones_like()? - &m)? * -1e9f64)?;
            hidden.broadcast_add(&neg)?.max(1)
        }
    }
}
