//! CPU matrix multiply for Q4_1 and Q8_0 GGUF weights (the formats of the SmolLM2 demo GGUF). candle's CPU
//! path for Q4_1 is a scalar loop, and neither format reuses a weight block across the tokens of a batch, so
//! batched decode and prefill cost as much per token as single-stream decode. Here each weight block is
//! unpacked once per tile of 4 tokens. Same arithmetic as ggml (activations quantized to 8 bits per 32-value
//! block, integer dot products; Q4_1 adds `m_w * s_x`), so results track llama.cpp. The kernel is chosen at run
//! time by what the CPU has (`Isa`): AVX-512 VNNI (two blocks per 512-bit `vpdpbusd`), AVX2+FMA+F16C, or a
//! scalar version of the same formula (also the reference in the tests); `TEAL_CPU_KERNEL` forces a lower one.

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

/// Q4_1 with AVX-512 VNNI: two blocks per step, their 64 nibbles against 64 activation bytes in one
/// `vpdpbusd` (unsigned x signed bytes summed into 16 lanes), each half scaled by its own block's scales.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni")]
unsafe fn dot_tile_q4_1_vnni<const N: usize>(w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); N];
    let mut summs = [0f32; N];
    let pairs = w.len() / 40;
    for p in 0..pairs {
        // SAFETY: blocks 2p and 2p + 1 exist (pairs counts whole pairs); every x row has as many blocks.
        let (w0, w1) = (w.as_ptr().add(40 * p), w.as_ptr().add(40 * p + 20));
        let (d0, m0) = block_dm(std::slice::from_raw_parts(w0, 4));
        let (d1, m1) = block_dm(std::slice::from_raw_parts(w1, 4));
        let q = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(unpack_q4_1(w0)), unpack_q4_1(w1));
        for t in 0..N {
            let (x0, x1) = (xs[t].get_unchecked(2 * p), xs[t].get_unchecked(2 * p + 1));
            summs[t] += m0 * x0.s + m1 * x1.s;
            let y0 = _mm256_loadu_si256(x0.qs.as_ptr() as *const __m256i);
            let y1 = _mm256_loadu_si256(x1.qs.as_ptr() as *const __m256i);
            let y = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(y0), y1);
            let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
            let scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0 * x0.d), _mm512_set1_ps(d1 * x1.d));
            acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(prod), acc[t]);
        }
    }
    let mut out = [0f32; N];
    let tail: [&[Q8_1]; N] = std::array::from_fn(|t| &xs[t][2 * pairs..]);
    let rest = dot_tile_avx2::<N>(&w[40 * pairs..], tail);
    for t in 0..N {
        out[t] = _mm512_reduce_add_ps(acc[t]) + summs[t] + rest[t];
    }
    out
}

/// The 32 weights of the Q4_1 block at `wb` as bytes 0..=15 (low nibbles first, as the activations are ordered).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unpack_q4_1(wb: *const u8) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: the caller's block has 16 bytes of nibbles at offset 4; unaligned load.
    let nib = _mm_loadu_si128(wb.add(4) as *const __m128i);
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), _mm256_set1_epi8(0x0F))
}

/// Q8_0 with AVX-512 VNNI: two blocks per step, with the sign trick of the AVX2 version.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn dot_tile_q8_0_vnni<const N: usize>(w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); N];
    let pairs = w.len() / 68;
    for p in 0..pairs {
        // SAFETY: blocks 2p and 2p + 1 exist (34 bytes each: f16 d, 32 quants); unaligned loads.
        let (w0, w1) = (w.as_ptr().add(68 * p), w.as_ptr().add(68 * p + 34));
        let d0 = f16::from_le_bytes([*w0, *w0.add(1)]).to_f32();
        let d1 = f16::from_le_bytes([*w1, *w1.add(1)]).to_f32();
        let q = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(w0.add(2) as *const __m256i)),
            _mm256_loadu_si256(w1.add(2) as *const __m256i),
        );
        let negative = _mm512_movepi8_mask(q);
        let aq = _mm512_abs_epi8(q);
        for t in 0..N {
            let (x0, x1) = (xs[t].get_unchecked(2 * p), xs[t].get_unchecked(2 * p + 1));
            let y0 = _mm256_loadu_si256(x0.qs.as_ptr() as *const __m256i);
            let y1 = _mm256_loadu_si256(x1.qs.as_ptr() as *const __m256i);
            let y = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(y0), y1);
            // y * sign(q): negate where q < 0 (q = 0 contributes 0 through |q| anyway).
            let y = _mm512_mask_sub_epi8(y, negative, _mm512_setzero_si512(), y);
            let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aq, y);
            let scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0 * x0.d), _mm512_set1_ps(d1 * x1.d));
            acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(prod), acc[t]);
        }
    }
    let mut out = [0f32; N];
    let tail: [&[Q8_1]; N] = std::array::from_fn(|t| &xs[t][2 * pairs..]);
    let rest = dot_tile_q8_0_avx2::<N>(&w[68 * pairs..], tail);
    for t in 0..N {
        out[t] = _mm512_reduce_add_ps(acc[t]) + rest[t];
    }
    out
}

/// The CPU kernels, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    /// What this CPU can run.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                    return Isa::Avx512Vnni;
                }
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// The kernel teal uses: the detected one, or a lower one `TEAL_CPU_KERNEL` (scalar, avx2) asks for.
    /// Checked once (the feature test is too slow for the inner loop); logged at the first matmul.
    pub fn active() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let detected = Isa::detected();
            let asked = match std::env::var("TEAL_CPU_KERNEL").ok().as_deref() {
                Some("scalar") => Some(Isa::Scalar),
                Some("avx2") => Some(Isa::Avx2),
                _ => None,
            };
            let isa = asked.map_or(detected, |a| a.min(detected));
            tracing::info!(kernel = ?isa, ?detected, "CPU quantized matmul kernel");
            isa
        })
    }
}

/// `N` dot products of one weight row in the given format on `isa` (never Scalar here).
#[cfg(target_arch = "x86_64")]
unsafe fn dot_tile<const N: usize>(isa: Isa, format: Format, w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    match (isa, format) {
        (Isa::Avx512Vnni, Format::Q4_1) => dot_tile_q4_1_vnni::<N>(w, xs),
        (Isa::Avx512Vnni, Format::Q8_0) => dot_tile_q8_0_vnni::<N>(w, xs),
        (_, Format::Q4_1) => dot_tile_avx2::<N>(w, xs),
        (_, Format::Q8_0) => dot_tile_q8_0_avx2::<N>(w, xs),
    }
}

/// One weight row against every token: tiles of 4 tokens, then the remainder.
#[inline(never)]
fn row_dots(isa: Isa, format: Format, w: &[u8], xq: &[Vec<Q8_1>], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        let mut t = 0;
        // SAFETY (all calls): `isa` is at most what the CPU has (Isa::active), and every x row has as many blocks
        // as the weight row.
        while t + 4 <= xq.len() {
            let r = unsafe { dot_tile::<4>(isa, format, w, [&xq[t], &xq[t + 1], &xq[t + 2], &xq[t + 3]]) };
            out[t..t + 4].copy_from_slice(&r);
            t += 4;
        }
        for (o, x) in out[t..].iter_mut().zip(&xq[t..]) {
            *o = unsafe { dot_tile::<1>(isa, format, w, [x]) }[0];
        }
        return;
    }
    let _ = isa;
    for (o, x) in out.iter_mut().zip(xq) {
        *o = dot_scalar(format, w, x);
    }
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
        let isa = Isa::active();
        // Row-major over weights: each weight row is read once for every token.
        let mut out_t = vec![0f32; self.rows * tokens];
        out_t.par_chunks_mut(tokens * 16).enumerate().for_each(|(c, chunk)| {
            for (i, o) in chunk.chunks_mut(tokens).enumerate() {
                row_dots(isa, self.format, self.row(c * 16 + i), &xq, o);
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

    #[test]
    fn every_kernel_this_cpu_has_matches_the_scalar_reference() {
        let detected = Isa::detected();
        for format in [Format::Q4_1, Format::Q8_0] {
            // 288 columns: 9 blocks, so the two-block kernels have an odd block left over.
            let (_, m) = random(format, 9, 288);
            let x = Tensor::randn(0f32, 1.0, (6, 288), &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let xq: Vec<Vec<Q8_1>> = x.iter().map(|r| quantize_row(r)).collect();
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|&i| i <= detected) {
                for r in 0..9 {
                    let mut got = vec![0f32; 6];
                    row_dots(isa, format, m.row(r), &xq, &mut got);
                    for (t, g) in got.iter().enumerate() {
                        let want = dot_scalar(format, m.row(r), &xq[t]);
                        assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "{isa:?} {format:?}: {g} vs {want}");
                    }
                }
            }
            eprintln!("{format:?}: kernels up to {detected:?} checked");
        }
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
