//! CPU matrix multiply for quantized GGUF weights. candle's CPU path runs some formats as scalar loops (Q4_1,
//! Q5_0), and none reuses a weight block across the tokens of a batch, so batched decode and prefill would cost
//! as much per token as single-stream decode. Here each weight block is unpacked once per tile of up to 8 tokens.
//! GGUF's Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K are rewritten at load into four layouts (repack.rs) that two
//! kernel families run; the weights stay the numbers the file encodes. Same arithmetic as ggml (activations
//! quantized to 8 bits with a scale per 32 values, or per 256 for K-quants as ggml's Q8_K does; integer dot
//! products, `+ m_w * s_x` for blocks with a minimum), so results track llama.cpp. The kernel is chosen at run
//! time by what the CPU has (`Isa`):
//! - AVX-512 VNNI: matrices of a multiple of 16 rows are kept in groups of 16 rows interleaved (groups.rs), and
//!   one `vpdpbusd` advances 16 rows' dot products (x86_groups.rs); other matrices take x86.rs's VNNI kernels;
//! - AVX2+FMA+F16C: the same row groups, two halves of 8 rows (avx2_groups.rs); x86.rs, one row at a time, for
//!   the other matrices;
//! - aarch64 NEON: neon.rs, one row at a time;
//! - a scalar version of the same formula (scalar.rs, also the reference in the tests).
//!
//! `TEAL_CPU_KERNEL` forces a lower one.

#[cfg(target_arch = "x86_64")]
mod avx2_groups;
mod groups;
mod layout;
#[cfg(target_arch = "aarch64")]
mod neon;
mod repack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_groups;

pub use layout::Format;
use layout::QK;
pub use repack::{layout_of, repacked_bytes};
use scalar::{dot_scalar, Q8_1};

use candle_core::quantized::GgmlDType;
use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// A quantized weight matrix `[rows, cols]` as blocks of one layout: rows contiguous, or (`grouped`) in groups
/// of 16 rows interleaved for the row-group kernels (groups.rs).
pub struct QuantMatrix {
    format: Format,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
    grouped: bool,
}

impl QuantMatrix {
    /// Row-major blocks, kept in the layout the CPU's kernel reads best (`Isa::active`).
    pub fn new(format: Format, data: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        Self::for_isa(format, data, rows, cols, Isa::active())
    }

    /// Row-major blocks, kept in the layout `isa`'s kernel reads.
    fn for_isa(format: Format, data: Vec<u8>, rows: usize, cols: usize, isa: Isa) -> Result<Self> {
        let bytes =
            (rows as u64).checked_mul(cols as u64 / QK as u64).and_then(|b| b.checked_mul(format.block_bytes() as u64));
        if !cols.is_multiple_of(QK) || bytes != Some(data.len() as u64) {
            candle_core::bail!("{format:?} matrix [{rows}, {cols}] with {} bytes is malformed", data.len());
        }
        let grouped = cfg!(target_arch = "x86_64") && isa >= Isa::Avx2 && groups::fits(rows, cols);
        let data = if grouped { groups::interleave(format, &data, cols / QK) } else { data };
        Ok(QuantMatrix { format, data, rows, cols, grouped })
    }

    /// Stacks matrices with the same format and width into one (rows concatenated), so projections that read
    /// the same input run as one matmul.
    pub fn stack(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols) {
            return None;
        }
        let data = parts.iter().flat_map(|p| p.row_major()).collect();
        let rows = parts.iter().map(|p| p.rows).sum();
        QuantMatrix::new(first.format, data, rows, first.cols).ok()
    }

    /// Every row's blocks, row-major.
    fn row_major(&self) -> Vec<u8> {
        if !self.grouped {
            return self.data.clone();
        }
        (0..self.rows).flat_map(|r| groups::row_blocks(self.format, &self.data, self.cols / QK, r)).collect()
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
        let data = self.row_major();
        let dtype = match self.format {
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4F | Format::Q8S => {
                let row = self.cols / QK * self.format.block_bytes();
                let w: Vec<f32> = data.chunks_exact(row).flat_map(|r| scalar::dequantize_row(self.format, r)).collect();
                let t = Tensor::from_vec(w, (self.rows, self.cols), device)?;
                return QTensor::quantize(&t, GgmlDType::F32);
            }
        };
        let storage = QStorage::from_data(std::borrow::Cow::Owned(data), device, dtype)?;
        QTensor::new(storage, (self.rows, self.cols))
    }

    /// Rows `ids` as f32 `[ids.len(), cols]` (an embedding lookup); an id past the rows is an error.
    pub fn rows_f32(&self, ids: &[u32]) -> Result<Tensor> {
        let blocks = self.cols / QK;
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let r = id as usize;
            if r >= self.rows {
                candle_core::bail!("row {r} of a matrix of {} rows", self.rows);
            }
            if self.grouped {
                out.extend(scalar::dequantize_row(
                    self.format,
                    &groups::row_blocks(self.format, &self.data, blocks, r),
                ));
            } else {
                out.extend(scalar::dequantize_row(self.format, self.row(r)));
            }
        }
        Tensor::from_vec(out, (ids.len(), self.cols), &candle_core::Device::Cpu)
    }

    /// Row `r`'s blocks (row-major matrices only).
    fn row(&self, r: usize) -> &[u8] {
        debug_assert!(!self.grouped);
        let n = self.cols / QK * self.format.block_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// The group of 16 rows starting at row `first` (grouped matrices only).
    #[cfg(target_arch = "x86_64")]
    fn group(&self, first: usize) -> &[u8] {
        debug_assert!(self.grouped && first.is_multiple_of(groups::GROUP));
        let n = groups::GROUP * self.cols / QK * self.format.block_bytes();
        &self.data[first / groups::GROUP * n..][..n]
    }

    /// `x [tokens, cols] -> [tokens, rows]` (i.e. `x W^T`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

/// The CPU kernels, ordered by what they need (an x86 CPU with AVX-512 VNNI has AVX2 too; `Neon` is aarch64's
/// only one and never compared with the x86 ones on one CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Neon,
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
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
        Isa::Scalar
    }

    /// Every kernel this CPU can run, the scalar one first (the tests run each).
    #[cfg(test)]
    pub(crate) fn runnable() -> Vec<Isa> {
        let detected = Isa::detected();
        let family: &[Isa] = if cfg!(target_arch = "aarch64") {
            &[Isa::Scalar, Isa::Neon]
        } else {
            &[Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
        };
        family.iter().copied().filter(|&i| i <= detected).collect()
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
    // SAFETY (all calls): `isa` is at most what the CPU has (Isa::active), and every x row has as many blocks as
    // the weight row.
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        return tiles(
            xq,
            out,
            |xs| unsafe { dot_tile::<4>(isa, format, w, xs) },
            |xs| unsafe { dot_tile::<1>(isa, format, w, xs) },
        );
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        return tiles(
            xq,
            out,
            |xs| unsafe { neon::dot_tile::<4>(format, w, xs) },
            |xs| unsafe { neon::dot_tile::<1>(format, w, xs) },
        );
    }
    let _ = isa;
    for (o, x) in out.iter_mut().zip(xq) {
        *o = dot_scalar(format, w, x);
    }
}

/// `out[t]` for every token row: `four` on tiles of 4 rows, `one` on the rows left.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn tiles(
    xq: &[Vec<Q8_1>],
    out: &mut [f32],
    four: impl Fn([&[Q8_1]; 4]) -> [f32; 4],
    one: impl Fn([&[Q8_1]; 1]) -> [f32; 1],
) {
    let mut t = 0;
    while t + 4 <= xq.len() {
        out[t..t + 4].copy_from_slice(&four([&xq[t], &xq[t + 1], &xq[t + 2], &xq[t + 3]]));
        t += 4;
    }
    for (o, x) in out[t..].iter_mut().zip(&xq[t..]) {
        *o = one([x])[0];
    }
}

/// The matmul's output `[tokens, rows]`, written by the tasks in place: each task owns a range of columns of
/// every token row, so no two write the same element, and together they write all of them.
struct Output {
    ptr: *mut f32,
    rows: usize,
}

// SAFETY: tasks write disjoint elements (`Output`), and the vector outlives the parallel loop.
unsafe impl Sync for Output {}
unsafe impl Send for Output {}

impl QuantMatrix {
    /// The activations quantized as the kernels read them (8 bits per 32 values, scale and sums per block).
    /// K-quant layouts read activations with one scale per 256 values (ggml's Q8_K), the others one per 32.
    fn quantize(x: &[f32], cols: usize, format: Format, isa: Isa) -> Vec<Vec<Q8_1>> {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni {
            let k = format.k_quant();
            // SAFETY: Isa::active() found AVX-512 F/BW (Avx512Vnni implies them), AVX2 and F16C.
            return x
                .par_chunks_exact(cols)
                .map(|r| unsafe {
                    if k {
                        x86::quantize_row_k_avx512(r)
                    } else {
                        x86::quantize_row_avx512(r)
                    }
                })
                .collect();
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 {
            // SAFETY: Isa::active() found AVX2, FMA and F16C.
            return x.par_chunks_exact(cols).map(|r| unsafe { x86::quantize_row_for_avx2(format, r) }).collect();
        }
        let _ = isa;
        x.par_chunks_exact(cols).map(|r| scalar::quantize_row_for(format, r)).collect()
    }

    /// Rows `first..first + count` against every token, written to `out` (`[tokens, rows]`), the tokens taken
    /// TOKENS at a time: every row against the same few tokens, so the activations read stay in L1.
    fn task(&self, isa: Isa, xq: &[Vec<Q8_1>], (first, count): (usize, usize), out: &Output) {
        const TOKENS: usize = 8;
        let mut dots = [0f32; TOKENS];
        for t in (0..xq.len()).step_by(TOKENS) {
            let xs = &xq[t..(t + TOKENS).min(xq.len())];
            #[cfg(target_arch = "x86_64")]
            if self.grouped && isa >= Isa::Avx2 {
                for g in (first..first + count).step_by(groups::GROUP) {
                    // SAFETY: `isa` is at most what the CPU has and at least AVX2 (with FMA and F16C, `Isa::detected`),
                    // and the VNNI kernel runs only where it is Avx512Vnni; the tokens are rows of this width
                    // (cpu_fwd checks it); this task owns columns first..first+count of every token row of `out`
                    // (`Output`), and g + 16 <= first + count (whole groups).
                    unsafe {
                        let at = out.ptr.add(t * out.rows + g);
                        if isa == Isa::Avx512Vnni {
                            x86_groups::group_dots(self.format, self.group(g), xs, at, out.rows)
                        } else {
                            avx2_groups::group_dots(self.format, self.group(g), xs, at, out.rows)
                        }
                    };
                }
                continue;
            }
            for i in first..first + count {
                row_dots(isa, self.format, self.row(i), xs, &mut dots[..xs.len()]);
                for (k, d) in dots[..xs.len()].iter().enumerate() {
                    // SAFETY: element (t + k, i) is in this task's columns (`Output`).
                    unsafe { *out.ptr.add((t + k) * out.rows + i) = *d };
                }
            }
        }
    }
}

impl QuantMatrix {
    /// `x [tokens, cols] -> [tokens, rows]` with the kernels of `isa` (at most what the CPU has; a grouped
    /// matrix's only where `isa` is the one it was laid out for, or another row-group kernel).
    fn matmul(&self, x: &[f32], isa: Isa) -> Vec<f32> {
        debug_assert!(isa <= Isa::detected() && (!self.grouped || isa >= Isa::Avx2));
        let tokens = x.len() / self.cols;
        let xq = Self::quantize(x, self.cols, self.format, isa);
        // A task takes `rows` weight rows (a few tasks per thread: fewer, larger tasks cost less to hand out than
        // the matmul of a decode step takes; whole groups of 16 for grouped matrices) and writes their columns of
        // the output in place (a copy of per-task parts into place, or a strided transpose, cost 5-10% of a
        // prefill; so did zeroing the output first).
        let rows = (self.rows / (4 * rayon::current_num_threads())).clamp(16, 256) / groups::GROUP * groups::GROUP;
        let mut out: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(tokens * self.rows);
        // SAFETY: MaybeUninit needs no initialization; every element is written below before `out` is read.
        unsafe { out.set_len(tokens * self.rows) };
        let target = Output { ptr: out.as_mut_ptr() as *mut f32, rows: self.rows };
        (0..self.rows.div_ceil(rows))
            .into_par_iter()
            .for_each(|c| self.task(isa, &xq, (c * rows, rows.min(self.rows - c * rows)), &target));
        // SAFETY: the tasks cover every row (c * rows over 0..rows) for every token, so every element is written;
        // MaybeUninit<f32> and f32 have the same layout.
        unsafe {
            let mut out = std::mem::ManuallyDrop::new(out);
            Vec::from_raw_parts(out.as_mut_ptr() as *mut f32, out.len(), out.capacity())
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
        let out = self.matmul(x, Isa::active());
        let mut shape = dims.to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = self.rows;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests;
