//! CPU matrix multiply for Q4_1 weights (the format of the SmolLM2 demo GGUF), because candle's CPU path for
//! Q4_1 is a scalar loop. Same arithmetic as ggml (activations quantized to Q8_1 per 32-value block, integer
//! dot products, `d_w*d_x*sum(q_w*q_x) + m_w*s_x`), so results track llama.cpp; AVX2+FMA when the CPU has it,
//! a scalar version of the same formula otherwise (also the reference in the tests).

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;
/// Bytes of one Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;

/// A Q4_1 weight matrix `[rows, cols]` as raw GGUF blocks, rows contiguous.
pub struct Q4_1Matrix {
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

impl Q4_1Matrix {
    pub fn new(data: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        if cols % QK != 0 || data.len() != rows * cols / QK * BLOCK_BYTES {
            candle_core::bail!("Q4_1 matrix [{rows}, {cols}] with {} bytes is malformed", data.len());
        }
        Ok(Q4_1Matrix { data, rows, cols })
    }

    pub fn storage_bytes(&self) -> usize {
        self.data.len()
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.cols / QK * BLOCK_BYTES;
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
fn dot_scalar(w: &[u8], x: &[Q8_1]) -> f32 {
    let mut sum = 0f32;
    for (wb, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(w: &[u8], x: &[Q8_1]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0F);
    for (wb, xb) in w.chunks_exact(BLOCK_BYTES).zip(x) {
        let (d, m) = block_dm(wb);
        summs += m * xb.s;
        // SAFETY: wb has 20 bytes (16 of nibbles at offset 4) and xb.qs 32 bytes; unaligned loads.
        let nib = _mm_loadu_si128(wb.as_ptr().add(4) as *const __m128i);
        let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), low);
        let y = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
        let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(prod), acc);
    }
    let hi = _mm256_extractf128_ps(acc, 1);
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s) + summs
}

fn dot(w: &[u8], x: &[Q8_1]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot_avx2(w, x) };
    }
    dot_scalar(w, x)
}

impl CustomOp1 for Q4_1Matrix {
    fn name(&self) -> &'static str {
        "teal-q4_1-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { candle_core::bail!("q4_1 matmul: f32 input expected, got {:?}", s.dtype()) };
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("q4_1 matmul: input must be contiguous") };
        let x = &v[a..b];
        let dims = l.dims();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!("q4_1 matmul: input {dims:?} does not end in {}", self.cols);
        }
        let tokens = x.len() / self.cols;
        let xq: Vec<Vec<Q8_1>> = x.chunks_exact(self.cols).map(quantize_row).collect();
        // Row-major over weights: each weight row is read once for every token.
        let mut out_t = vec![0f32; self.rows * tokens];
        out_t.par_chunks_mut(tokens * 16).enumerate().for_each(|(c, chunk)| {
            for (i, o) in chunk.chunks_mut(tokens).enumerate() {
                let w = self.row(c * 16 + i);
                for (t, o) in o.iter_mut().enumerate() {
                    *o = dot(w, &xq[t]);
                }
            }
        });
        let out = if tokens == 1 {
            out_t
        } else {
            let mut out = vec![0f32; tokens * self.rows];
            for r in 0..self.rows {
                for t in 0..tokens {
                    out[t * self.rows + r] = out_t[r * tokens + t];
                }
            }
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

    fn random_q4_1(rows: usize, cols: usize) -> (QTensor, Q4_1Matrix) {
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let m = Q4_1Matrix::new(q.data().unwrap().to_vec(), rows, cols).unwrap();
        (q, m)
    }

    #[test]
    fn simd_and_scalar_agree_and_match_candle() {
        let (q, m) = random_q4_1(40, 256);
        let x = Tensor::randn(0f32, 1.0, (3, 256), &Device::Cpu).unwrap();
        let ours = m.forward(&x).unwrap();
        let xs = x.to_vec2::<f32>().unwrap();
        for (t, row) in xs.iter().enumerate() {
            let xq = quantize_row(row);
            let got = ours.get(t).unwrap().to_vec1::<f32>().unwrap();
            for (r, g) in got.iter().enumerate() {
                let want = dot_scalar(m.row(r), &xq);
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
        assert!(Q4_1Matrix::new(vec![0; 19], 1, 32).is_err());
        assert!(Q4_1Matrix::new(vec![0; 20], 1, 31).is_err());
    }
}
