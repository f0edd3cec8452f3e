//! The gated MLP activation `act(gate) * up` (SiLU for Llama-family models, tanh-GELU for Gemma) as one CPU op:
//! parallel over the batch on the engine's compute threads, and written so the compiler vectorizes it (candle's
//! unary ops run libm's `expf`/`tanhf` one value at a time on one thread, which was 8% of a Gemma prefill).
//! `exp` here is a polynomial with a relative error below 2e-7 (a few f32 ulps), branch-free so it vectorizes;
//! the softmax of the CPU attention (paged_attention/cpu.rs) uses it too. Other devices keep candle's ops.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The activation of the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `x * sigmoid(x)`.
    Silu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (PyTorch's `gelu(approximate="tanh")`).
    GeluTanh,
    /// tanh-GELU as ggml computes it (ggml_gelu.rs), for GGUF models: the same formula with the gate and the
    /// result rounded to f16.
    GeluF16,
}

/// `e^x` for f32, vectorizable: `2^n * p(r)` with `x = n ln2 + r`, |r| <= ln2/2, p a degree-6 polynomial.
/// Inputs are clamped to [-87.3, 88.7] (e^x stays a normal f32); NaN gives NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor coefficients 1/k! (degree 6 keeps the error under 2e-7 on |r| <= 0.347).
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // n is in [-126, 128]: build 2^n from the exponent bits in two halves so 2^128 does not overflow first.
    let half = (n * 0.5).floor();
    let scale = |k: f32| f32::from_bits((((k as i32) + 127) as u32) << 23);
    p * scale(half) * scale(n - half)
}

#[inline(always)]
fn act(kind: Act, x: f32) -> f32 {
    match kind {
        Act::Silu => x / (1.0 + exp(-x)),
        Act::GeluTanh | Act::GeluF16 => {
            // 0.5 (1 + tanh(u)) = sigmoid(2u).
            let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
            x / (1.0 + exp(-2.0 * u))
        }
    }
}

/// `act(gate) * up` elementwise into `out`.
pub fn gated(kind: Act, gate: &[f32], up: &[f32], out: &mut [f32]) {
    if kind == Act::GeluF16 {
        return super::ggml_gelu::gated(gate, up, out);
    }
    #[cfg(target_arch = "x86_64")]
    if super::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { gated_avx2(kind, gate, up, out) };
    }
    gated_portable(kind, gate, up, out)
}

#[inline(always)]
fn gated_portable(kind: Act, gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = act(kind, g) * u;
    }
}

/// `gated_portable` compiled for AVX2+FMA (eight lanes, and `floor` one instruction rather than a libm call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2(kind: Act, gate: &[f32], up: &[f32], out: &mut [f32]) {
    gated_portable(kind, gate, up, out)
}

struct Gated(Act);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "teal-gated-activation"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else {
            candle_core::bail!("gated activation: f32 inputs expected, got {:?}", s1.dtype())
        };
        let (Some((ga, gb)), Some((ua, ub))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("gated activation: inputs must be contiguous")
        };
        if l1.dims() != l2.dims() {
            candle_core::bail!("gated activation: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        let (g, u) = (&g[ga..gb], &u[ua..ub]);
        let mut out = vec![0f32; g.len()];
        const CHUNK: usize = 4096;
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| gated(self.0, g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `act(gate) * up`: teal's op for contiguous f32 on the CPU, candle's ops elsewhere.
pub fn gated_mlp(kind: Act, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == candle_core::DType::F32 && up.dtype() == candle_core::DType::F32 {
        return gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &Gated(kind));
    }
    let a = match kind {
        Act::Silu => candle_nn::ops::silu(gate)?,
        Act::GeluTanh | Act::GeluF16 => gate.gelu()?,
    };
    a * up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulps_of_libm_over_the_whole_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(1000.0).is_finite() && exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn activations_match_their_textbook_formulas() {
        for i in -4000..4000 {
            let x = i as f32 * 0.005;
            let xd = x as f64;
            let silu = xd / (1.0 + (-xd).exp());
            let gelu = 0.5 * xd * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            for (kind, want) in [(Act::Silu, silu), (Act::GeluTanh, gelu)] {
                let got = act(kind, x) as f64;
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "{kind:?}({x}) = {got}, want {want}");
            }
        }
        assert!(act(Act::GeluTanh, -200.0).abs() < 1e-30);
        assert_eq!(act(Act::Silu, 200.0), 200.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_copy_gives_the_portable_loops_bits() {
        if !crate::ops::avx2_fma() {
            return;
        }
        let dev = candle_core::Device::Cpu;
        let g: Vec<f32> = Tensor::randn(0f32, 4.0, 4099, &dev).unwrap().to_vec1().unwrap();
        let u: Vec<f32> = Tensor::randn(0f32, 1.0, 4099, &dev).unwrap().to_vec1().unwrap();
        for kind in [Act::Silu, Act::GeluTanh] {
            let (mut fast, mut plain) = (vec![0f32; g.len()], vec![0f32; g.len()]);
            // SAFETY: avx2_fma() said the CPU has AVX2 and FMA.
            unsafe { gated_avx2(kind, &g, &u, &mut fast) };
            gated_portable(kind, &g, &u, &mut plain);
            let differ = fast.iter().zip(&plain).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{kind:?}: values that differ between the AVX2 copy and the portable loop");
        }
    }

    #[test]
    fn the_op_matches_candles_ops_on_a_batch() {
        let dev = candle_core::Device::Cpu;
        let g = Tensor::randn(0f32, 3.0, (37, 300), &dev).unwrap();
        let u = Tensor::randn(0f32, 1.0, (37, 300), &dev).unwrap();
        for kind in [Act::Silu, Act::GeluTanh] {
            let got = gated_mlp(kind, &g, &u).unwrap();
            let a = if kind == Act::Silu { candle_nn::ops::silu(&g).unwrap() } else { g.gelu().unwrap() };
            let want = (a * &u).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{kind:?}: max diff {diff}");
        }
        let bad = Tensor::zeros((37, 299), candle_core::DType::F32, &dev).unwrap();
        assert!(gated_mlp(Act::Silu, &g, &bad).is_err());
    }
}
