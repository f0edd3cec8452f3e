//! AVX2 kernels over the row-group layout (groups.rs), for CPUs without AVX-512 VNNI: each group's 16 rows as two
//! halves of 8, lane `i` of a 256-bit vector belonging to row `i` of the half. AVX2 has no `vpdpbusd`, so 4
//! weights of each of 8 rows meet the same 4 broadcast activation bytes through `vpmaddubsw` (unsigned x signed
//! bytes, adjacent pairs summed into i16) and `vpmaddwd` against ones (the two pairs into the row's i32 lane).
//! Per block, token and half of a group: 8 multiply-adds and one set of float ops advance 8 dot products, where a
//! kernel over one row (x86.rs) spends its float ops and a horizontal sum on one.
//!
//! - 4-bit blocks: nibbles are 0..=15 and activations -127..=127, so a pair is at most 3,810 and a whole block's
//!   8 pair sums (30,480) add up in i16 before the one widening `vpmaddwd`.
//! - 8-bit blocks: a pair of `q x` can reach 32,512, so each product is widened at once. The layout stores `q +
//!   128`; `vpmaddubsw` wants one unsigned operand, so the weights go back to signed and take the sign trick of
//!   x86.rs (`|q|` times `x` with `q`'s sign).
//!
//! Same integer sums as the scalar reference; every function is `unsafe` because of `target_feature`.

use super::groups::{field_bytes, GROUP};
use super::layout::Format;
use super::scalar::Q8_1;
use std::arch::x86_64::*;

/// Rows per half of a group: one 256-bit vector of i32 lanes.
const HALF: usize = GROUP / 2;

/// Activation bytes `at..at + 4` of a block in every lane.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bcast(x: &Q8_1, at: usize) -> __m256i {
    // SAFETY: at + 4 <= 32 (callers pass 4k and 16 + 4k for k < 4, or 4k for k < 8); unaligned read.
    _mm256_set1_epi32(std::ptr::read_unaligned(x.qs.as_ptr().add(at) as *const i32))
}

/// 8 f32 (or 8 f16 widened) at `p`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn scales<const F32: bool>(p: *const u8) -> __m256 {
    // SAFETY: the caller's group block has 8 fields at `p`; unaligned loads.
    if F32 {
        _mm256_loadu_ps(p as *const f32)
    } else {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// Half `h`'s 32 bytes of quant vector `k` of the group block at `p`: rows `8h..8h + 8`, 4 bytes each.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn quants(p: *const u8, k: usize, h: usize) -> __m256i {
    // SAFETY: the caller's group block has its quant vectors of 64 bytes at `p`; unaligned load.
    _mm256_loadu_si256(p.add(64 * k + 32 * h) as *const __m256i)
}

/// 4-bit blocks (`Q4_1`; `Q4F` when `WIDE`) of half `h` of a group against `N` tokens.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_q4<const N: usize, const WIDE: bool>(g: &[u8], xs: [&[Q8_1]; N], h: usize) -> [__m256; N] {
    let format = if WIDE { Format::Q4F } else { Format::Q4_1 };
    let bytes = GROUP * format.block_bytes();
    let fields = 256 + HALF * h * field_bytes(format);
    let (nibble, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
    let mut acc = [_mm256_setzero_ps(); N];
    let (mut lo, mut hi) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
    for b in 0..g.len() / bytes {
        // SAFETY: group block b holds 4 vectors of nibbles and then 16 scales and 16 minimums (groups.rs); every
        // token has block b; unaligned loads.
        let p = g.as_ptr().add(b * bytes);
        for k in 0..4 {
            let v = quants(p, k, h);
            lo[k] = _mm256_and_si256(v, nibble);
            hi[k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        }
        let wd = scales::<WIDE>(p.add(fields));
        let wm = scales::<WIDE>(p.add(fields + GROUP * field_bytes(format)));
        for t in 0..N {
            let x = xs[t].get_unchecked(b);
            let mut pairs = _mm256_setzero_si256();
            for k in 0..4 {
                pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(lo[k], bcast(x, 4 * k)));
                pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(hi[k], bcast(x, 16 + 4 * k)));
            }
            let i = _mm256_madd_epi16(pairs, ones);
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(wd, _mm256_set1_ps(x.d)), _mm256_cvtepi32_ps(i), acc[t]);
            acc[t] = _mm256_fmadd_ps(wm, _mm256_set1_ps(x.s), acc[t]);
        }
    }
    acc
}

/// 8-bit signed blocks (`Q8_0`; `Q8S` when `S16`, a scale per 16 weights) of half `h` of a group against `N`
/// tokens.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half_q8<const N: usize, const S16: bool>(g: &[u8], xs: [&[Q8_1]; N], h: usize) -> [__m256; N] {
    let format = if S16 { Format::Q8S } else { Format::Q8_0 };
    let bytes = GROUP * format.block_bytes();
    let fields = 512 + HALF * h * field_bytes(format);
    let (flip, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
    let mut acc = [_mm256_setzero_ps(); N];
    let (mut q, mut aq) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
    for b in 0..g.len() / bytes {
        // SAFETY: group block b holds 8 vectors of quants and then its scale fields (groups.rs); every token has
        // block b; unaligned loads.
        let p = g.as_ptr().add(b * bytes);
        for k in 0..8 {
            q[k] = _mm256_xor_si256(quants(p, k, h), flip);
            aq[k] = _mm256_sign_epi8(q[k], q[k]);
        }
        let s0 = scales::<S16>(p.add(fields));
        let s1 = if S16 { scales::<true>(p.add(fields + GROUP * 4)) } else { s0 };
        for t in 0..N {
            let x = xs[t].get_unchecked(b);
            let dot = |k: usize| {
                _mm256_madd_epi16(_mm256_maddubs_epi16(aq[k], _mm256_sign_epi8(bcast(x, 4 * k), q[k])), ones)
            };
            let (mut first, mut second) = (dot(0), dot(4));
            for k in 1..4 {
                first = _mm256_add_epi32(first, dot(k));
                second = _mm256_add_epi32(second, dot(4 + k));
            }
            let xd = _mm256_set1_ps(x.d);
            if S16 {
                let f = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(second), _mm256_mul_ps(s0, _mm256_cvtepi32_ps(first)));
                acc[t] = _mm256_fmadd_ps(xd, f, acc[t]);
            } else {
                let i = _mm256_add_epi32(first, second);
                acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(s0, xd), _mm256_cvtepi32_ps(i), acc[t]);
            }
        }
    }
    acc
}

/// One group's 16 rows against `N` tokens, token `t`'s 16 results at `out[t * stride..]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const N: usize>(format: Format, g: &[u8], xs: [&[Q8_1]; N], out: *mut f32, stride: usize) {
    for h in 0..2 {
        let acc = match format {
            Format::Q4_1 => half_q4::<N, false>(g, xs, h),
            Format::Q4F => half_q4::<N, true>(g, xs, h),
            Format::Q8_0 => half_q8::<N, false>(g, xs, h),
            Format::Q8S => half_q8::<N, true>(g, xs, h),
        };
        for (t, a) in acc.iter().enumerate() {
            // SAFETY: the caller's `out` has 16 values to write at every `t * stride`.
            _mm256_storeu_ps(out.add(t * stride + HALF * h), *a);
        }
    }
}

/// One group of 16 rows (`g`, its bytes in the group layout) against every token in `xs` (tiles of 4, then one
/// by one): token `t`'s results written at `out + t * stride` (16 values).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; every token row has as many blocks as `g` holds per row;
/// `out + t * stride .. + 16` is writable for every token.
#[inline(never)]
pub(super) unsafe fn group_dots(format: Format, g: &[u8], xs: &[Vec<Q8_1>], out: *mut f32, stride: usize) {
    let mut t = 0;
    while t + 4 <= xs.len() {
        tile::<4>(format, g, std::array::from_fn(|i| &xs[t + i][..]), out.add(t * stride), stride);
        t += 4;
    }
    while t < xs.len() {
        tile::<1>(format, g, [&xs[t][..]], out.add(t * stride), stride);
        t += 1;
    }
}
