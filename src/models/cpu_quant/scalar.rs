//! The plain-Rust side of the kernels: activations quantized to 8 bits per 32-value block (as ggml's Q8_1), and
//! the dot product of one weight row with one such row for every layout, written for clarity. It runs on CPUs
//! without the vector extensions and is the reference the vector kernels are checked against.

use super::layout::{Format, QK};
use half::f16;

/// One block of activations quantized to 8 bits; `d` and `s` are stored already rounded through f16, as ggml
/// keeps them.
#[derive(Clone, Copy)]
pub(super) struct Q8_1 {
    pub(super) d: f32,
    pub(super) s: f32,
    pub(super) qs: [i8; QK],
    /// `sum(q)` over the first and the second 16 quants (exact; the row-group kernels' offset for signed weights).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) sums: [i32; 2],
}

impl Q8_1 {
    /// A block from its scale (before rounding) and quants.
    pub(super) fn new(d: f32, qs: [i8; QK], sums: [i32; 2]) -> Q8_1 {
        let sum = (sums[0] + sums[1]) as f32;
        Q8_1 { d: f16::from_f32(d).to_f32(), s: f16::from_f32(d * sum).to_f32(), qs, sums }
    }

    /// A block whose scale and sum stay f32, as ggml's Q8_K keeps them.
    pub(super) fn unrounded(d: f32, qs: [i8; QK], sums: [i32; 2]) -> Q8_1 {
        Q8_1 { d, s: d * (sums[0] + sums[1]) as f32, qs, sums }
    }
}

/// Activations for blocks of 32 weights, as ggml's Q8_0/Q8_1: per 32 values the scale `max|x| / 127` and the
/// sum `s = d * sum(q)`, both rounded through f16.
#[inline(always)]
pub(super) fn quantize_row(x: &[f32]) -> Vec<Q8_1> {
    let mut out = Vec::with_capacity(x.len() / QK);
    for b in x.chunks_exact(QK) {
        let amax = abs_max(b);
        let (qs, sums) = quants(b, if amax != 0.0 { 127.0 / amax } else { 0.0 });
        out.push(Q8_1::new(amax / 127.0, qs, sums));
    }
    out
}

/// `max |x|`, kept in eight running maxima (one vector) rather than one long chain.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            lanes[l] = lanes[l].max(c[l].abs());
        }
    }
    let mut m = 0f32;
    for v in lanes {
        m = m.max(v);
    }
    m
}

/// One block's quants `round(x * id)` and their sums over each half. Plain index loops with no closures: the
/// AVX2 copy of the quantizer (`x86::quantize_row_for_avx2`) inlines all of it, rounding included.
#[inline(always)]
fn quants(b: &[f32], id: f32) -> ([i8; QK], [i32; 2]) {
    let mut qs = [0i8; QK];
    let mut sums = [0i32; 2];
    for i in 0..QK {
        qs[i] = (b[i] * id).round_ties_even() as i8;
        sums[i / (QK / 2)] += qs[i] as i32;
    }
    (qs, sums)
}

/// The activations as `format`'s kernels read them: `quantize_row_k` for K-quants, `quantize_row` otherwise.
#[inline(always)]
pub(super) fn quantize_row_for(format: Format, x: &[f32]) -> Vec<Q8_1> {
    if format.k_quant() {
        quantize_row_k(x)
    } else {
        quantize_row(x)
    }
}

/// Values in one scale of ggml's Q8_K, the activations its K-quant kernels (Q4_K, Q6_K) read.
pub(super) const QK_K: usize = 256;

/// Activations for K-quant weights, as ggml's Q8_K: one scale `max|x| / 127` per 256 values, kept in f32, each
/// 32 of them a block of their own for the kernels here. The same numbers llama.cpp multiplies, so a K-quant
/// model's results track it (a scale per 32 values would be finer but part from llama.cpp at near ties).
#[inline(always)]
pub(super) fn quantize_row_k(x: &[f32]) -> Vec<Q8_1> {
    let mut out = Vec::with_capacity(x.len() / QK);
    // A row whose width is not a multiple of 256 (never from a GGUF file) ends in a shorter group.
    for s in x.chunks(QK_K) {
        let amax = abs_max(s);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let d = if amax != 0.0 { 1.0 / id } else { 0.0 };
        for b in s.chunks_exact(QK) {
            let (qs, sums) = quants(b, id);
            out.push(Q8_1::unrounded(d, qs, sums));
        }
    }
    out
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A 4-bit block's scale and minimum (`w = d * q + m`).
pub(super) fn block_dm(format: Format, w: &[u8]) -> (f32, f32) {
    match format {
        Format::Q4F => (f32_at(w, 0), f32_at(w, 4)),
        _ => (f16_at(w, 0), f16_at(w, 2)),
    }
}

/// An 8-bit block's scales for its first and second 16 weights.
pub(super) fn block_scales(format: Format, w: &[u8]) -> (f32, f32) {
    match format {
        Format::Q8S => (f32_at(w, 0), f32_at(w, 4)),
        _ => (f16_at(w, 0), f16_at(w, 0)),
    }
}

/// The plain-Rust dot product of one weight row with one quantized activation row.
pub(super) fn dot_scalar(format: Format, w: &[u8], x: &[Q8_1]) -> f32 {
    let header = format.header_bytes();
    w.chunks_exact(format.block_bytes())
        .zip(x)
        .map(|(wb, xb)| match format {
            Format::Q8_0 | Format::Q8S => {
                let (s0, s1) = block_scales(format, wb);
                let half = |r: std::ops::Range<usize>| -> i32 {
                    wb[header..][r.clone()].iter().zip(&xb.qs[r]).map(|(&q, &y)| q as i8 as i32 * y as i32).sum()
                };
                xb.d * (s0 * half(0..QK / 2) as f32 + s1 * half(QK / 2..QK) as f32)
            }
            Format::Q4_1 | Format::Q4F => {
                let (d, m) = block_dm(format, wb);
                let mut acc = 0i32;
                for j in 0..QK / 2 {
                    let q = wb[header + j];
                    acc += (q & 0x0F) as i32 * xb.qs[j] as i32 + (q >> 4) as i32 * xb.qs[j + QK / 2] as i32;
                }
                d * xb.d * acc as f32 + m * xb.s
            }
        })
        .sum()
}

/// A weight row as f32 (the layouts without a candle equivalent leave this module that way).
pub(super) fn dequantize_row(format: Format, w: &[u8]) -> Vec<f32> {
    let header = format.header_bytes();
    let mut out = Vec::with_capacity(w.len() / format.block_bytes() * QK);
    for wb in w.chunks_exact(format.block_bytes()) {
        match format {
            Format::Q8_0 | Format::Q8S => {
                let (s0, s1) = block_scales(format, wb);
                out.extend(
                    wb[header..].iter().enumerate().map(|(e, &q)| q as i8 as f32 * if e < 16 { s0 } else { s1 }),
                );
            }
            Format::Q4_1 | Format::Q4F => {
                let (d, m) = block_dm(format, wb);
                out.extend((0..QK).map(|e| d * (wb[header + e % 16] >> (4 * (e / 16)) & 0x0F) as f32 + m));
            }
        }
    }
    out
}
