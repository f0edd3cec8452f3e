//! Architecture hyper-parameters of a Llama-family model, read from a Hugging Face `config.json` or from GGUF
//! metadata. One struct serves Llama, Mistral, Qwen2, Qwen3, Phi-3 and SmolLM configs (and Gemma 3 through
//! `Family`): they differ only in the fields here.

#![deny(clippy::indexing_slicing)]

use crate::error::{Result, TealError};
use serde::Deserialize;

/// How the rotary embedding pairs dimensions. HF checkpoints rotate the two halves of each head
/// ("neox" style); GGUF files converted by llama.cpp permute q/k so that adjacent pairs rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Halves,
    Interleaved,
}

/// Llama-3 style frequency scaling (`rope_scaling.rope_type == "llama3"`) or linear scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear { factor: f32 },
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position: usize },
}

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    pub tie_word_embeddings: bool,
    /// Qwen2 puts a bias on the q, k and v projections.
    pub qkv_bias: bool,
    /// Qwen3: an RMS norm over each query and key head before the rotary embedding.
    pub qk_norm: bool,
    /// Phi-3: q/k/v stored as one `qkv_proj` and gate/up as one `gate_up_proj`.
    pub fused_projections: bool,
    /// Mistral, Phi-3: every layer attends to the last `sliding_window` positions only.
    pub sliding_window: Option<usize>,
    /// Gemma from an HF directory: norm weights are stored as `w` for a scale of `1 + w` (GGUF files store
    /// `1 + w` already).
    pub norm_plus_one: bool,
    /// GGUF files: Gemma's GELU as ggml computes it (f16 table, ops/ggml_gelu.rs), so results track llama.cpp
    /// on the same file; HF directories keep transformers' formula.
    pub ggml_gelu: bool,
    /// What differs between the families this struct describes (norms, activation, local attention).
    pub family: Family,
}

/// The decoder variants `Llama` runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Family {
    /// Llama, Mistral, Qwen2, SmolLM: pre-norm blocks, SiLU gate.
    Llama,
    /// Gemma 3: q/k norms, norms after attention and after the MLP too, embeddings scaled by sqrt(hidden),
    /// GELU (tanh) gate, and local layers that attend to the last `window` positions with their own rotary base;
    /// every `global_every`-th layer attends to everything.
    Gemma3 { window: usize, global_every: usize, local_rope_theta: f32 },
}

impl LlamaConfig {
    /// The window of layer `l` (None: it attends to every earlier position).
    pub fn window(&self, l: usize) -> Option<usize> {
        match self.family {
            Family::Llama => self.sliding_window,
            Family::Gemma3 { window, global_every, .. } => {
                (!(l + 1).is_multiple_of(global_every.max(1))).then_some(window)
            }
        }
    }
}

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 writes the rotary base and scaling here instead of `rope_theta` and `rope_scaling`.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(flatten)]
    gemma: GemmaFields,
}

/// The fields only Gemma 3's `gemma3_text` configs have.
#[derive(Deserialize, Default)]
struct GemmaFields {
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    layer_types: Option<Vec<String>>,
    rope_local_base_freq: Option<f32>,
    sliding_window_pattern: Option<usize>,
    #[serde(rename = "_sliding_window_pattern")]
    sliding_window_pattern_private: Option<usize>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    use_bidirectional_attention: Option<bool>,
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f32 {
    10000.0
}

const SUPPORTED_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text"];
const SUPPORTED_ARCHS: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"];

/// Gemma 3 text models (`gemma3_text`): the family with its windows and rotary bases, the global rotary base and
/// scaling. Refuses what teal does not run (logit soft-capping, bidirectional attention, a query scale other than
/// 1/sqrt(head_dim), local and global layers in no regular pattern).
fn gemma3_hf(hf: &HfConfig, head_dim: usize) -> Result<(Family, f32, RopeScaling)> {
    let g = &hf.gemma;
    let refuse = |what: &str| Err(TealError::UnsupportedModel(format!("gemma3_text with {what}")));
    if g.final_logit_softcapping.is_some() || g.attn_logit_softcapping.is_some() {
        return refuse("logit soft-capping");
    }
    if g.use_bidirectional_attention == Some(true) {
        return refuse("bidirectional attention");
    }
    if g.query_pre_attn_scalar.is_some_and(|s| s != head_dim as f64) {
        return refuse("query_pre_attn_scalar other than head_dim");
    }
    if g.hidden_activation.as_deref().is_some_and(|a| a != "gelu_pytorch_tanh") {
        return refuse("an activation other than gelu_pytorch_tanh");
    }
    let Some(window) = hf.sliding_window.filter(|&w| w > 0) else { return refuse("no sliding_window") };
    let layer = |kind: &str| hf.rope_parameters.as_ref().and_then(|p| p.get(kind)).cloned();
    let theta = |v: &Option<serde_json::Value>| v.as_ref()?.get("rope_theta")?.as_f64().map(|t| t as f32);
    let (full, local) = (layer("full_attention"), layer("sliding_attention"));
    let global_theta = hf.rope_theta.or(theta(&full)).unwrap_or(1_000_000.0);
    let local_rope_theta = g.rope_local_base_freq.or(theta(&local)).unwrap_or(10_000.0);
    let scaling = parse_rope_scaling(hf.rope_scaling.as_ref().or(full.as_ref()))?;
    let n = hf.num_hidden_layers;
    let global_every = match &g.layer_types {
        Some(types) => {
            let p = types.iter().position(|t| t == "full_attention").map_or(n + 1, |i| i + 1);
            let regular = types.len() == n
                && types.iter().enumerate().all(|(l, t)| (t == "full_attention") == (l + 1).is_multiple_of(p));
            if !regular {
                return refuse("layer_types in no regular pattern");
            }
            p
        }
        None => g.sliding_window_pattern.or(g.sliding_window_pattern_private).unwrap_or(6),
    };
    Ok((Family::Gemma3 { window, global_every: global_every.max(1), local_rope_theta }, global_theta, scaling))
}

impl LlamaConfig {
    /// Parses and validates a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let hf: HfConfig =
            serde_json::from_str(text).map_err(|e| TealError::InvalidModel(format!("config.json: {e}")))?;
        let arch_type = |a: &str| a.strip_suffix("ForCausalLM").map(str::to_ascii_lowercase);
        let model_type = match hf.model_type.clone() {
            Some(t) => t,
            None => hf
                .architectures
                .iter()
                .find(|a| SUPPORTED_ARCHS.contains(&a.as_str()))
                .and_then(|a| arch_type(a))
                .unwrap_or_default(),
        };
        if !SUPPORTED_TYPES.contains(&model_type.as_str()) {
            return Err(TealError::UnsupportedModel(format!(
                "model_type '{model_type}' (architectures {:?}); supported: {}",
                hf.architectures,
                SUPPORTED_TYPES.join(", ")
            )));
        }
        if model_type == "phi3" && hf.attention_bias == Some(true) {
            // The fused qkv_proj is loaded without a bias: refuse rather than drop one.
            return Err(TealError::UnsupportedModel("phi3 with attention_bias".into()));
        }
        if model_type == "qwen2" && hf.use_sliding_window == Some(true) {
            return Err(TealError::UnsupportedModel("qwen2 with use_sliding_window (windows on some layers)".into()));
        }
        let rope_param = |k: &str| hf.rope_parameters.as_ref().and_then(|p| p.get(k)).and_then(|v| v.as_f64());
        if hf.partial_rotary_factor.or(rope_param("partial_rotary_factor")).is_some_and(|f| f != 1.0) {
            return Err(TealError::UnsupportedModel("partial_rotary_factor other than 1".into()));
        }
        // Qwen2 configs carry a sliding_window that applies only with use_sliding_window (refused above).
        let sliding_window = match model_type.as_str() {
            "mistral" | "phi3" => hf.sliding_window.filter(|&w| w > 0 && w < hf.max_position_embeddings),
            _ => None,
        };
        let gemma = model_type == "gemma3_text";
        if let Some(act) = hf.hidden_act.as_ref().filter(|_| !gemma) {
            if act != "silu" {
                return Err(TealError::UnsupportedModel(format!("hidden_act '{act}' (only silu)")));
            }
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
        let (family, rope_theta, rope_scaling) = if gemma {
            gemma3_hf(&hf, head_dim)?
        } else {
            let theta = hf.rope_theta.or(rope_param("rope_theta").map(|t| t as f32)).unwrap_or(default_theta());
            (Family::Llama, theta, parse_rope_scaling(hf.rope_scaling.as_ref().or(hf.rope_parameters.as_ref()))?)
        };
        let cfg = LlamaConfig {
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: hf.vocab_size,
            max_position_embeddings: hf.max_position_embeddings,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
            rope_scaling,
            rope_style: RopeStyle::Halves,
            tie_word_embeddings: hf.tie_word_embeddings,
            family,
            qkv_bias: model_type == "qwen2" || hf.attention_bias.unwrap_or(false),
            qk_norm: model_type == "qwen3",
            fused_projections: model_type == "phi3",
            sliding_window,
            norm_plus_one: gemma,
            ggml_gelu: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the forward pass relies on, so a bad file fails at load, not mid-request.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TealError::InvalidModel(m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 || self.hidden_size == 0 {
            return bad("config has a zero dimension".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        if self.vocab_size == 0 || self.max_position_embeddings == 0 {
            return bad("vocab_size and max_position_embeddings must be positive".into());
        }
        // Caps far above any real model, so a hostile file cannot make the loader or the estimates loop or
        // allocate without bound (every size below multiplies into tensor shapes and the KV pool).
        let caps = [
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_layers, 1 << 10),
            ("num_attention_heads", self.num_heads, 1 << 10),
            ("head_dim", self.head_dim, 1 << 10),
            ("vocab_size", self.vocab_size, 1 << 22),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 24),
        ];
        if let Some((name, v, cap)) = caps.iter().find(|(_, v, cap)| v > cap) {
            return bad(format!("{name} {v} is over the limit of {cap}"));
        }
        if !self.rms_norm_eps.is_finite() || !self.rope_theta.is_finite() || self.rope_theta <= 0.0 {
            return bad("rms_norm_eps and rope_theta must be finite (rope_theta positive)".into());
        }
        Ok(())
    }

    /// Inverse frequencies of the rotary embedding, with the configured scaling applied.
    /// The rotary frequencies of a model's local (sliding-window) layers, where they differ from the global ones
    /// (Gemma 3: their own base, no scaling).
    pub fn local_rope_inv_freq(&self) -> Option<Vec<f32>> {
        let Family::Gemma3 { local_rope_theta, .. } = self.family else { return None };
        let d = self.head_dim;
        Some((0..d / 2).map(|i| 1.0 / local_rope_theta.powf(2.0 * i as f32 / d as f32)).collect())
    }

    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f32> = (0..d / 2).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f32 / d as f32)).collect();
        match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => {
                let old = original_max_position as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

fn parse_rope_scaling(v: Option<&serde_json::Value>) -> Result<RopeScaling> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("");
    let num = |k: &str, d: f64| v.get(k).and_then(|x| x.as_f64()).unwrap_or(d);
    match kind {
        "linear" => Ok(RopeScaling::Linear { factor: num("factor", 1.0) as f32 }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor", 8.0) as f32,
            low_freq_factor: num("low_freq_factor", 1.0) as f32,
            high_freq_factor: num("high_freq_factor", 4.0) as f32,
            original_max_position: num("original_max_position_embeddings", 8192.0) as usize,
        }),
        "" | "default" => Ok(RopeScaling::None),
        other => Err(TealError::UnsupportedModel(format!("rope_scaling type '{other}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gqa_and_tied() {
        let c = LlamaConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":172,"num_hidden_layers":5,
            "num_attention_heads":8,"num_key_value_heads":4,"vocab_size":512,"tie_word_embeddings":true}"#,
        )
        .unwrap();
        assert_eq!((c.num_kv_heads, c.head_dim, c.tie_word_embeddings), (4, 8, true));
        assert!(!c.qkv_bias);
    }

    #[test]
    fn gemma3_text_configs_teal_cannot_run_are_refused_by_name() {
        let base = r#"{"model_type":"gemma3_text","hidden_size":64,"intermediate_size":96,"num_hidden_layers":4,
            "num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"vocab_size":512,"sliding_window":4,
            "layer_types":["sliding_attention","full_attention","sliding_attention","full_attention"]}"#;
        let c = LlamaConfig::from_hf_json(base).unwrap();
        assert_eq!(c.family, Family::Gemma3 { window: 4, global_every: 2, local_rope_theta: 10_000.0 });
        assert!(c.norm_plus_one);
        let hostile = [
            (r#""sliding_window":0"#, "no sliding_window"),
            (
                r#""layer_types":["full_attention","sliding_attention","sliding_attention","full_attention"]"#,
                "no regular pattern",
            ),
            (r#""layer_types":["sliding_attention"]"#, "no regular pattern"),
            (r#""final_logit_softcapping":30.0"#, "soft-capping"),
            (r#""query_pre_attn_scalar":256"#, "query_pre_attn_scalar"),
            (r#""hidden_activation":"relu""#, "activation"),
        ];
        for (field, want) in hostile {
            let key = field.split(':').next().unwrap();
            let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
            let patch: serde_json::Value = serde_json::from_str(&format!("{{{field}}}")).unwrap();
            v[key.trim_matches('"')] = patch[key.trim_matches('"')].clone();
            let err = LlamaConfig::from_hf_json(&v.to_string()).unwrap_err().to_string();
            assert!(err.contains(want), "{field}: {err}");
        }
    }

    #[test]
    fn qwen2_has_bias_and_bad_heads_rejected() {
        let q = LlamaConfig::from_hf_json(
            r#"{"model_type":"qwen2","hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":10}"#,
        )
        .unwrap();
        assert!(q.qkv_bias);
        let err = LlamaConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":3,"vocab_size":10}"#,
        );
        assert!(err.is_err());
        assert!(LlamaConfig::from_hf_json(r#"{"model_type":"bert"}"#).is_err());
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies() {
        let mut c = LlamaConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":128,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":1,"vocab_size":10,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        let scaled = c.rope_inv_freq();
        c.rope_scaling = RopeScaling::None;
        let base = c.rope_inv_freq();
        assert_eq!(scaled[0], base[0]);
        assert!((scaled[63] - base[63] / 8.0).abs() < 1e-12);
    }
}
