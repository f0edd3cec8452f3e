//! The aarch64 kernels (NEON, which every aarch64 CPU has): dot products of one weight row with `N` token rows at
//! once, each weight block unpacked once and used `N` times, as x86.rs does. Base NEON only (`vmull_s8` and a
//! pairwise widening add): the `sdot` instruction's intrinsics are not stable Rust yet.
//! - 4-bit blocks (`Q4_1`, `Q4F`): `d_w*d_x*sum(q_w*q_x) + m_w*s_x`; nibbles are 0..=15, so they multiply as
//!   signed bytes;
//! - 8-bit signed blocks (`Q8_0`, `Q8S`): `d_x*(s0*sum(first 16) + s1*sum(last 16))`.
//!
//! Products of two bytes fit in i16 (|q_w| <= 128, |q_x| <= 127); each is widened into i32 lanes at once.
//! Every function here is `unsafe` because of `target_feature`: callers check the CPU first (`Isa::active`).

use super::layout::{Format, QK};
use super::scalar::{block_dm, block_scales, Q8_1};
use std::arch::aarch64::*;

/// `sum(a[i] * b[i])` over 16 signed bytes, in four i32 lanes added to `acc`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// 4-bit blocks against `N` token rows.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_tile_q4<const N: usize>(format: Format, w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    let header = format.header_bytes();
    let mut acc = [vdupq_n_f32(0.0); N];
    let mut summs = [0f32; N];
    let mask = vdupq_n_u8(0x0F);
    for (i, wb) in w.chunks_exact(format.block_bytes()).enumerate() {
        let (d, m) = block_dm(format, wb);
        // SAFETY: wb is one whole block: a header and 16 bytes of nibbles; unaligned load.
        let nib = vld1q_u8(wb.as_ptr().add(header));
        let (lo, hi) = (vreinterpretq_s8_u8(vandq_u8(nib, mask)), vreinterpretq_s8_u8(vshrq_n_u8::<4>(nib)));
        for t in 0..N {
            // SAFETY: each x row has a block for every weight block (the caller's invariant), of 32 quants.
            let xb = xs[t].get_unchecked(i);
            summs[t] += m * xb.s;
            let y0 = vld1q_s8(xb.qs.as_ptr());
            let y1 = vld1q_s8(xb.qs.as_ptr().add(QK / 2));
            let sum = dot16(dot16(vdupq_n_s32(0), lo, y0), hi, y1);
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(sum), d * xb.d);
        }
    }
    std::array::from_fn(|t| vaddvq_f32(acc[t]) + summs[t])
}

/// 8-bit signed blocks against `N` token rows.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_tile_q8<const N: usize>(format: Format, w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    let header = format.header_bytes();
    let mut acc = [vdupq_n_f32(0.0); N];
    for (i, wb) in w.chunks_exact(format.block_bytes()).enumerate() {
        let (s0, s1) = block_scales(format, wb);
        // SAFETY: wb is one whole block: a header and 32 quants; unaligned loads.
        let q0 = vld1q_s8(wb.as_ptr().add(header) as *const i8);
        let q1 = vld1q_s8(wb.as_ptr().add(header + QK / 2) as *const i8);
        for t in 0..N {
            // SAFETY: each x row has a block for every weight block (the caller's invariant), of 32 quants.
            let xb = xs[t].get_unchecked(i);
            let first = dot16(vdupq_n_s32(0), q0, vld1q_s8(xb.qs.as_ptr()));
            let second = dot16(vdupq_n_s32(0), q1, vld1q_s8(xb.qs.as_ptr().add(QK / 2)));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(first), s0 * xb.d);
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(second), s1 * xb.d);
        }
    }
    std::array::from_fn(|t| vaddvq_f32(acc[t]))
}

/// `N` dot products of one weight row in `format`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn dot_tile<const N: usize>(format: Format, w: &[u8], xs: [&[Q8_1]; N]) -> [f32; N] {
    match format {
        Format::Q4_1 | Format::Q4F => dot_tile_q4::<N>(format, w, xs),
        Format::Q8_0 | Format::Q8S => dot_tile_q8::<N>(format, w, xs),
    }
}
