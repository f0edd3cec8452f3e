//! The linear layers every architecture is made of: one weight (candle's dense or quantized matmul, or teal's own
//! CPU kernel) and an optional bias, and groups of layers that read the same input (q/k/v, gate/up) stacked into
//! one matmul when their formats allow it. weights.rs builds them from a file; shared.rs holds identical ones once.

use super::cpu_quant::QuantMatrix;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::sync::Arc;

/// Bytes of a tensor's elements.
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// The weight of a linear layer: candle's dense or quantized matmul, or teal's CPU kernel (cpu_quant.rs).
#[derive(Clone)]
pub(super) enum Weight {
    Candle(QMatMul),
    Cpu(Arc<QuantMatrix>),
}

/// A linear layer `y = x W^T + b`, dense or quantized.
#[derive(Clone)]
pub struct Linear {
    pub(super) w: Weight,
    pub(super) b: Option<Tensor>,
}

impl Linear {
    /// Bytes of the weight and bias on their device.
    pub fn bytes(&self) -> u64 {
        let w = match &self.w {
            Weight::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes() as u64,
            Weight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => tensor_bytes(t),
            Weight::Cpu(m) => m.bytes(),
        };
        w + self.b.as_ref().map(tensor_bytes).unwrap_or(0)
    }

    /// A copy on `device` (parking moves a standby's weights to host memory and back).
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Linear> {
        let w = match &self.w {
            Weight::Cpu(m) if device.is_cpu() => Weight::Cpu(m.clone()),
            Weight::Cpu(m) => Weight::Candle(QMatMul::from_qtensor(m.to_qtensor(device)?)?),
            Weight::Candle(QMatMul::QTensor(q)) => {
                let storage = candle_core::quantized::QStorage::from_data(q.data()?, device, q.dtype())?;
                Weight::Candle(QMatMul::from_qtensor(QTensor::new(storage, q.shape().clone())?)?)
            }
            Weight::Candle(QMatMul::Tensor(t)) => Weight::Candle(QMatMul::Tensor(t.to_device(device)?)),
            Weight::Candle(QMatMul::TensorF16(t)) => Weight::Candle(QMatMul::TensorF16(t.to_device(device)?)),
        };
        let b = self.b.as_ref().map(|b| b.to_device(device)).transpose()?;
        Ok(Linear { w, b })
    }

    /// The weight where it is teal's CPU matrix (a tied head then also serves as the embedding table).
    pub fn cpu_matrix(&self) -> Option<Arc<QuantMatrix>> {
        match &self.w {
            Weight::Cpu(m) => Some(m.clone()),
            Weight::Candle(_) => None,
        }
    }

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
#[derive(Clone)]
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

    /// A group whose parts are already one matrix; `sizes` are the parts' output widths.
    pub fn fused(linear: Linear, sizes: Vec<usize>) -> Self {
        LinearGroup { fused: Some(linear), parts: vec![], sizes }
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

    pub fn bytes(&self) -> u64 {
        self.fused.iter().chain(&self.parts).map(Linear::bytes).sum()
    }

    pub fn to_device(&self, device: &Device) -> candle_core::Result<LinearGroup> {
        Ok(LinearGroup {
            fused: self.fused.as_ref().map(|f| f.to_device(device)).transpose()?,
            parts: self.parts.iter().map(|p| p.to_device(device)).collect::<candle_core::Result<_>>()?,
            sizes: self.sizes.clone(),
        })
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
