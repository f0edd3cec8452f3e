//! The x86-64 kernels: dot products of one weight row with `N` token rows at once, each weight block unpacked
//! once and used `N` times (what makes batched decode and prefill cheaper per token than single-stream decode).
//! Two families, each in an AVX2+FMA+F16C and an AVX-512 VNNI version:
//! - 4-bit blocks with a scale and a minimum (`Q4_1`, f16 header; `Q4F`, f32 header): `d_w*d_x*sum(q_w*q_x) +
//!   m_w*s_x`, the nibbles being unsigned;
//! - 8-bit signed blocks (`Q8_0`, one f16 scale; `Q8S`, an f32 scale per 16 weights): `d_x*sum(s_w*q_w*q_x)`,
//!   with the sign trick so the unsigned x signed byte products (`maddubs`, `vpdpbusd`) multiply two signed
//!   vectors. After `maddubs` + `madd` (or `vpdpbusd`) lane `j` holds the sum of bytes `4j..4j+3`, so a block's
//!   first 16 weights land in its lanes 0-3 and a per-16 scale is a vector multiply.
//!
//! Every function here is `unsafe` because of `target_feature`: callers check the CPU first (`Isa::active`).

use super::layout::Format;
use super::scalar::Q8_1;
use half::f16;
use std::arch::x86_64::*;

/// A 4-bit block's (scale, minimum) at `wb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_dm<const WIDE: bool>(wb: *const u8) -> (f32, f32) {
    // SAFETY: the caller's block has its header at `wb` (8 bytes wide, 4 otherwise); unaligned reads.
    if WIDE {
        (std::ptr::read_unaligned(wb as *const f32), std::ptr::read_unaligned(wb.add(4) as *const f32))
    } else {
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(wb as *const i32)));
        (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)))
    }
}

const fn q4_format<const WIDE: bool>() -> Format {
    if WIDE {
        Format::Q4F
    } else {
        Format::Q4_1
    }
}

/// The 32 weights of the 4-bit block at `wb` as bytes 0..=15 (low nibbles first, as the activations are ordered).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn unpack_q4<const WIDE: bool>(wb: *const u8) -> __m256i {
    // SAFETY: the caller's block has 16 bytes of nibbles after its header; unaligned load.
    let nib = _mm_loadu_si128(wb.add(q4_format::<WIDE>().header_bytes()) as *const __m128i);
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), _mm256_set1_epi8(0x0F))
}

/// 4-bit blocks against `N` token rows, AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_tile_q4_avx2<const N: usize, const WIDE: bool>(w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut summs = [0f32; N];
    let ones = _mm256_set1_epi16(1);
    for (i, wb) in w.chunks_exact(q4_format::<WIDE>().block_bytes()).enumerate() {
        // SAFETY: wb is one whole block, each x row has a block for every weight block; unaligned loads.
        let (d, m) = q4_dm::<WIDE>(wb.as_ptr());
        let q = unpack_q4::<WIDE>(wb.as_ptr());
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

/// 4-bit blocks with AVX-512 VNNI: two blocks per step, their 64 nibbles against 64 activation bytes in one
/// `vpdpbusd` (unsigned x signed bytes summed into 16 lanes), each half scaled by its own block's scales.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni")]
pub(super) unsafe fn dot_tile_q4_vnni<const N: usize, const WIDE: bool>(w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    let bytes = q4_format::<WIDE>().block_bytes();
    let mut acc = [_mm512_setzero_ps(); N];
    let mut summs = [0f32; N];
    let pairs = w.len() / (2 * bytes);
    for p in 0..pairs {
        // SAFETY: blocks 2p and 2p + 1 exist (pairs counts whole pairs); every x row has as many blocks.
        let (w0, w1) = (w.as_ptr().add(2 * bytes * p), w.as_ptr().add(2 * bytes * p + bytes));
        let ((d0, m0), (d1, m1)) = (q4_dm::<WIDE>(w0), q4_dm::<WIDE>(w1));
        let q = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(unpack_q4::<WIDE>(w0)), unpack_q4::<WIDE>(w1));
        for t in 0..N {
            let (x0, x1) = (xs[t].get_unchecked(2 * p), xs[t].get_unchecked(2 * p + 1));
            summs[t] += m0 * x0.s + m1 * x1.s;
            let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, pair_of(x0, x1));
            let scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0 * x0.d), _mm512_set1_ps(d1 * x1.d));
            acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(prod), acc[t]);
        }
    }
    let mut out = [0f32; N];
    let tail: [&[Q8_1]; N] = std::array::from_fn(|t| &xs[t][2 * pairs..]);
    let rest = dot_tile_q4_avx2::<N, WIDE>(&w[2 * bytes * pairs..], tail);
    for t in 0..N {
        out[t] = _mm512_reduce_add_ps(acc[t]) + summs[t] + rest[t];
    }
    out
}

pub(super) const fn q8_format<const S16: bool>() -> Format {
    if S16 {
        Format::Q8S
    } else {
        Format::Q8_0
    }
}

/// An 8-bit block's weight scale for each of the 8 lanes a 32-byte product sums into.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_scales<const S16: bool>(wb: *const u8) -> __m256 {
    // SAFETY: the caller's block has its header at `wb` (two f32, or one f16); unaligned reads.
    if S16 {
        let (s0, s1) = (std::ptr::read_unaligned(wb as *const f32), std::ptr::read_unaligned(wb.add(4) as *const f32));
        _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0))
    } else {
        _mm256_set1_ps(f16::from_le_bytes([*wb, *wb.add(1)]).to_f32())
    }
}

/// 8-bit signed blocks against `N` token rows, AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_tile_q8_avx2<const N: usize, const S16: bool>(w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    let format = q8_format::<S16>();
    let mut acc = [_mm256_setzero_ps(); N];
    let ones = _mm256_set1_epi16(1);
    for (i, wb) in w.chunks_exact(format.block_bytes()).enumerate() {
        // SAFETY: wb is one whole block (header, 32 quants), each x block 32 quants; unaligned loads.
        let ws = q8_scales::<S16>(wb.as_ptr());
        let q = _mm256_loadu_si256(wb.as_ptr().add(format.header_bytes()) as *const __m256i);
        let aq = _mm256_sign_epi8(q, q);
        for t in 0..N {
            let xb = xs[t].get_unchecked(i);
            let y = _mm256_sign_epi8(_mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i), q);
            let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, y), ones);
            let scale = _mm256_mul_ps(ws, _mm256_set1_ps(xb.d));
            acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(prod), acc[t]);
        }
    }
    let mut out = [0f32; N];
    for t in 0..N {
        out[t] = hsum(acc[t]);
    }
    out
}

/// 8-bit signed blocks with AVX-512 VNNI: two blocks per step, with the sign trick of the AVX2 version.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot_tile_q8_vnni<const N: usize, const S16: bool>(w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    let format = q8_format::<S16>();
    let bytes = format.block_bytes();
    let mut acc = [_mm512_setzero_ps(); N];
    let pairs = w.len() / (2 * bytes);
    for p in 0..pairs {
        // SAFETY: blocks 2p and 2p + 1 exist (header, 32 quants each); unaligned loads.
        let (w0, w1) = (w.as_ptr().add(2 * bytes * p), w.as_ptr().add(2 * bytes * p + bytes));
        let (ws, q) = q8_pair::<S16>(w0, w1);
        let negative = _mm512_movepi8_mask(q);
        let aq = _mm512_abs_epi8(q);
        for t in 0..N {
            let (x0, x1) = (xs[t].get_unchecked(2 * p), xs[t].get_unchecked(2 * p + 1));
            // y * sign(q): negate where q < 0 (q = 0 contributes 0 through |q| anyway).
            let y = _mm512_mask_sub_epi8(pair_of(x0, x1), negative, _mm512_setzero_si512(), pair_of(x0, x1));
            let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aq, y);
            let xd = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(x0.d), _mm512_set1_ps(x1.d));
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(ws, xd), _mm512_cvtepi32_ps(prod), acc[t]);
        }
    }
    let mut out = [0f32; N];
    let tail: [&[Q8_1]; N] = std::array::from_fn(|t| &xs[t][2 * pairs..]);
    let rest = dot_tile_q8_avx2::<N, S16>(&w[2 * bytes * pairs..], tail);
    for t in 0..N {
        out[t] = _mm512_reduce_add_ps(acc[t]) + rest[t];
    }
    out
}

/// Two adjacent 8-bit blocks at `w0` and `w1`: their weight scale for each of the 16 lanes a 64-byte product sums
/// into, and their 64 quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn q8_pair<const S16: bool>(w0: *const u8, w1: *const u8) -> (__m512, __m512i) {
    // SAFETY: the caller's blocks each have a header and 32 quants at `w0` and `w1`; unaligned loads.
    let header = q8_format::<S16>().header_bytes();
    let (s0, s1) = (_mm256_castps_pd(q8_scales::<S16>(w0)), _mm256_castps_pd(q8_scales::<S16>(w1)));
    let ws = _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(s0), s1));
    let q = _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_loadu_si256(w0.add(header) as *const __m256i)),
        _mm256_loadu_si256(w1.add(header) as *const __m256i),
    );
    (ws, q)
}

/// Two activation blocks' 64 quants in one register.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn pair_of(x0: &Q8_1, x1: &Q8_1) -> __m512i {
    // SAFETY: each block holds 32 quants; unaligned loads.
    let y0 = _mm256_loadu_si256(x0.qs.as_ptr() as *const __m256i);
    let y1 = _mm256_loadu_si256(x1.qs.as_ptr() as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(y0), y1)
}

/// `scalar::quantize_row_for` compiled for AVX2 (the same code and bits; the rounding one instruction rather
/// than a libm call in a plain x86-64 build).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_for_avx2(format: Format, x: &[f32]) -> Vec<Q8_1> {
    super::scalar::quantize_row_for(format, x)
}

/// `scalar::quantize_row` with AVX-512: the same numbers (the same max, scale and products; `vcvtps2dq` rounds
/// to nearest even as `round_ties_even` does), without the scalar loop that was a tenth of a prefill.
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw")]
pub(super) unsafe fn quantize_row_avx512(x: &[f32]) -> Vec<Q8_1> {
    let mut out = Vec::with_capacity(x.len() / 32);
    for b in x.chunks_exact(32) {
        let amax = abs_max_avx512(b);
        let (qs, sums) = quants_avx512(b, if amax != 0.0 { 127.0 / amax } else { 0.0 });
        out.push(Q8_1::new(amax / 127.0, qs, sums));
    }
    out
}

/// `scalar::quantize_row_k` with AVX-512: the same numbers (one scale per 256 values, ggml's Q8_K).
#[target_feature(enable = "avx2,avx512f,avx512bw")]
pub(super) unsafe fn quantize_row_k_avx512(x: &[f32]) -> Vec<Q8_1> {
    let mut out = Vec::with_capacity(x.len() / 32);
    for s in x.chunks(super::scalar::QK_K) {
        let amax = abs_max_avx512(s);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let d = if amax != 0.0 { 1.0 / id } else { 0.0 };
        for b in s.chunks_exact(32) {
            let (qs, sums) = quants_avx512(b, id);
            out.push(Q8_1::unrounded(d, qs, sums));
        }
    }
    out
}

/// `max |x|` over whole vectors of 16 (every caller's length is a multiple of 32).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn abs_max_avx512(x: &[f32]) -> f32 {
    let mut m = _mm512_setzero_ps();
    for v in x.chunks_exact(16) {
        // SAFETY: 16 values in `v`; unaligned load.
        m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(v.as_ptr())));
    }
    _mm512_reduce_max_ps(m)
}

/// One block of 32 values' quants `round(x * id)` and their sums over each half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quants_avx512(b: &[f32], id: f32) -> ([i8; 32], [i32; 2]) {
    let id = _mm512_set1_ps(id);
    // SAFETY: 32 values in `b` (chunks_exact(32) at every caller); unaligned loads and stores into 32 bytes.
    let (v0, v1) = (_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b.as_ptr().add(16)));
    let (q0, q1) = (_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)), _mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
    let mut qs = [0i8; 32];
    _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(qs.as_mut_ptr().add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q1));
    (qs, [_mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1)])
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}
