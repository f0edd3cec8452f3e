//! Reads named weight tensors from either a Hugging Face safetensors checkpoint (single file or shards, memory
//! mapped) or a GGUF file, so the architecture code (llama.rs) asks for logical tensors and never cares about
//! the file format. GGUF weights stay quantized unless the caller asks for a dense dtype.

use super::cpu_quant::QuantMatrix;
use super::linear::{Linear, LinearGroup, Weight};
use super::shared::{Holdings, Item, Key};
use crate::error::{Result, TealError};
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A logical tensor of a Llama-family checkpoint.
#[derive(Debug, Clone, Copy)]
pub enum Tn {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    MlpNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
    /// Gemma 3: RMS norms of each head's query and key, and the norms after attention and after the MLP.
    QNorm(usize),
    KNorm(usize),
    PostAttnNorm(usize),
    PostMlpNorm(usize),
    /// Gemma 3's norm before the MLP (in GGUF files, the MLP norm every model has).
    PreMlpNorm(usize),
    /// Phi-3: q, k and v in one matrix, gate and up in one matrix.
    Qkv(usize),
    GateUp(usize),
}

impl Tn {
    pub(crate) fn hf(self) -> String {
        let l = |i: usize, s: &str| format!("model.layers.{i}.{s}");
        match self {
            Tn::Embed => "model.embed_tokens.weight".into(),
            Tn::FinalNorm => "model.norm.weight".into(),
            Tn::LmHead => "lm_head.weight".into(),
            Tn::AttnNorm(i) => l(i, "input_layernorm.weight"),
            Tn::Q(i) => l(i, "self_attn.q_proj.weight"),
            Tn::K(i) => l(i, "self_attn.k_proj.weight"),
            Tn::V(i) => l(i, "self_attn.v_proj.weight"),
            Tn::O(i) => l(i, "self_attn.o_proj.weight"),
            Tn::QBias(i) => l(i, "self_attn.q_proj.bias"),
            Tn::KBias(i) => l(i, "self_attn.k_proj.bias"),
            Tn::VBias(i) => l(i, "self_attn.v_proj.bias"),
            Tn::MlpNorm(i) => l(i, "post_attention_layernorm.weight"),
            Tn::Gate(i) => l(i, "mlp.gate_proj.weight"),
            Tn::Up(i) => l(i, "mlp.up_proj.weight"),
            Tn::Down(i) => l(i, "mlp.down_proj.weight"),
            Tn::QNorm(i) => l(i, "self_attn.q_norm.weight"),
            Tn::KNorm(i) => l(i, "self_attn.k_norm.weight"),
            Tn::PostAttnNorm(i) => l(i, "post_attention_layernorm.weight"),
            Tn::PostMlpNorm(i) => l(i, "post_feedforward_layernorm.weight"),
            Tn::PreMlpNorm(i) => l(i, "pre_feedforward_layernorm.weight"),
            Tn::Qkv(i) => l(i, "self_attn.qkv_proj.weight"),
            Tn::GateUp(i) => l(i, "mlp.gate_up_proj.weight"),
        }
    }

    pub(crate) fn gguf(self) -> String {
        let l = |i: usize, s: &str| format!("blk.{i}.{s}");
        match self {
            Tn::Embed => "token_embd.weight".into(),
            Tn::FinalNorm => "output_norm.weight".into(),
            Tn::LmHead => "output.weight".into(),
            Tn::AttnNorm(i) => l(i, "attn_norm.weight"),
            Tn::Q(i) => l(i, "attn_q.weight"),
            Tn::K(i) => l(i, "attn_k.weight"),
            Tn::V(i) => l(i, "attn_v.weight"),
            Tn::O(i) => l(i, "attn_output.weight"),
            Tn::QBias(i) => l(i, "attn_q.bias"),
            Tn::KBias(i) => l(i, "attn_k.bias"),
            Tn::VBias(i) => l(i, "attn_v.bias"),
            Tn::MlpNorm(i) => l(i, "ffn_norm.weight"),
            Tn::Gate(i) => l(i, "ffn_gate.weight"),
            Tn::Up(i) => l(i, "ffn_up.weight"),
            Tn::Down(i) => l(i, "ffn_down.weight"),
            Tn::QNorm(i) => l(i, "attn_q_norm.weight"),
            Tn::KNorm(i) => l(i, "attn_k_norm.weight"),
            Tn::PostAttnNorm(i) => l(i, "post_attention_norm.weight"),
            Tn::PostMlpNorm(i) => l(i, "post_ffw_norm.weight"),
            Tn::PreMlpNorm(i) => l(i, "ffn_norm.weight"),
            Tn::Qkv(i) => l(i, "attn_qkv.weight"),
            // llama.cpp stores Phi-3's fused gate/up matrix under the up projection's name.
            Tn::GateUp(i) => l(i, "ffn_up.weight"),
        }
    }
}

/// Where the weights come from and in which form they are kept.
pub enum WeightSource {
    Safetensors { st: MmapedSafetensors, dtype: DType },
    Gguf { content: gguf_file::Content, file: std::fs::File, path: PathBuf, dense: Option<DType> },
}

impl WeightSource {
    pub fn safetensors(files: &[PathBuf], dtype: DType) -> Result<Self> {
        for f in files {
            super::safetensors_check::header(f)?;
        }
        // SAFETY: the files are opened read-only; a concurrent writer would corrupt the mapping, which is the
        // same contract every safetensors loader has. Headers are validated by the safetensors crate.
        let st = unsafe { MmapedSafetensors::multi(files) }
            .map_err(|e| TealError::InvalidModel(format!("safetensors: {e}")))?;
        Ok(WeightSource::Safetensors { st, dtype })
    }

    pub fn gguf(path: &Path, content: gguf_file::Content, dense: Option<DType>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| TealError::io(path, e))?;
        Ok(WeightSource::Gguf { content, file, path: path.to_path_buf(), dense })
    }

    /// The dtype activations flow in: the dense dtype, or f32 around quantized matmuls.
    pub fn activation_dtype(&self) -> DType {
        match self {
            WeightSource::Safetensors { dtype, .. } => *dtype,
            WeightSource::Gguf { dense, .. } => dense.unwrap_or(DType::F32),
        }
    }

    pub fn has(&self, tn: Tn) -> bool {
        match self {
            WeightSource::Safetensors { st, .. } => st.get(&tn.hf()).is_ok(),
            WeightSource::Gguf { content, .. } => content.tensor_infos.contains_key(&tn.gguf()),
        }
    }

    fn qtensor(&mut self, tn: Tn, device: &Device) -> Result<QTensor> {
        let WeightSource::Gguf { content, file, path, .. } = self else {
            return Err(TealError::InvalidModel("qtensor on a non-GGUF source".into()));
        };
        let name = tn.gguf();
        content
            .tensor(file, &name, device)
            .map_err(|e| TealError::InvalidModel(format!("{}: tensor {name}: {e}", path.display())))
    }

    /// A dense tensor in the activation dtype (norm weights, biases, embeddings).
    pub fn dense(&mut self, tn: Tn, device: &Device) -> Result<Tensor> {
        let dtype = self.activation_dtype();
        let t = match self {
            WeightSource::Safetensors { st, .. } => {
                st.load(&tn.hf(), device).map_err(|e| TealError::InvalidModel(format!("tensor {}: {e}", tn.hf())))?
            }
            WeightSource::Gguf { .. } => self.qtensor(tn, device)?.dequantize(device)?,
        };
        Ok(t.to_dtype(dtype)?)
    }

    /// A weight matrix `[out, in]` with an expected shape, checked so that a corrupt file fails at load.
    pub fn linear(&mut self, tn: Tn, bias: Option<Tn>, shape: (usize, usize), device: &Device) -> Result<Linear> {
        let w = match self {
            WeightSource::Gguf { dense: None, .. } => {
                let q = self.qtensor(tn, device)?;
                check_shape(tn, q.shape().dims(), shape)?;
                // On the CPU teal's kernels run the formats they have a layout for (cpu_quant/repack.rs).
                let repacked = if device.is_cpu() {
                    QuantMatrix::from_gguf(q.dtype(), &q.data()?, shape.0, shape.1)?
                } else {
                    None
                };
                match repacked {
                    Some(m) => Weight::Cpu(Arc::new(m)),
                    None => Weight::Candle(QMatMul::from_arc(Arc::new(q))?),
                }
            }
            _ => {
                let t = self.dense(tn, device)?;
                check_shape(tn, t.dims(), shape)?;
                Weight::Candle(QMatMul::Tensor(t))
            }
        };
        let b = match bias {
            Some(b) => {
                // One value per output: a bias of another length would fail only when a batch runs.
                let t = self.dense(b, device)?;
                check_shape(b, t.dims(), (shape.0, 0))?;
                Some(t)
            }
            None => None,
        };
        Ok(Linear { w, b })
    }
}

impl WeightSource {
    /// The content key of a tensor as `form` loads it: BLAKE3 of the form, the target dtype and the source bytes
    /// (the safetensors view, or the GGUF block data). Computed before anything is allocated on the device.
    pub fn key(&self, tn: Tn, form: &str) -> Result<Key> {
        let mut h = blake3::Hasher::new();
        h.update(form.as_bytes());
        h.update(format!("|{:?}|", self.activation_dtype()).as_bytes());
        match self {
            WeightSource::Safetensors { st, .. } => {
                let name = tn.hf();
                let view = st.get(&name).map_err(|e| TealError::InvalidModel(format!("tensor {name}: {e}")))?;
                h.update(format!("{:?}{:?}", view.dtype(), view.shape()).as_bytes());
                h.update(view.data());
            }
            WeightSource::Gguf { content, file, path, dense } => {
                let name = tn.gguf();
                let bad = |e: String| TealError::InvalidModel(format!("{}: tensor {name}: {e}", path.display()));
                let info = content.tensor_infos.get(&name).ok_or_else(|| bad("missing".into()))?;
                let dt = info.ggml_dtype;
                let len = info.shape.elem_count() / dt.block_size() * dt.type_size();
                let mut buf = vec![0u8; len];
                use std::os::unix::fs::FileExt;
                file.read_exact_at(&mut buf, content.tensor_data_offset + info.offset)
                    .map_err(|e| bad(e.to_string()))?;
                h.update(format!("{dt:?}{:?}{dense:?}", info.shape.dims()).as_bytes());
                h.update(&buf);
            }
        }
        Ok(*h.finalize().as_bytes())
    }
}

fn combine(tag: &str, keys: &[Key]) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(tag.as_bytes());
    for k in keys {
        h.update(k);
    }
    *h.finalize().as_bytes()
}

/// Loads a model's tensors through the shared-weights registry: every object is looked up by its content key
/// first and built only when the device does not hold it yet. What the model takes is recorded in `hold`.
pub struct Loader<'a> {
    pub src: &'a mut WeightSource,
    pub hold: Holdings,
    pub device: Device,
}

impl Loader<'_> {
    /// A dense tensor (embeddings).
    pub fn dense(&mut self, tn: Tn) -> Result<Tensor> {
        let key = self.src.key(tn, "dense")?;
        let (src, device) = (&mut *self.src, &self.device);
        match self.hold.intern(key, || Ok(Item::Tensor(src.dense(tn, device)?)))? {
            Item::Tensor(t) => Ok(t),
            _ => Err(TealError::InvalidModel(format!("tensor {tn:?}: shared object of another kind"))),
        }
    }

    /// A 1-D vector of a given length (norm weights).
    pub fn vector(&mut self, tn: Tn, len: usize) -> Result<Tensor> {
        let t = self.dense(tn)?;
        check_shape(tn, t.dims(), (len, 0))?;
        Ok(t)
    }

    fn linear_key(&self, tn: Tn, bias: Option<Tn>) -> Result<Key> {
        let mut keys = vec![self.src.key(tn, "linear")?];
        if let Some(b) = bias {
            keys.push(self.src.key(b, "bias")?);
        }
        Ok(combine("linear", &keys))
    }

    /// A linear layer (see `WeightSource::linear`).
    pub fn linear(&mut self, tn: Tn, bias: Option<Tn>, shape: (usize, usize)) -> Result<Linear> {
        let key = self.linear_key(tn, bias)?;
        let (src, device) = (&mut *self.src, &self.device);
        match self.hold.intern(key, || Ok(Item::Linear(src.linear(tn, bias, shape, device)?)))? {
            Item::Linear(l) => Ok(l),
            _ => Err(TealError::InvalidModel(format!("tensor {tn:?}: shared object of another kind"))),
        }
    }

    /// Linear layers reading the same input, stacked (`LinearGroup`); shared as one object.
    /// A group stored as one matrix (Phi-3's qkv_proj, gate_up_proj): its output splits into `sizes`.
    pub fn fused_group(&mut self, tn: Tn, shape: (usize, usize), sizes: Vec<usize>) -> Result<LinearGroup> {
        if sizes.iter().sum::<usize>() != shape.0 {
            return Err(TealError::InvalidModel(format!("{tn:?}: parts {sizes:?} do not add up to {}", shape.0)));
        }
        Ok(LinearGroup::fused(self.linear(tn, None, shape)?, sizes))
    }

    pub fn group(&mut self, parts: &[(Tn, Option<Tn>, (usize, usize))]) -> Result<LinearGroup> {
        let keys = parts.iter().map(|&(tn, b, _)| self.linear_key(tn, b)).collect::<Result<Vec<_>>>()?;
        let key = combine("group", &keys);
        let (src, device) = (&mut *self.src, &self.device);
        let make = || {
            let linears =
                parts.iter().map(|&(tn, b, shape)| src.linear(tn, b, shape, device)).collect::<Result<Vec<_>>>()?;
            let sizes = parts.iter().map(|p| p.2 .0).collect();
            Ok(Item::Group(LinearGroup::new(linears, sizes)?))
        };
        match self.hold.intern(key, make)? {
            Item::Group(g) => Ok(g),
            _ => Err(TealError::InvalidModel(format!("group {:?}: shared object of another kind", parts[0].0))),
        }
    }
}

fn check_shape(tn: Tn, got: &[usize], want: (usize, usize)) -> Result<()> {
    let ok = match got {
        [a] => want == (*a, 0),
        [a, b] => want == (*a, *b),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(TealError::InvalidModel(format!("tensor {tn:?} has shape {got:?}, expected {want:?}")))
    }
}
