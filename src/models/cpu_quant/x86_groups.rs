//! AVX-512 VNNI kernels over the row-group layout (groups.rs): 16 weight rows against `N` tokens. Lane `i` of
//! every vector belongs to row `i`; each `vpdpbusd` multiplies 4 weights of each of the 16 rows with the same
//! 4 activation bytes (broadcast from memory) and adds them into that row's lane, so after 8 of them (a block)
//! every lane holds its row's whole integer block sum. A block's scales are then one vector of 16 rows: per
//! block and token, 8 `vpdpbusd` and 2-4 float ops advance 16 dot products, where a kernel over one row spends
//! 2 integer and 6 float ops per block and token on one.
//!
//! The 8-bit formats' weights are stored `q + 128` (the unsigned operand) and the activations stay signed, so
//! the `128 * sum(x)` this adds is a per-token number (from `Q8_1::sums`) that every row's accumulator starts
//! below. The 4-bit nibbles are unsigned already. Same integer sums as the scalar reference.

use super::groups::GROUP;
use super::layout::Format;
use super::scalar::Q8_1;
use std::arch::x86_64::*;

/// Activation bytes `at..at + 4` of a block in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bcast(x: &Q8_1, at: usize) -> __m512i {
    // SAFETY: at + 4 <= 32 (callers pass 4k and 16 + 4k for k < 4, or 4k for k < 8); unaligned read.
    _mm512_set1_epi32(std::ptr::read_unaligned(x.qs.as_ptr().add(at) as *const i32))
}

/// 16 f32 (or 16 f16 widened) at `p`.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn scales<const F32: bool>(p: *const u8) -> __m512 {
    // SAFETY: the caller's group block has the 16 fields at `p`; unaligned loads.
    if F32 {
        _mm512_loadu_ps(p as *const f32)
    } else {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// 8-bit signed blocks (`Q8_0`; `Q8S` when `S16`, a scale per 16 weights) of 16 rows against `N` tokens.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q8<const N: usize, const S16: bool>(g: &[u8], xs: [&[Q8_1]; N]) -> [__m512; N] {
    let bytes = GROUP * if S16 { Format::Q8S } else { Format::Q8_0 }.block_bytes();
    let mut acc = [_mm512_setzero_ps(); N];
    let mut w = [_mm512_setzero_si512(); 8];
    for b in 0..g.len() / bytes {
        // SAFETY: group block b holds 8 vectors of quants and then its scale fields (groups.rs); every token has
        // block b (as many blocks as the row); unaligned loads.
        let p = g.as_ptr().add(b * bytes);
        for (k, v) in w.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(p.add(64 * k) as *const _);
        }
        let s0 = scales::<S16>(p.add(512));
        let s1 = if S16 { scales::<true>(p.add(576)) } else { s0 };
        for t in 0..N {
            let x = xs[t].get_unchecked(b);
            let xd = _mm512_set1_ps(x.d);
            if S16 {
                let (mut lo, mut hi) = (_mm512_set1_epi32(-128 * x.sums[0]), _mm512_set1_epi32(-128 * x.sums[1]));
                for k in 0..4 {
                    lo = _mm512_dpbusd_epi32(lo, w[k], bcast(x, 4 * k));
                    hi = _mm512_dpbusd_epi32(hi, w[4 + k], bcast(x, 16 + 4 * k));
                }
                let f = _mm512_fmadd_ps(s1, _mm512_cvtepi32_ps(hi), _mm512_mul_ps(s0, _mm512_cvtepi32_ps(lo)));
                acc[t] = _mm512_fmadd_ps(xd, f, acc[t]);
            } else {
                let mut i = _mm512_set1_epi32(-128 * (x.sums[0] + x.sums[1]));
                for (k, v) in w.iter().enumerate() {
                    i = _mm512_dpbusd_epi32(i, *v, bcast(x, 4 * k));
                }
                acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(s0, xd), _mm512_cvtepi32_ps(i), acc[t]);
            }
        }
    }
    acc
}

/// 4-bit blocks (`Q4_1`; `Q4F` when `WIDE`) of 16 rows against `N` tokens: `d_w d_x sum(q_w q_x) + m_w s_x`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q4<const N: usize, const WIDE: bool>(g: &[u8], xs: [&[Q8_1]; N]) -> [__m512; N] {
    let bytes = GROUP * if WIDE { Format::Q4F } else { Format::Q4_1 }.block_bytes();
    let width = if WIDE { 4 } else { 2 };
    let nibble = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); N];
    let (mut lo, mut hi) = ([_mm512_setzero_si512(); 4], [_mm512_setzero_si512(); 4]);
    for b in 0..g.len() / bytes {
        // SAFETY: group block b holds 4 vectors of nibbles and then 16 scales and 16 minimums (groups.rs); every
        // token has block b; unaligned loads.
        let p = g.as_ptr().add(b * bytes);
        for k in 0..4 {
            let v = _mm512_loadu_si512(p.add(64 * k) as *const _);
            lo[k] = _mm512_and_si512(v, nibble);
            hi[k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
        }
        let wd = scales::<WIDE>(p.add(256));
        let wm = scales::<WIDE>(p.add(256 + GROUP * width));
        for t in 0..N {
            let x = xs[t].get_unchecked(b);
            let mut i = _mm512_setzero_si512();
            for k in 0..4 {
                i = _mm512_dpbusd_epi32(i, lo[k], bcast(x, 4 * k));
                i = _mm512_dpbusd_epi32(i, hi[k], bcast(x, 16 + 4 * k));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(wd, _mm512_set1_ps(x.d)), _mm512_cvtepi32_ps(i), acc[t]);
            acc[t] = _mm512_fmadd_ps(wm, _mm512_set1_ps(x.s), acc[t]);
        }
    }
    acc
}

/// One group's 16 rows against `N` tokens, token `t`'s 16 results at `out[t * stride..]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const N: usize>(format: Format, g: &[u8], xs: [&[Q8_1]; N], out: *mut f32, stride: usize) {
    let acc = match format {
        Format::Q4_1 => tile_q4::<N, false>(g, xs),
        Format::Q4F => tile_q4::<N, true>(g, xs),
        Format::Q8_0 => tile_q8::<N, false>(g, xs),
        Format::Q8S => tile_q8::<N, true>(g, xs),
    };
    for (t, a) in acc.iter().enumerate() {
        // SAFETY: the caller's `out` has 16 values to write at every `t * stride`.
        _mm512_storeu_ps(out.add(t * stride), *a);
    }
}

/// One group of 16 rows (`g`, its bytes in the group layout) against every token in `xs` (tiles of 8 and 4, then
/// one by one): token `t`'s results written at `out + t * stride` (16 values).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VNNI, AVX2, FMA and F16C; every token row has as many blocks as `g` holds per row;
/// `out + t * stride .. + 16` is writable for every token.
#[inline(never)]
pub(super) unsafe fn group_dots(format: Format, g: &[u8], xs: &[Vec<Q8_1>], out: *mut f32, stride: usize) {
    let mut t = 0;
    while t + 8 <= xs.len() {
        tile::<8>(format, g, std::array::from_fn(|i| &xs[t + i][..]), out.add(t * stride), stride);
        t += 8;
    }
    if t + 4 <= xs.len() {
        tile::<4>(format, g, std::array::from_fn(|i| &xs[t + i][..]), out.add(t * stride), stride);
        t += 4;
    }
    while t < xs.len() {
        tile::<1>(format, g, [&xs[t][..]], out.add(t * stride), stride);
        t += 1;
    }
}
