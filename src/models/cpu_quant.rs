//! CPU matrix multiply for Q4_1 and Q8_0 GGUF weights (the formats of the SmolLM2 demo GGUF). candle's CPU
//! path for Q4_1 is a scalar loop, and neither format reuses a weight block across the tokens of a batch, so
//! batched decode and prefill cost as much per token as single-stream decode. Here each weight block is
//! unpacked once per tile of 4 tokens. Same arithmetic as ggml (activations quantized to 8 bits per 32-value
//! block, integer dot products; Q4_1 adds `m_w * s_x`), so results track llama.cpp; AVX2+FMA+F16C when the CPU
//! has them, a scalar version of the same formula otherwise (also the reference in the tests).

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;
/// The weight formats this module multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// f16 scale, f16 minimum, 16 bytes of nibbles (20 bytes per 32 weights).
    Q4_1,
    /// f16 scale, 32 signed bytes (34 bytes per 32 weights).
    Q8_0,
}

impl Format {
    fn block_bytes(self) -> usize {
        match self {
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }
}

/// A quantized weight matrix `[rows, cols]` as raw GGUF blocks, rows contiguous.
pub struct QuantMatrix {
    format: Format,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
}

/// One block of activations quantized to 8 bits; `d` and `s` are stored already rounded through f16, as ggml
/// keeps them.
#[derive(Clone, Copy)]
struct Q8_1 {
    d: f32,
    s: f32,
    qs: [i8; QK],
}

impl QuantMatrix {
    pub fn new(format: Format, data: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(QK) || data.len() != rows * cols / QK * format.block_bytes() {
            candle_core::bail!("{format:?} matrix [{rows}, {cols}] with {} bytes is malformed", data.len());
        }
        Ok(QuantMatrix { format, data, rows, cols })
    }

    /// Stacks matrices with the same format and width into one (rows concatenated), so projections that read
    /// the same input run as one matmul.
    pub fn stack(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols) {
            return None;
        }
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        Some(QuantMatrix { format: first.format, data, rows: parts.iter().map(|p| p.rows).sum(), cols: first.cols })
    }

    pub fn bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// The same blocks as a candle `QTensor` on `device` (for devices this module does not run on).
    pub fn to_qtensor(&self, device: &candle_core::Device) -> Result<candle_core::quantized::QTensor> {
        use candle_core::quantized::{GgmlDType, QStorage, QTensor};
        let dtype = match self.format {
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q8_0 => GgmlDType::Q8_0,
        };
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(&self.data), device, dtype)?;
        QTensor::new(storage, (self.rows, self.cols))
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.cols / QK * self.format.block_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// `x [tokens, cols] -> [tokens, rows]` (i.e. `x W^T`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

fn quantize_row(x: &[f32]) -> Vec<Q8_1> {
    x.chunks_exact(QK)
        .map(|b| {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; QK];
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(b) {
                *q = (v * id).round_ties_even() as i8;
                sum += *q as i32;
            }
            Q8_1 { d: f16::from_f32(d).to_f32(), s: f16::from_f32(d * sum as f32).to_f32(), qs }
        })
        .collect()
}

fn block_dm(w: &[u8]) -> (f32, f32) {
    (f16::from_le_bytes([w[0], w[1]]).to_f32(), f16::from_le_bytes([w[2], w[3]]).to_f32())
}

/// The plain-Rust dot product of one weight row with one quantized activation row.
fn dot_scalar(format: Format, w: &[u8], x: &[Q8_1]) -> f32 {
    if format == Format::Q8_0 {
        return w
            .chunks_exact(34)
            .zip(x)
            .map(|(wb, xb)| {
                let d = f16::from_le_bytes([wb[0], wb[1]]).to_f32();
                let acc: i32 = wb[2..].iter().zip(&xb.qs).map(|(&q, &y)| q as i8 as i32 * y as i32).sum();
                d * xb.d * acc as f32
            })
            .sum();
    }
    let mut sum = 0f32;
    for (wb, xb) in w.chunks_exact(20).zip(x) {
        let (d, m) = block_dm(wb);
        let mut acc = 0i32;
        for j in 0..QK / 2 {
            let q = wb[4 + j];
            acc += (q & 0x0F) as i32 * xb.qs[j] as i32 + (q >> 4) as i32 * xb.qs[j + QK / 2] as i32;
        }
        sum += d * xb.d * acc as f32 + m * xb.s;
    }
    sum
}

/// Dot products of one weight row with `N` token rows at once: each weight block is unpacked once and used
/// `N` times, which is what makes batched decode and prefill cheaper per token than single-stream decode.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_tile_avx2<const N: usize>(w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); N];
    let mut summs = [0f32; N];
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0F);
    for (i, wb) in w.chunks_exact(20).enumerate() {
        // SAFETY: wb has 20 bytes (f16 d, f16 m, 16 bytes of nibbles), each x block 32 quants; unaligned loads.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(wb.as_ptr() as *const i32)));
        let d = _mm_cvtss_f32(dm);
        let m = _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1));
        let nib = _mm_loadu_si128(wb.as_ptr().add(4) as *const __m128i);
        let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), low);
        for t in 0..N {
            let xb = xs[t].get_unchecked(i);
            summs[t] += m * xb.s;
            let y = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(prod), acc[t]);
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]) + summs[t];
    }
    out
}

/// Q8_0 weights against `N` token rows (8-bit activations): `d_w*d_x*sum(q_w*q_x)` per block, with the
/// sign trick so `maddubs` (unsigned x signed) can multiply two signed vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_tile_q8_0_avx2<const N: usize>(w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); N];
    let ones = _mm256_set1_epi16(1);
    for (i, wb) in w.chunks_exact(34).enumerate() {
        // SAFETY: wb has 34 bytes (f16 d, 32 quants), each x block 32 quants; unaligned loads.
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([wb[0], wb[1]]) as i32)));
        let q = _mm256_loadu_si256(wb.as_ptr().add(2) as *const __m256i);
        let aq = _mm256_sign_epi8(q, q);
        for t in 0..N {
            let xb = xs[t].get_unchecked(i);
            let y = _mm256_sign_epi8(_mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i), q);
            let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, y), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(prod), acc[t]);
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]);
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// `N` dot products of one weight row in the given format.
#[cfg(target_arch = "x86_64")]
unsafe fn dot_tile<const N: usize>(format: Format, w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    match format {
        Format::Q4_1 => dot_tile_avx2::<N>(w, xs),
        Format::Q8_0 => dot_tile_q8_0_avx2::<N>(w, xs),
    }
}

/// One weight row against every token: tiles of 4 tokens, then the remainder.
#[inline(never)]
fn row_dots(format: Format, w: &[u8], xq: &[Vec<Q8_1>], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let mut t = 0;
        // SAFETY (all calls): the CPU has avx2/fma/f16c, and every x row has as many blocks as the weight row.
        while t + 4 <= xq.len() {
            let r = unsafe { dot_tile::<4>(format, w, [&xq[t], &xq[t + 1], &xq[t + 2], &xq[t + 3]]) };
            out[t..t + 4].copy_from_slice(&r);
            t += 4;
        }
        for (o, x) in out[t..].iter_mut().zip(&xq[t..]) {
            *o = unsafe { dot_tile::<1>(format, w, [x]) }[0];
        }
        return;
    }
    for (o, x) in out.iter_mut().zip(xq) {
        *o = dot_scalar(format, w, x);
    }
}

/// Checked once: the feature test is too slow for the inner loop.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

impl CustomOp1 for QuantMatrix {
    fn name(&self) -> &'static str {
        "teal-quant-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("quantized matmul: f32 input expected, got {:?}", s.dtype())
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("quantized matmul: input must be contiguous")
        };
        let x = &v[a..b];
        let dims = l.dims();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!("quantized matmul: input {dims:?} does not end in {}", self.cols);
        }
        let tokens = x.len() / self.cols;
        let xq: Vec<Vec<Q8_1>> = x.par_chunks_exact(self.cols).map(quantize_row).collect();
        // Row-major over weights: each weight row is read once for every token.
        let mut out_t = vec![0f32; self.rows * tokens];
        out_t.par_chunks_mut(tokens * 16).enumerate().for_each(|(c, chunk)| {
            for (i, o) in chunk.chunks_mut(tokens).enumerate() {
                row_dots(self.format, self.row(c * 16 + i), &xq, o);
            }
        });
        let out = if tokens == 1 {
            out_t
        } else {
            let mut out = vec![0f32; tokens * self.rows];
            out.par_chunks_mut(self.rows).enumerate().for_each(|(t, row)| {
                for (r, o) in row.iter_mut().enumerate() {
                    *o = out_t[r * tokens + t];
                }
            });
            out
        };
        let mut shape = dims.to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = self.rows;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Module};

    fn random(format: Format, rows: usize, cols: usize) -> (QTensor, QuantMatrix) {
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let dtype = if format == Format::Q4_1 { GgmlDType::Q4_1 } else { GgmlDType::Q8_0 };
        let q = QTensor::quantize(&w, dtype).unwrap();
        let m = QuantMatrix::new(format, q.data().unwrap().to_vec(), rows, cols).unwrap();
        (q, m)
    }

    #[test]
    fn q4_1_simd_and_scalar_agree_and_match_candle() {
        check(Format::Q4_1);
    }

    #[test]
    fn q8_0_simd_and_scalar_agree_and_match_candle() {
        check(Format::Q8_0);
    }

    fn check(format: Format) {
        let (q, m) = random(format, 40, 256);
        let x = Tensor::randn(0f32, 1.0, (7, 256), &Device::Cpu).unwrap();
        let ours = m.forward(&x).unwrap();
        let xs = x.to_vec2::<f32>().unwrap();
        for (t, row) in xs.iter().enumerate() {
            let xq = quantize_row(row);
            let got = ours.get(t).unwrap().to_vec1::<f32>().unwrap();
            for (r, g) in got.iter().enumerate() {
                let want = dot_scalar(format, m.row(r), &xq);
                assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "row {r}: {g} vs {want}");
            }
        }
        // Against the exact product with dequantized weights, ours is as close as candle's own Q4_1 kernel
        // (both quantize activations to 8 bits; they differ only in rounding).
        let exact = x.matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap()).unwrap();
        let theirs = candle_core::quantized::QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        let err = |t: &Tensor| (t - &exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = exact.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let (e_ours, e_theirs) = (err(&ours), err(&theirs));
        assert!(e_ours / scale < 1e-2, "relative error {}", e_ours / scale);
        assert!(e_ours <= 1.5 * e_theirs + 1e-3, "ours {e_ours} vs candle {e_theirs}");
    }

    #[test]
    fn malformed_sizes_are_rejected() {
        assert!(QuantMatrix::new(Format::Q4_1, vec![0; 19], 1, 32).is_err());
        assert!(QuantMatrix::new(Format::Q4_1, vec![0; 20], 1, 31).is_err());
        assert!(QuantMatrix::new(Format::Q8_0, vec![0; 20], 1, 32).is_err());
    }
}
