//! The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3, Phi-3, SmolLM, and Gemma 3 with its extra norms and
//! local layers):
//! weights only, no state. One forward pass runs a ragged batch (every sequence's new tokens concatenated,
//! prefill and decode mixed) against the engine's KV pool and returns logits only for the rows the engine will
//! sample from.

use super::config::{Family, LlamaConfig, RopeStyle};
use super::cpu_quant::QuantMatrix;
use super::linear::{tensor_bytes, Linear, LinearGroup};
use super::shared::{Holdings, TensorRegistry};
use super::weights::{Loader, Tn, WeightSource};
use crate::error::Result;
use crate::ops::activation::{gated_mlp, Act};
use crate::ops::paged_attention::{paged_attention_windowed, write_kv, AttnMeta};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

struct Layer {
    attn_norm: Tensor,
    /// q, k and v projections.
    qkv: LinearGroup,
    o: Linear,
    mlp_norm: Tensor,
    /// gate and up projections.
    gate_up: LinearGroup,
    down: Linear,
    /// Qwen3 and Gemma 3: RMS norms of each query and key head (before the rotary embedding), f32.
    qk_norm: Option<NormPair>,
    /// Gemma 3: norms of the attention and MLP outputs before they join the residual stream.
    post_norms: Option<NormPair>,
}

/// Two norm weights that go together.
struct NormPair(Tensor, Tensor);

impl NormPair {
    fn to_device(&self, device: &Device) -> candle_core::Result<NormPair> {
        Ok(NormPair(self.0.to_device(device)?, self.1.to_device(device)?))
    }
}

/// Rotary tables `[max_positions, head_dim/2]`: cos and sin.
type Rope = (Tensor, Tensor);

/// The token embedding table: dense, or (a tied GGUF head in teal's CPU layout) rows looked up from the head
/// itself, so the table is held once and quantized (671 MB of f32 for Gemma 3's 262k x 640).
enum Embedding {
    Dense(Tensor),
    Head(Arc<QuantMatrix>),
}

pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// `[max_positions, head_dim/2]` rotary tables, computed once at load.
    cos: Tensor,
    sin: Tensor,
    /// The tables of local layers where their frequencies differ (Gemma 3).
    local_rope: Option<Rope>,
    device: Device,
    dtype: DType,
    /// Releases the shared objects when the model is dropped.
    hold: Holdings,
}

/// One engine step's input: the new tokens of every scheduled sequence and where they go.
pub struct StepInput {
    pub tokens: Vec<u32>,
    pub meta: Arc<AttnMeta>,
    /// Rows of the batch (indices into `tokens`) whose next-token logits are needed.
    pub logits_rows: Vec<u32>,
}

/// The per-layer key and value pools the forward pass reads and writes.
pub trait KvView {
    fn layer(&self, i: usize) -> (&Tensor, &Tensor);
}

impl Llama {
    /// Loads the weights on `device`, taking objects another model already holds there from `registry`.
    pub fn load(cfg: LlamaConfig, src: &mut WeightSource, device: &Device, registry: TensorRegistry) -> Result<Self> {
        let dtype = src.activation_dtype();
        let mut ld = Loader { src, hold: Holdings::new(registry, device), device: device.clone() };
        let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let bias = |b: Tn| if cfg.qkv_bias { Some(b) } else { None };
        let gemma = matches!(cfg.family, Family::Gemma3 { .. });
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let (qkv, gate_up) = if cfg.fused_projections {
                (
                    ld.fused_group(Tn::Qkv(l), (q_out + 2 * kv_out, h), vec![q_out, kv_out, kv_out])?,
                    ld.fused_group(Tn::GateUp(l), (2 * i, h), vec![i, i])?,
                )
            } else {
                (
                    ld.group(&[
                        (Tn::Q(l), bias(Tn::QBias(l)), (q_out, h)),
                        (Tn::K(l), bias(Tn::KBias(l)), (kv_out, h)),
                        (Tn::V(l), bias(Tn::VBias(l)), (kv_out, h)),
                    ])?,
                    ld.group(&[(Tn::Gate(l), None, (i, h)), (Tn::Up(l), None, (i, h))])?,
                )
            };
            let norms = |ld: &mut Loader, a: Tn, b: Tn, n: usize, dtype: DType| -> Result<NormPair> {
                Ok(NormPair(norm(ld, &cfg, a, n)?.to_dtype(dtype)?, norm(ld, &cfg, b, n)?.to_dtype(dtype)?))
            };
            let mlp_norm = if gemma { Tn::PreMlpNorm(l) } else { Tn::MlpNorm(l) };
            layers.push(Layer {
                attn_norm: norm(&mut ld, &cfg, Tn::AttnNorm(l), h)?,
                qkv,
                o: ld.linear(Tn::O(l), None, (h, q_out))?,
                mlp_norm: norm(&mut ld, &cfg, mlp_norm, h)?,
                gate_up,
                down: ld.linear(Tn::Down(l), None, (h, i))?,
                qk_norm: (gemma || cfg.qk_norm)
                    .then(|| norms(&mut ld, Tn::QNorm(l), Tn::KNorm(l), hd, DType::F32))
                    .transpose()?,
                post_norms: gemma
                    .then(|| norms(&mut ld, Tn::PostAttnNorm(l), Tn::PostMlpNorm(l), h, dtype))
                    .transpose()?,
            });
        }
        let head_tn = if ld.src.has(Tn::LmHead) { Tn::LmHead } else { Tn::Embed };
        let lm_head = ld.linear(head_tn, None, (cfg.vocab_size, h))?;
        let embed = if let Some(m) = lm_head.cpu_matrix().filter(|_| matches!(head_tn, Tn::Embed)) {
            Embedding::Head(m)
        } else {
            let embed = ld.dense(Tn::Embed)?;
            if embed.dims() != [cfg.vocab_size, h] {
                return Err(crate::error::TealError::InvalidModel(format!(
                    "embedding has shape {:?}, expected [{}, {h}]",
                    embed.dims(),
                    cfg.vocab_size
                )));
            }
            Embedding::Dense(embed)
        };
        let norm = norm(&mut ld, &cfg, Tn::FinalNorm, h)?;
        let (cos, sin) = rope_tables(&cfg, &cfg.rope_inv_freq(), device)?;
        let local_rope = cfg.local_rope_inv_freq().map(|f| rope_tables(&cfg, &f, device)).transpose()?;
        let device = device.clone();
        Ok(Llama { dtype, cfg, embed, layers, norm, lm_head, cos, sin, local_rope, device, hold: ld.hold })
    }

    /// Bytes of the weights on the device (shared objects counted once) and the rotary tables.
    pub fn weight_bytes(&self) -> u64 {
        let local = self.local_rope.as_ref().map(|(c, s)| tensor_bytes(c) + tensor_bytes(s)).unwrap_or(0);
        self.hold.bytes() + tensor_bytes(&self.cos) + tensor_bytes(&self.sin) + local
    }

    /// A copy of the weights on `device` (not shared with anything there). Parking uses it to move a standby's
    /// weights to host memory and back.
    pub fn to_device(&self, device: &Device) -> Result<Llama> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: l.attn_norm.to_device(device)?,
                    qkv: l.qkv.to_device(device)?,
                    o: l.o.to_device(device)?,
                    mlp_norm: l.mlp_norm.to_device(device)?,
                    gate_up: l.gate_up.to_device(device)?,
                    down: l.down.to_device(device)?,
                    qk_norm: l.qk_norm.as_ref().map(|n| n.to_device(device)).transpose()?,
                    post_norms: l.post_norms.as_ref().map(|n| n.to_device(device)).transpose()?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Llama {
            cfg: self.cfg.clone(),
            embed: match &self.embed {
                Embedding::Dense(t) => Embedding::Dense(t.to_device(device)?),
                Embedding::Head(m) if device.is_cpu() => Embedding::Head(m.clone()),
                Embedding::Head(m) => Embedding::Dense(m.to_qtensor(device)?.dequantize(device)?.to_dtype(self.dtype)?),
            },
            layers,
            norm: self.norm.to_device(device)?,
            lm_head: self.lm_head.to_device(device)?,
            cos: self.cos.to_device(device)?,
            sin: self.sin.to_device(device)?,
            local_rope: self
                .local_rope
                .as_ref()
                .map(|(c, s)| Ok::<_, candle_core::Error>((c.to_device(device)?, s.to_device(device)?)))
                .transpose()?,
            device: device.clone(),
            dtype: self.dtype,
            hold: Holdings::unshared(device, self.hold.bytes()),
        })
    }

    /// The shared-weights record of this model (what it holds, what another model also holds).
    pub fn holdings(&self) -> &Holdings {
        &self.hold
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs one step and returns f32 logits `[logits_rows.len(), vocab]`.
    pub fn forward(&self, input: &StepInput, kv: &dyn KvView) -> Result<Tensor> {
        let n = input.tokens.len();
        let ids = Tensor::from_slice(&input.tokens, n, &self.device)?;
        let positions = Tensor::from_slice(&input.meta.token_pos, n, &self.device)?;
        let half = self.cfg.head_dim / 2;
        let at = |(cos, sin): &Rope| -> candle_core::Result<Rope> {
            Ok((
                cos.index_select(&positions, 0)?.reshape((n, 1, half))?,
                sin.index_select(&positions, 0)?.reshape((n, 1, half))?,
            ))
        };
        let global = at(&(self.cos.clone(), self.sin.clone()))?;
        let local = self.local_rope.as_ref().map(at).transpose()?;
        let mut x = match &self.embed {
            Embedding::Dense(t) => t.index_select(&ids, 0)?,
            Embedding::Head(m) => m.rows_f32(&input.tokens)?.to_dtype(self.dtype)?,
        };
        if let Family::Gemma3 { .. } = self.cfg.family {
            x = (x * (self.cfg.hidden_size as f64).sqrt())?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let (kp, vp) = kv.layer(l);
            let window = self.cfg.window(l);
            let rope = match (&local, window) {
                (Some(local), Some(_)) => local,
                _ => &global,
            };
            x = self.block(layer, &x, rope, window, (kp, vp), &input.meta)?;
        }
        if input.logits_rows.is_empty() {
            // Only partial prefills in this step: nothing to predict, and no launch on a 0-row tensor (CUDA
            // rejects a 0-block grid).
            return Ok(Tensor::zeros((0, self.cfg.vocab_size), DType::F32, &Device::Cpu)?);
        }
        let rows = Tensor::from_slice(&input.logits_rows, input.logits_rows.len(), &self.device)?;
        let x = x.index_select(&rows, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps as f32)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// One decoder layer over the batch; `window` makes its attention local.
    fn block(
        &self,
        layer: &Layer,
        x: &Tensor,
        (cos, sin): &Rope,
        window: Option<usize>,
        (kp, vp): (&Tensor, &Tensor),
        meta: &Arc<AttnMeta>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (n, hd) = (x.dim(0)?, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let h = candle_nn::ops::rms_norm(x, &layer.attn_norm, eps)?;
        let [q, k, v]: [Tensor; 3] =
            layer.qkv.forward(&h)?.try_into().map_err(|_| candle_core::Error::Msg("qkv".into()))?;
        let mut q = q.to_dtype(DType::F32)?.contiguous()?.reshape((n, cfg.num_heads, 1, hd))?;
        let mut k = k.to_dtype(DType::F32)?.contiguous()?.reshape((n, cfg.num_kv_heads, 1, hd))?;
        let v = v.to_dtype(DType::F32)?;
        if let Some(NormPair(qn, kn)) = &layer.qk_norm {
            q = candle_nn::ops::rms_norm(&q, qn, eps)?;
            k = candle_nn::ops::rms_norm(&k, kn, eps)?;
        }
        let (q, k) = match cfg.rope_style {
            RopeStyle::Halves => {
                (candle_nn::rotary_emb::rope(&q, cos, sin)?, candle_nn::rotary_emb::rope(&k, cos, sin)?)
            }
            RopeStyle::Interleaved => {
                (candle_nn::rotary_emb::rope_i(&q, cos, sin)?, candle_nn::rotary_emb::rope_i(&k, cos, sin)?)
            }
        };
        write_kv(kp, &k, meta)?;
        write_kv(vp, &v, meta)?;
        let attn = paged_attention_windowed(&q, kp, vp, meta, cfg.num_kv_heads, window)?.to_dtype(self.dtype)?;
        let mut attn = layer.o.forward(&attn)?;
        if let Some(NormPair(post_attn, _)) = &layer.post_norms {
            attn = candle_nn::ops::rms_norm(&attn, post_attn, eps)?;
        }
        let x = (x + attn)?;
        let h = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, eps)?;
        let [gate, up]: [Tensor; 2] =
            layer.gate_up.forward(&h)?.try_into().map_err(|_| candle_core::Error::Msg("gate_up".into()))?;
        let act = match cfg.family {
            Family::Gemma3 { .. } if cfg.ggml_gelu => Act::GeluF16,
            Family::Gemma3 { .. } => Act::GeluTanh,
            Family::Llama => Act::Silu,
        };
        let mut mlp = layer.down.forward(&gated_mlp(act, &gate, &up)?)?;
        if let Some(NormPair(_, post_mlp)) = &layer.post_norms {
            mlp = candle_nn::ops::rms_norm(&mlp, post_mlp, eps)?;
        }
        Ok((x + mlp)?)
    }
}

/// A norm weight; `1 + w` where the file stores `w` for that scale (Gemma's HF checkpoints).
fn norm(ld: &mut Loader, cfg: &LlamaConfig, tn: Tn, len: usize) -> Result<Tensor> {
    let w = ld.vector(tn, len)?;
    Ok(if cfg.norm_plus_one { (w + 1.0)? } else { w })
}

fn rope_tables(cfg: &LlamaConfig, inv: &[f32], device: &Device) -> Result<Rope> {
    let half = inv.len();
    let max = cfg.max_position_embeddings;
    let mut angles = Vec::with_capacity(max * half);
    for p in 0..max {
        angles.extend(inv.iter().map(|f| p as f32 * f));
    }
    let t = Tensor::from_vec(angles, (max, half), device)?;
    Ok((t.cos()?, t.sin()?))
}
