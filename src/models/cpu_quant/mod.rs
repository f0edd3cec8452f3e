//! CPU matrix multiply for quantized GGUF weights. candle's CPU path runs some formats as scalar loops (Q4_1,
//! Q5_0), and none reuses a weight block across the tokens of a batch, so batched decode and prefill would cost
//! as much per token as single-stream decode. Here each weight block is unpacked once per tile of 4 tokens.
//! GGUF's Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K are rewritten at load into four layouts (repack.rs) that two
//! kernel families run; the weights stay the numbers the file encodes. Same arithmetic as ggml (activations
//! quantized to 8 bits per 32-value block, integer dot products, `+ m_w * s_x` for blocks with a minimum), so
//! results track llama.cpp. The kernel is chosen at run time by what the CPU has (`Isa`): AVX-512 VNNI (two
//! blocks per 512-bit `vpdpbusd`), AVX2+FMA+F16C, or a scalar version of the same formula (scalar.rs, also the
//! reference in the tests); `TEAL_CPU_KERNEL` forces a lower one.

mod layout;
mod repack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_pairs;

pub use layout::Format;
use layout::QK;
pub use repack::{layout_of, repacked_bytes};
use scalar::{dot_scalar, quantize_row, Q8_1};

use candle_core::quantized::GgmlDType;
use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// A quantized weight matrix `[rows, cols]` as blocks of one layout, rows contiguous.
pub struct QuantMatrix {
    format: Format,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl QuantMatrix {
    pub fn new(format: Format, data: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        let bytes =
            (rows as u64).checked_mul(cols as u64 / QK as u64).and_then(|b| b.checked_mul(format.block_bytes() as u64));
        if !cols.is_multiple_of(QK) || bytes != Some(data.len() as u64) {
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
        let rows = parts.iter().map(|p| p.rows).sum();
        Some(QuantMatrix { format: first.format, data, rows, cols: first.cols })
    }

    /// GGUF blocks of `dtype` for a `[rows, cols]` matrix in teal's layout (repack.rs); None where candle's
    /// matmul runs the type.
    pub fn from_gguf(dtype: GgmlDType, data: &[u8], rows: usize, cols: usize) -> Result<Option<QuantMatrix>> {
        match repack::repack(dtype, data, rows, cols)? {
            Some((format, blocks)) => QuantMatrix::new(format, blocks, rows, cols).map(Some),
            None => Ok(None),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// The same weights as a candle `QTensor` on `device` (for devices this module does not run on): the GGUF
    /// blocks where the layout is GGUF's own, f32 otherwise.
    pub fn to_qtensor(&self, device: &candle_core::Device) -> Result<candle_core::quantized::QTensor> {
        use candle_core::quantized::{QStorage, QTensor};
        let dtype = match self.format {
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4F | Format::Q8S => {
                let w: Vec<f32> =
                    (0..self.rows).flat_map(|r| scalar::dequantize_row(self.format, self.row(r))).collect();
                let t = Tensor::from_vec(w, (self.rows, self.cols), device)?;
                return QTensor::quantize(&t, GgmlDType::F32);
            }
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
    use x86::*;
    match (isa == Isa::Avx512Vnni, format) {
        (true, Format::Q4_1) => dot_tile_q4_vnni::<N, false>(w, xs),
        (true, Format::Q4F) => dot_tile_q4_vnni::<N, true>(w, xs),
        (true, Format::Q8_0) => dot_tile_q8_vnni::<N, false>(w, xs),
        (true, Format::Q8S) => dot_tile_q8_vnni::<N, true>(w, xs),
        (false, Format::Q4_1) => dot_tile_q4_avx2::<N, false>(w, xs),
        (false, Format::Q4F) => dot_tile_q4_avx2::<N, true>(w, xs),
        (false, Format::Q8_0) => dot_tile_q8_avx2::<N, false>(w, xs),
        (false, Format::Q8S) => dot_tile_q8_avx2::<N, true>(w, xs),
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

/// The quantized activations in the layout the kernel reads: blocks, or block pairs for the AVX-512 VNNI kernels
/// of x86_pairs.rs (rows of an even number of blocks).
enum Acts {
    Blocks(Vec<Vec<Q8_1>>),
    #[cfg(target_arch = "x86_64")]
    Pairs(Vec<x86_pairs::Pairs>),
}

impl Acts {
    fn new(isa: Isa, format: Format, xq: Vec<Vec<Q8_1>>) -> Acts {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni && xq.first().is_some_and(|r| r.len() % 2 == 0) {
            let unsigned = x86_pairs::Pairs::for_format(format);
            return Acts::Pairs(xq.par_iter().map(|r| x86_pairs::Pairs::new(r, unsigned)).collect());
        }
        let _ = (isa, format);
        Acts::Blocks(xq)
    }

    /// One weight row against the tokens `t`.
    fn row_dots(&self, isa: Isa, format: Format, w: &[u8], t: std::ops::Range<usize>, out: &mut [f32]) {
        match self {
            Acts::Blocks(xq) => row_dots(isa, format, w, &xq[t], out),
            // SAFETY: pairs are made only on an AVX-512 VNNI CPU (`Acts::new`), for `format`, from rows of as many
            // blocks as the weight rows (cpu_fwd checks the width).
            #[cfg(target_arch = "x86_64")]
            Acts::Pairs(xp) => unsafe { x86_pairs::row_dots_pairs(format, w, &xp[t], out) },
        }
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
        let isa = Isa::active();
        let xq = Acts::new(isa, self.format, x.par_chunks_exact(self.cols).map(quantize_row).collect());
        // A task takes `rows` weight rows (a few tasks per thread: fewer, larger tasks cost less to hand out than
        // the matmul of a decode step takes) and walks the tokens TOKENS at a time, every row against the same
        // few tokens, so the activations it reads stay in L1 across the rows.
        const TOKENS: usize = 8;
        let rows = (self.rows / (4 * rayon::current_num_threads())).clamp(16, 256);
        // Each task's results token-major, then copied into place a token row at a time (contiguous runs; a
        // strided transpose of the whole output cost 5% of a prefill).
        let parts: Vec<Vec<f32>> = (0..self.rows.div_ceil(rows))
            .into_par_iter()
            .map(|c| {
                let (first, count) = (c * rows, rows.min(self.rows - c * rows));
                let mut part = vec![0f32; count * tokens];
                let mut dots = [0f32; TOKENS];
                for t in (0..tokens).step_by(TOKENS) {
                    let n = TOKENS.min(tokens - t);
                    for i in 0..count {
                        xq.row_dots(isa, self.format, self.row(first + i), t..t + n, &mut dots[..n]);
                        for (k, d) in dots[..n].iter().enumerate() {
                            part[(t + k) * count + i] = *d;
                        }
                    }
                }
                part
            })
            .collect();
        let out = if tokens == 1 {
            parts.concat()
        } else {
            let mut out = vec![0f32; tokens * self.rows];
            out.par_chunks_mut(self.rows).enumerate().for_each(|(t, row)| {
                for (c, part) in parts.iter().enumerate() {
                    let count = part.len() / tokens;
                    row[c * rows..c * rows + count].copy_from_slice(&part[t * count..(t + 1) * count]);
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
mod tests;
