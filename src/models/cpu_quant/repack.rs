//! GGUF block formats rewritten, exactly, into the four layouts the kernels run (`Format`), once at load:
//! - Q4_1 as it is; Q4_0 as Q4_1 with the minimum `-8 d` (exact in f16 unless `8 d` overflows it, then as Q4F);
//! - Q4_K's 32-weight sub-blocks as Q4F: scale `d * sc` and minimum `-dmin * m` (a 6-bit integer times an f16
//!   is exact in f32), the nibbles reordered into Q4_1's order;
//! - Q8_0 as it is; Q5_0 as Q8_0 (its 5-bit values minus 16 fit a signed byte);
//! - Q6_K as Q8S: per 16 weights the scale `d * sc` (an i8 times an f16, exact in f32), values minus 32.
//!
//! K-quant weights meet activations quantized per 32 values like every other format here (ggml uses 256-value
//! blocks for them): against llama.cpp on Gemma 3 Q4_K_M that agreed better (top-1 at 62 of 64 teacher-forced
//! positions, mean |logprob difference| 0.036, against 60 and 0.040 with 256-value blocks).
//!
//! Every weight comes out as the same number the GGUF block encodes (the tests compare with candle's
//! dequantization), so repacking changes speed and memory, never results. Other types stay with candle.

use super::layout::{Format, QK};
use candle_core::quantized::GgmlDType;
use candle_core::Result;
use half::f16;
use rayon::prelude::*;

/// Weights per K-quant super-block.
const QK_K: usize = 256;

/// The layout teal's kernels run GGUF type `dtype` in; None where candle's matmul runs it.
pub fn layout_of(dtype: GgmlDType) -> Option<Format> {
    Some(match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => Format::Q4_1,
        GgmlDType::Q4K => Format::Q4F,
        GgmlDType::Q8_0 | GgmlDType::Q5_0 => Format::Q8_0,
        GgmlDType::Q6K => Format::Q8S,
        _ => return None,
    })
}

/// Bytes `elems` weights of GGUF type `dtype` occupy once repacked; None where candle's matmul runs them.
pub fn repacked_bytes(dtype: GgmlDType, elems: u64) -> Option<u64> {
    layout_of(dtype).map(|f| elems / QK as u64 * f.block_bytes() as u64)
}

fn f16_at(b: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([b[at], b[at + 1]])
}

/// GGUF blocks of `dtype` for a `[rows, cols]` matrix as one of teal's layouts (rows contiguous); None where
/// candle runs the type.
pub(super) fn repack(dtype: GgmlDType, data: &[u8], rows: usize, cols: usize) -> Result<Option<(Format, Vec<u8>)>> {
    let Some(format) = layout_of(dtype) else { return Ok(None) };
    let (per, size) = (dtype.block_size(), dtype.type_size());
    let expected = (rows as u64).checked_mul(cols as u64).and_then(|n| (n / per as u64).checked_mul(size as u64));
    if rows == 0 || cols == 0 || !cols.is_multiple_of(per) || expected != Some(data.len() as u64) {
        candle_core::bail!("{dtype:?} matrix [{rows}, {cols}] with {} bytes is malformed", data.len())
    }
    let (in_row, out_row) = (cols / per * size, cols / QK * format.block_bytes());
    let out_block = per / QK * format.block_bytes();
    let convert: fn(&[u8], &mut [u8]) = match dtype {
        GgmlDType::Q4_1 | GgmlDType::Q8_0 => |i, o| o.copy_from_slice(i),
        GgmlDType::Q4_0 => q4_0,
        GgmlDType::Q5_0 => q5_0,
        GgmlDType::Q4K => q4_k,
        GgmlDType::Q6K => q6_k,
        _ => return Ok(None),
    };
    let mut out = vec![0u8; rows * out_row];
    out.par_chunks_mut(out_row).zip(data.par_chunks(in_row)).for_each(|(o, i)| {
        for (ib, ob) in i.chunks_exact(size).zip(o.chunks_exact_mut(out_block)) {
            convert(ib, ob);
        }
    });
    if dtype == GgmlDType::Q4_0 && out.chunks_exact(20).any(|b| !f16_at(b, 2).is_finite()) {
        // `8 d` overflowed f16 somewhere: keep the minimum in f32 instead.
        let mut wide = vec![0u8; rows * cols / QK * Format::Q4F.block_bytes()];
        for (ib, ob) in data.chunks_exact(size).zip(wide.chunks_exact_mut(Format::Q4F.block_bytes())) {
            let d = f16_at(ib, 0).to_f32();
            write_q4f(ob, d, -8.0 * d, |e| ib[2 + e % 16] >> (4 * (e / 16)) & 0x0F);
        }
        return Ok(Some((Format::Q4F, wide)));
    }
    Ok(Some((format, out)))
}

/// Q4_0 (f16 d, 16 bytes of nibbles; `w = d * (q - 8)`) as Q4_1: the same nibbles, minimum `-8 d`.
fn q4_0(i: &[u8], o: &mut [u8]) {
    let d = f16_at(i, 0);
    o[..2].copy_from_slice(&i[..2]);
    o[2..4].copy_from_slice(&f16::from_f32(-8.0 * d.to_f32()).to_le_bytes());
    o[4..20].copy_from_slice(&i[2..18]);
}

/// Q5_0 (f16 d, 32 high bits, 16 bytes of nibbles; `w = d * (q - 16)`) as Q8_0.
fn q5_0(i: &[u8], o: &mut [u8]) {
    o[..2].copy_from_slice(&i[..2]);
    let qh = u32::from_le_bytes([i[2], i[3], i[4], i[5]]);
    for j in 0..16 {
        let lo = (i[6 + j] & 0x0F) | (((qh >> j) << 4) & 0x10) as u8;
        let hi = (i[6 + j] >> 4) | ((qh >> (j + 12)) & 0x10) as u8;
        o[2 + j] = (lo as i8 - 16) as u8;
        o[2 + j + 16] = (hi as i8 - 16) as u8;
    }
}

/// One Q4F block: f32 scale, f32 minimum, then weight `e` (0..32) from `q(e)` as Q4_1 orders nibbles.
fn write_q4f(o: &mut [u8], d: f32, m: f32, q: impl Fn(usize) -> u8) {
    o[..4].copy_from_slice(&d.to_le_bytes());
    o[4..8].copy_from_slice(&m.to_le_bytes());
    for j in 0..16 {
        o[8 + j] = q(j) | (q(j + 16) << 4);
    }
}

/// Sub-block `j`'s 6-bit scale and minimum from Q4_K's 12 packed bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K (f16 d, f16 dmin, 12 bytes of 6-bit scales and minimums, 128 bytes of nibbles: in each 64 weights the
/// low nibbles of 32 bytes, then their high nibbles; `w = d * sc * q - dmin * m`) as eight Q4F blocks.
fn q4_k(i: &[u8], o: &mut [u8]) {
    let (d, dmin) = (f16_at(i, 0).to_f32(), f16_at(i, 2).to_f32());
    let (scales, qs) = (&i[4..16], &i[16..144]);
    for (j, ob) in o.chunks_exact_mut(Format::Q4F.block_bytes()).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let shift = 4 * (j % 2);
        write_q4f(ob, d * sc as f32, -dmin * m as f32, |e| (bytes[e] >> shift) & 0x0F);
    }
}

/// Q6_K (128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales, f16 d; `w = d * sc[i / 16] * (q - 32)`)
/// as eight Q8S blocks.
fn q6_k(i: &[u8], o: &mut [u8]) {
    let (ql, qh, sc) = (&i[..128], &i[128..192], &i[192..208]);
    let d = f16_at(i, 208).to_f32();
    let mut q = [0i8; QK_K];
    for n in 0..2 {
        let (ql, qh, q) = (&ql[64 * n..], &qh[32 * n..], &mut q[128 * n..]);
        for l in 0..32 {
            q[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            q[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    for (j, ob) in o.chunks_exact_mut(Format::Q8S.block_bytes()).enumerate() {
        ob[..4].copy_from_slice(&(d * sc[2 * j] as i8 as f32).to_le_bytes());
        ob[4..8].copy_from_slice(&(d * sc[2 * j + 1] as i8 as f32).to_le_bytes());
        for (b, v) in ob[8..].iter_mut().zip(&q[QK * j..QK * (j + 1)]) {
            *b = *v as u8;
        }
    }
}
