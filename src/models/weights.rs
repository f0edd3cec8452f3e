//! Reads named weight tensors from either a Hugging Face safetensors checkpoint (single file or shards, memory
//! mapped) or a GGUF file, so the architecture code (llama.rs) asks for logical tensors and never cares about
//! the file format. GGUF weights stay quantized unless the caller asks for a dense dtype.

use super::cpu_quant::{Format, QuantMatrix};
use crate::error::{Result, TealError};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};
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
}

impl Tn {
    fn hf(self) -> String {
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
        }
    }

    fn gguf(self) -> String {
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
        }
    }
}

/// The weight of a linear layer: candle's dense or quantized matmul, or teal's CPU kernel (cpu_quant.rs).
#[derive(Clone)]
enum Weight {
    Candle(QMatMul),
    Cpu(Arc<QuantMatrix>),
}

/// A linear layer `y = x W^T + b`, dense or quantized.
#[derive(Clone)]
pub struct Linear {
    w: Weight,
    b: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.w {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Cpu(w) => w.forward(x)?,
        };
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Linear layers that read the same input (q/k/v, gate/up), stacked into one matmul when their weights allow
/// it (fewer passes over the input and fewer parallel regions per step); otherwise run one by one.
pub struct LinearGroup {
    fused: Option<Linear>,
    parts: Vec<Linear>,
    sizes: Vec<usize>,
}

impl LinearGroup {
    /// `sizes` are the output widths of `parts`.
    pub fn new(parts: Vec<Linear>, sizes: Vec<usize>) -> candle_core::Result<Self> {
        let fused = Self::stack(&parts)?;
        let parts = if fused.is_some() { vec![] } else { parts };
        Ok(LinearGroup { fused, parts, sizes })
    }

    fn stack(parts: &[Linear]) -> candle_core::Result<Option<Linear>> {
        let w = match parts.iter().map(|p| &p.w).collect::<Vec<_>>().as_slice() {
            ws if ws.iter().all(|w| matches!(w, Weight::Cpu(_))) => {
                let ms: Vec<&QuantMatrix> =
                    ws.iter().filter_map(|w| if let Weight::Cpu(m) = w { Some(m.as_ref()) } else { None }).collect();
                match QuantMatrix::stack(&ms) {
                    Some(m) => Weight::Cpu(Arc::new(m)),
                    None => return Ok(None),
                }
            }
            ws if ws.iter().all(|w| matches!(w, Weight::Candle(QMatMul::Tensor(_)))) => {
                let ts: Vec<&Tensor> = ws
                    .iter()
                    .filter_map(|w| if let Weight::Candle(QMatMul::Tensor(t)) = w { Some(t) } else { None })
                    .collect();
                Weight::Candle(QMatMul::Tensor(Tensor::cat(&ts, 0)?))
            }
            _ => return Ok(None),
        };
        let b = match parts.iter().map(|p| p.b.as_ref()).collect::<Option<Vec<_>>>() {
            Some(bs) => Some(Tensor::cat(&bs, 0)?),
            None if parts.iter().all(|p| p.b.is_none()) => None,
            None => return Ok(None),
        };
        Ok(Some(Linear { w, b }))
    }

    /// One output per part, `[tokens, size]` each.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let Some(fused) = &self.fused else { return self.parts.iter().map(|p| p.forward(x)).collect() };
        let y = fused.forward(x)?;
        let mut at = 0;
        self.sizes
            .iter()
            .map(|&n| {
                let part = y.narrow(1, at, n);
                at += n;
                part
            })
            .collect()
    }
}

/// Where the weights come from and in which form they are kept.
pub enum WeightSource {
    Safetensors { st: MmapedSafetensors, dtype: DType },
    Gguf { content: gguf_file::Content, file: std::fs::File, path: PathBuf, dense: Option<DType> },
}

impl WeightSource {
    pub fn safetensors(files: &[PathBuf], dtype: DType) -> Result<Self> {
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
                let cpu_format = match q.dtype() {
                    GgmlDType::Q4_1 => Some(Format::Q4_1),
                    GgmlDType::Q8_0 => Some(Format::Q8_0),
                    _ => None,
                };
                match cpu_format {
                    Some(f) if device.is_cpu() => {
                        Weight::Cpu(Arc::new(QuantMatrix::new(f, q.data()?.to_vec(), shape.0, shape.1)?))
                    }
                    _ => Weight::Candle(QMatMul::from_arc(Arc::new(q))?),
                }
            }
            _ => {
                let t = self.dense(tn, device)?;
                check_shape(tn, t.dims(), shape)?;
                Weight::Candle(QMatMul::Tensor(t))
            }
        };
        let b = match bias {
            Some(b) => Some(self.dense(b, device)?),
            None => None,
        };
        Ok(Linear { w, b })
    }

    /// A 1-D vector of a given length.
    pub fn vector(&mut self, tn: Tn, len: usize, device: &Device) -> Result<Tensor> {
        let t = self.dense(tn, device)?;
        check_shape(tn, t.dims(), (len, 0))?;
        Ok(t)
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
