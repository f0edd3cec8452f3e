//! The Llama-family decoder (Llama, Mistral, Qwen2, SmolLM): weights only, no state. One forward pass runs a
//! ragged batch (every sequence's new tokens concatenated, prefill and decode mixed) against the engine's KV
//! pool and returns logits only for the rows the engine will sample from.

use super::config::{LlamaConfig, RopeStyle};
use super::linear::{tensor_bytes, Linear, LinearGroup};
use super::shared::{Holdings, TensorRegistry};
use super::weights::{Loader, Tn, WeightSource};
use crate::error::Result;
use crate::ops::paged_attention::{paged_attention, write_kv, AttnMeta};
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
}

pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// `[max_positions, head_dim/2]` rotary tables, computed once at load.
    cos: Tensor,
    sin: Tensor,
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
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            layers.push(Layer {
                attn_norm: ld.vector(Tn::AttnNorm(l), h)?,
                qkv: ld.group(&[
                    (Tn::Q(l), bias(Tn::QBias(l)), (q_out, h)),
                    (Tn::K(l), bias(Tn::KBias(l)), (kv_out, h)),
                    (Tn::V(l), bias(Tn::VBias(l)), (kv_out, h)),
                ])?,
                o: ld.linear(Tn::O(l), None, (h, q_out))?,
                mlp_norm: ld.vector(Tn::MlpNorm(l), h)?,
                gate_up: ld.group(&[(Tn::Gate(l), None, (i, h)), (Tn::Up(l), None, (i, h))])?,
                down: ld.linear(Tn::Down(l), None, (h, i))?,
            });
        }
        let embed = ld.dense(Tn::Embed)?;
        if embed.dims() != [cfg.vocab_size, h] {
            return Err(crate::error::TealError::InvalidModel(format!(
                "embedding has shape {:?}, expected [{}, {h}]",
                embed.dims(),
                cfg.vocab_size
            )));
        }
        let head_tn = if ld.src.has(Tn::LmHead) { Tn::LmHead } else { Tn::Embed };
        let lm_head = ld.linear(head_tn, None, (cfg.vocab_size, h))?;
        let norm = ld.vector(Tn::FinalNorm, h)?;
        let (cos, sin) = rope_tables(&cfg, device)?;
        Ok(Llama { dtype, cfg, embed, layers, norm, lm_head, cos, sin, device: device.clone(), hold: ld.hold })
    }

    /// Bytes of the weights on the device (shared objects counted once) and the rotary tables.
    pub fn weight_bytes(&self) -> u64 {
        self.hold.bytes() + tensor_bytes(&self.cos) + tensor_bytes(&self.sin)
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
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Llama {
            cfg: self.cfg.clone(),
            embed: self.embed.to_device(device)?,
            layers,
            norm: self.norm.to_device(device)?,
            lm_head: self.lm_head.to_device(device)?,
            cos: self.cos.to_device(device)?,
            sin: self.sin.to_device(device)?,
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
        let cos = self.cos.index_select(&positions, 0)?.reshape((n, 1, half))?;
        let sin = self.sin.index_select(&positions, 0)?.reshape((n, 1, half))?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let (kp, vp) = kv.layer(l);
            x = self.block(layer, &x, &cos, &sin, kp, vp, &input.meta)?;
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

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kp: &Tensor,
        vp: &Tensor,
        meta: &Arc<AttnMeta>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (n, hd) = (x.dim(0)?, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let h = candle_nn::ops::rms_norm(x, &layer.attn_norm, eps)?;
        let [q, k, v]: [Tensor; 3] =
            layer.qkv.forward(&h)?.try_into().map_err(|_| candle_core::Error::Msg("qkv".into()))?;
        let q = q.to_dtype(DType::F32)?.contiguous()?.reshape((n, cfg.num_heads, 1, hd))?;
        let k = k.to_dtype(DType::F32)?.contiguous()?.reshape((n, cfg.num_kv_heads, 1, hd))?;
        let v = v.to_dtype(DType::F32)?;
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
        let attn = paged_attention(&q, kp, vp, meta, cfg.num_kv_heads)?.to_dtype(self.dtype)?;
        let x = (x + layer.o.forward(&attn)?)?;
        let h = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, eps)?;
        let [gate, up]: [Tensor; 2] =
            layer.gate_up.forward(&h)?.try_into().map_err(|_| candle_core::Error::Msg("gate_up".into()))?;
        let mlp = (candle_nn::ops::silu(&gate)? * up)?;
        Ok((x + layer.down.forward(&mlp)?)?)
    }
}

fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv = cfg.rope_inv_freq();
    let half = inv.len();
    let max = cfg.max_position_embeddings;
    let mut angles = Vec::with_capacity(max * half);
    for p in 0..max {
        angles.extend(inv.iter().map(|f| p as f32 * f));
    }
    let t = Tensor::from_vec(angles, (max, half), device)?;
    Ok((t.cos()?, t.sin()?))
}
