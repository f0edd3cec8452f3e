//! AVX-512 VNNI kernels over activations laid out for them (`Pairs`): per token, each pair of 32-value blocks
//! as one 64-byte vector and its scales as 16-lane vectors (lanes 0-7 the first block's, 8-15 the second's), made
//! once per matmul and read by every weight row. For the signed 8-bit weights the activations are stored
//! unsigned (`q + 128`), so `vpdpbusd` multiplies them with the weights directly; the `128 * sum(w)` this adds is
//! computed once per weight pair and taken off by starting every token's accumulator at its negative. Per token
//! and block pair the inner loop is then one load, one `vpdpbusd` and three vector float ops (x86.rs's kernels
//! broadcast, blend and flip signs there). Same integer sums as the scalar reference; used where a row has an even
//! number of blocks.

use super::layout::Format;
use super::scalar::Q8_1;
use super::x86::{q4_dm, q8_format, q8_pair, unpack_q4};
use std::arch::x86_64::*;

/// One token's activations as block pairs.
pub(super) struct Pairs {
    q: Vec<[u8; 64]>,
    d: Vec<[f32; 16]>,
    /// `s / 8` per lane (a block's 8 lanes sum to its `s`); only for the 4-bit formats.
    s: Vec<[f32; 16]>,
}

impl Pairs {
    /// `x` must have an even number of blocks. `unsigned`: store `q + 128` (for the signed 8-bit weights).
    pub(super) fn new(x: &[Q8_1], unsigned: bool) -> Pairs {
        let flip = if unsigned { 0x80 } else { 0 };
        let pairs = x.chunks_exact(2);
        let q = pairs
            .clone()
            .map(|p| {
                let mut q = [0u8; 64];
                for i in 0..32 {
                    q[i] = p[0].qs[i] as u8 ^ flip;
                    q[32 + i] = p[1].qs[i] as u8 ^ flip;
                }
                q
            })
            .collect();
        let halves = |a: f32, b: f32| {
            let mut v = [a; 16];
            v[8..].fill(b);
            v
        };
        let d = pairs.clone().map(|p| halves(p[0].d, p[1].d)).collect();
        let s = if unsigned { vec![] } else { pairs.map(|p| halves(p[0].s / 8.0, p[1].s / 8.0)).collect() };
        Pairs { q, d, s }
    }

    /// Whether the 8-bit kernels (unsigned activations) or the 4-bit ones read these.
    pub(super) fn for_format(format: Format) -> bool {
        matches!(format, Format::Q8_0 | Format::Q8S)
    }
}

/// `[d0 x 8 | d1 x 8]`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn lanes(a: f32, b: f32) -> __m512 {
    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
}

/// 4-bit blocks (`Q4_1`, `Q4F`) against `N` tokens: `d_w d_x sum(q_w q_x) + m_w s_x` per block.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni")]
pub(super) unsafe fn dot_pairs_q4<const N: usize, const WIDE: bool>(w: &[u8], xs: [&Pairs; N]) -> [f32; N] {
    let bytes = if WIDE { Format::Q4F } else { Format::Q4_1 }.block_bytes();
    let mut acc = [_mm512_setzero_ps(); N];
    for p in 0..w.len() / (2 * bytes) {
        // SAFETY: blocks 2p and 2p + 1 exist; every token has pair p (as many blocks as the row); unaligned loads.
        let (w0, w1) = (w.as_ptr().add(2 * bytes * p), w.as_ptr().add(2 * bytes * p + bytes));
        let ((d0, m0), (d1, m1)) = (q4_dm::<WIDE>(w0), q4_dm::<WIDE>(w1));
        let q = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(unpack_q4::<WIDE>(w0)), unpack_q4::<WIDE>(w1));
        let (wd, wm) = (lanes(d0, d1), lanes(m0, m1));
        for t in 0..N {
            let x = xs[t];
            let y = _mm512_loadu_si512(x.q.get_unchecked(p).as_ptr() as *const _);
            let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
            let scale = _mm512_mul_ps(wd, _mm512_loadu_ps(x.d.get_unchecked(p).as_ptr()));
            acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(prod), acc[t]);
            acc[t] = _mm512_fmadd_ps(wm, _mm512_loadu_ps(x.s.get_unchecked(p).as_ptr()), acc[t]);
        }
    }
    acc.map(|a| _mm512_reduce_add_ps(a))
}

/// 8-bit signed blocks (`Q8_0`, `Q8S`) against `N` tokens whose activations are stored `q + 128`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot_pairs_q8<const N: usize, const S16: bool>(w: &[u8], xs: [&Pairs; N]) -> [f32; N] {
    let bytes = q8_format::<S16>().block_bytes();
    let mut acc = [_mm512_setzero_ps(); N];
    let offset = _mm512_set1_epi8(0x80u8 as i8);
    for p in 0..w.len() / (2 * bytes) {
        // SAFETY: blocks 2p and 2p + 1 exist (header, 32 quants each); every token has pair p; unaligned loads.
        let (w0, w1) = (w.as_ptr().add(2 * bytes * p), w.as_ptr().add(2 * bytes * p + bytes));
        let (ws, q) = q8_pair::<S16>(w0, w1);
        // sum((y + 128) q) - 128 sum(q) = sum(y q), per lane.
        let start = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, q));
        for t in 0..N {
            let x = xs[t];
            let y = _mm512_loadu_si512(x.q.get_unchecked(p).as_ptr() as *const _);
            let prod = _mm512_dpbusd_epi32(start, y, q);
            let scale = _mm512_mul_ps(ws, _mm512_loadu_ps(x.d.get_unchecked(p).as_ptr()));
            acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(prod), acc[t]);
        }
    }
    acc.map(|a| _mm512_reduce_add_ps(a))
}

/// `N` dot products of one weight row against paired activations.
unsafe fn tile<const N: usize>(format: Format, w: &[u8], xs: [&Pairs; N]) -> [f32; N] {
    match format {
        Format::Q4_1 => dot_pairs_q4::<N, false>(w, xs),
        Format::Q4F => dot_pairs_q4::<N, true>(w, xs),
        Format::Q8_0 => dot_pairs_q8::<N, false>(w, xs),
        Format::Q8S => dot_pairs_q8::<N, true>(w, xs),
    }
}

/// One weight row against every token (tiles of 8 and 4, then one by one).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VNNI, AVX2, FMA and F16C; every `Pairs` was made from a row of as many blocks as `w`
/// holds (an even number), with `Pairs::for_format(format)`.
#[inline(never)]
pub(super) unsafe fn row_dots_pairs(format: Format, w: &[u8], xs: &[Pairs], out: &mut [f32]) {
    let mut t = 0;
    while t + 8 <= xs.len() {
        out[t..t + 8].copy_from_slice(&tile::<8>(format, w, std::array::from_fn(|i| &xs[t + i])));
        t += 8;
    }
    if t + 4 <= xs.len() {
        out[t..t + 4].copy_from_slice(&tile::<4>(format, w, std::array::from_fn(|i| &xs[t + i])));
        t += 4;
    }
    for (o, x) in out[t..].iter_mut().zip(&xs[t..]) {
        *o = tile::<1>(format, w, [x])[0];
    }
}
