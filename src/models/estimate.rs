//! What a model's weights will occupy once loaded, from its files alone (the safetensors headers or the GGUF
//! tensor infos; no tensor data is read). It walks the same logical tensors `llama.rs` loads and applies the
//! same conversions `weights.rs` does (dense tensors in the activation dtype, GGUF matrices kept quantized,
//! GGUF f16/f32 matrices dequantized to f32), so admission can refuse a load before anything is allocated.

use super::config::LlamaConfig;
use super::weights::Tn;
use super::{gguf_meta, resolve, safetensors_files, Layout};
use crate::error::{Result, TealError};
use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::DType;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// A model's weight bytes and the hyper-parameters the KV pool and workspace estimates need.
#[derive(Debug, Clone)]
pub struct WeightEstimate {
    pub weights: u64,
    pub config: LlamaConfig,
}

/// How one tensor is stored in the file.
enum Stored {
    /// Safetensors: element count.
    Dense { elems: u64 },
    /// GGUF: block type and element count.
    Ggml { dtype: GgmlDType, elems: u64 },
}

/// Estimates the weight bytes of the model at `path` loaded with `dtype` (None: f32 dense, GGUF quantized).
pub fn estimate(path: &Path, dtype: Option<DType>) -> Result<WeightEstimate> {
    let (config, tensors, gguf) = match resolve(path)? {
        Layout::HfDir(dir) => {
            let cfg_path = dir.join("config.json");
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| TealError::io(&cfg_path, e))?;
            let mut tensors = HashMap::new();
            for f in safetensors_files(&dir)? {
                tensors.extend(safetensors_header(&f)?);
            }
            (LlamaConfig::from_hf_json(&text)?, tensors, false)
        }
        Layout::Gguf(file) => {
            let mut f = std::fs::File::open(&file).map_err(|e| TealError::io(&file, e))?;
            let content = gguf_file::Content::read(&mut f)
                .map_err(|e| TealError::InvalidModel(format!("{}: not a valid GGUF file: {e}", file.display())))?;
            let tensors = content
                .tensor_infos
                .iter()
                .map(|(n, i)| (n.clone(), Stored::Ggml { dtype: i.ggml_dtype, elems: i.shape.elem_count() as u64 }))
                .collect();
            (gguf_meta::llama_config(&content)?, tensors, true)
        }
        Layout::Pth(file) => return Err(TealError::UnsupportedModel(format!("{}: not a causal LM", file.display()))),
    };
    let act = dtype.unwrap_or(DType::F32).size_in_bytes() as u64;
    let name = |tn: Tn| if gguf { tn.gguf() } else { tn.hf() };
    let get =
        |tn: Tn| tensors.get(&name(tn)).ok_or_else(|| TealError::InvalidModel(format!("tensor {} missing", name(tn))));
    let dense = |tn: Tn| -> Result<u64> {
        Ok(match get(tn)? {
            Stored::Dense { elems } | Stored::Ggml { elems, .. } => elems * act,
        })
    };
    let linear = |tn: Tn| -> Result<u64> {
        Ok(match get(tn)? {
            Stored::Ggml { dtype: GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16, elems } if dtype.is_none() => {
                elems * 4
            }
            Stored::Ggml { dtype: d, elems } if dtype.is_none() => elems / d.block_size() as u64 * d.type_size() as u64,
            Stored::Ggml { elems, .. } | Stored::Dense { elems } => elems * act,
        })
    };
    let mut total = 0u64;
    for l in 0..config.num_layers {
        for tn in [Tn::Q(l), Tn::K(l), Tn::V(l), Tn::O(l), Tn::Gate(l), Tn::Up(l), Tn::Down(l)] {
            total += linear(tn)?;
        }
        for tn in [Tn::AttnNorm(l), Tn::MlpNorm(l)] {
            total += dense(tn)?;
        }
        if config.qkv_bias {
            total += dense(Tn::QBias(l))? + dense(Tn::KBias(l))? + dense(Tn::VBias(l))?;
        }
    }
    total += dense(Tn::Embed)? + dense(Tn::FinalNorm)?;
    total += if tensors.contains_key(&name(Tn::LmHead)) { linear(Tn::LmHead)? } else { linear(Tn::Embed)? };
    // Rotary tables: cos and sin, [max_positions, head_dim / 2] f32 each.
    total += 2 * (config.max_position_embeddings * config.head_dim / 2 * 4) as u64;
    Ok(WeightEstimate { weights: total, config })
}

/// Tensor names and element counts from a safetensors header (8-byte length, then JSON).
fn safetensors_header(path: &Path) -> Result<HashMap<String, Stored>> {
    let bad = |e: String| TealError::InvalidModel(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| TealError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("no safetensors header: {e}")))?;
    let len = u64::from_le_bytes(len);
    let file_len = f.metadata().map_err(|e| TealError::io(path, e))?.len();
    if len > 100 << 20 || len + 8 > file_len {
        return Err(bad(format!("safetensors header of {len} bytes does not fit the file")));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&buf).map_err(|e| bad(format!("safetensors header: {e}")))?;
    Ok(header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .filter_map(|(k, v)| {
            let shape = v.get("shape")?.as_array()?;
            let elems = shape.iter().map(|d| d.as_u64()).product::<Option<u64>>()?;
            Some((k, Stored::Dense { elems }))
        })
        .collect())
}
