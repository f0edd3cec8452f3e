//! What a model's weights will occupy once loaded, from its files alone (the safetensors headers or the GGUF
//! tensor infos; no tensor data is read). It walks the same logical tensors `llama.rs` loads and applies the
//! same conversions `weights.rs` does (dense tensors in the activation dtype, GGUF matrices kept quantized,
//! GGUF f16/f32 matrices dequantized to f32), so admission can refuse a load before anything is allocated.

#![deny(clippy::indexing_slicing)]

use super::config::{Family, LlamaConfig};
use super::cpu_quant::repacked_bytes;
use super::weights::Tn;
use super::{gguf_meta, resolve, safetensors_files, Layout};
use crate::error::{Result, TealError};
use candle_core::quantized::GgmlDType;
use candle_core::DType;
use std::collections::HashMap;
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

/// The logical tensors of layer `l` as `llama.rs` loads them: the matrices, then the vectors (norms, biases).
fn layer_tensors(c: &LlamaConfig, l: usize) -> (Vec<Tn>, Vec<Tn>) {
    let gemma = matches!(c.family, Family::Gemma3 { .. });
    let linears = if c.fused_projections {
        vec![Tn::Qkv(l), Tn::O(l), Tn::GateUp(l), Tn::Down(l)]
    } else {
        vec![Tn::Q(l), Tn::K(l), Tn::V(l), Tn::O(l), Tn::Gate(l), Tn::Up(l), Tn::Down(l)]
    };
    let mut vectors = vec![Tn::AttnNorm(l), if gemma { Tn::PreMlpNorm(l) } else { Tn::MlpNorm(l) }];
    if c.qkv_bias && !c.fused_projections {
        vectors.extend([Tn::QBias(l), Tn::KBias(l), Tn::VBias(l)]);
    }
    if gemma || c.qk_norm {
        vectors.extend([Tn::QNorm(l), Tn::KNorm(l)]);
    }
    if gemma {
        vectors.extend([Tn::PostAttnNorm(l), Tn::PostMlpNorm(l)]);
    }
    (linears, vectors)
}

/// Estimates the weight bytes of the model at `path` loaded with `dtype` (None: f32 dense, GGUF quantized) on
/// the CPU (`cpu`: GGUF blocks in teal's kernel layouts, cpu_quant/repack.rs) or another device (as in the file).
pub fn estimate(path: &Path, dtype: Option<DType>, cpu: bool) -> Result<WeightEstimate> {
    let (config, tensors, gguf) = match resolve(path)? {
        Layout::HfDir(dir) => {
            let (config, _) = super::hf_config(&super::files::ModelDir::of(&dir)?)?;
            let mut tensors = HashMap::new();
            for f in safetensors_files(&dir)? {
                tensors.extend(safetensors_header(&f)?);
            }
            (config, tensors, false)
        }
        Layout::Gguf(file) => {
            let content = super::gguf::read(&file)?;
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
            Stored::Dense { elems } | Stored::Ggml { elems, .. } => elems.saturating_mul(act),
        })
    };
    let linear = |tn: Tn| -> Result<u64> {
        Ok(match get(tn)? {
            Stored::Ggml { dtype: GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16, elems } if dtype.is_none() => {
                elems.saturating_mul(4)
            }
            Stored::Ggml { dtype: d, elems } if dtype.is_none() => match repacked_bytes(*d, *elems) {
                Some(bytes) if cpu => bytes,
                _ => elems / d.block_size() as u64 * d.type_size() as u64,
            },
            Stored::Ggml { elems, .. } | Stored::Dense { elems } => elems.saturating_mul(act),
        })
    };
    // Saturating sums: the sizes come from an untrusted file (config.validate caps the counts).
    let mut total = 0u64;
    for l in 0..config.num_layers {
        let (linears, vectors) = layer_tensors(&config, l);
        for tn in linears {
            total = total.saturating_add(linear(tn)?);
        }
        for tn in vectors {
            total = total.saturating_add(dense(tn)?);
        }
    }
    total = total.saturating_add(dense(Tn::FinalNorm)?);
    let tied = !tensors.contains_key(&name(Tn::LmHead));
    let head = if tied { linear(Tn::Embed)? } else { linear(Tn::LmHead)? };
    // A tied head in teal's CPU layout is also the embedding table (rows looked up from it, llama.rs); otherwise
    // the table is dense.
    let embed_in_head = tied
        && cpu
        && dtype.is_none()
        && matches!(get(Tn::Embed)?, Stored::Ggml { dtype: d, elems } if repacked_bytes(*d, *elems).is_some());
    if !embed_in_head {
        total = total.saturating_add(dense(Tn::Embed)?);
    }
    total = total.saturating_add(head);
    // Rotary tables: cos and sin, [max_positions, head_dim / 2] f32 each.
    total = total.saturating_add(2 * (config.max_position_embeddings as u64 * config.head_dim as u64 / 2 * 4));
    Ok(WeightEstimate { weights: total, config })
}

/// Tensor names and element counts from a safetensors header, checked as `safetensors_check` does.
fn safetensors_header(path: &Path) -> Result<HashMap<String, Stored>> {
    Ok(super::safetensors_check::header(path)?.into_iter().map(|(k, elems)| (k, Stored::Dense { elems })).collect())
}
