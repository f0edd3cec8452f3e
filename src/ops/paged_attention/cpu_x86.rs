//! AVX-512 versions of cpu.rs's two inner loops, for head sizes that are a multiple of 16. The portable loops
//! sum each dot product in one chain of 16 lanes (an add waits for the one before it) and keep the output rows in
//! memory; here the keys come transposed, so 16 keys' scores fill one vector and 4 query rows by 32 keys are
//! summed side by side with no lanes to add across, and the output is summed in registers (8 query rows by 16
//! values at a time) before it is stored once. Each value is still summed in an
//! order fixed by its own query and position (fused multiply-adds over the head in order, then the lanes), so
//! the numbers do not depend on how many queries or positions share a call: the batch invariance cpu.rs
//! promises holds here too (tested by `invariance`).

use std::arch::x86_64::*;

/// Whether this CPU runs these loops (AVX-512 F, unless `TEAL_CPU_KERNEL` asks for a lower kernel); checked once.
pub(super) fn available(hd: usize) -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *AVX512.get_or_init(|| {
        let lower = matches!(std::env::var("TEAL_CPU_KERNEL").ok().as_deref(), Some("scalar" | "avx2"));
        std::is_x86_feature_detected!("avx512f") && !lower
    });
    on && hd.is_multiple_of(16)
}

/// Scores of `R` query rows (at `q`, `hd` apart) against `16 * B` key columns from `i` (`kt` transposed, `stride`
/// per head value), stored to `s` (`c` per row) up to column `c`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn score_block<const R: usize, const B: usize>(
    s: *mut f32,
    q: *const f32,
    kt: *const f32,
    i: usize,
    (c, hd, stride): (usize, usize, usize),
) {
    // SAFETY: the caller's `R` query rows, `R` score rows of `c`, and `hd` key rows of `stride >= i + 16 B` are
    // in bounds; unaligned loads; stores masked to the `c` columns.
    let mut acc = [[_mm512_setzero_ps(); B]; R];
    for d in 0..hd {
        let mut k = [_mm512_setzero_ps(); B];
        for (b, kv) in k.iter_mut().enumerate() {
            *kv = _mm512_loadu_ps(kt.add(d * stride + i + 16 * b));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let qv = _mm512_set1_ps(*q.add(r * hd + d));
            for (a, kv) in row.iter_mut().zip(&k) {
                *a = _mm512_fmadd_ps(qv, *kv, *a);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (b, a) in row.iter().enumerate() {
            let at = i + 16 * b;
            let mask = if at + 16 <= c { u16::MAX } else { (1u16 << (c.saturating_sub(at)).min(15)) - 1 };
            _mm512_mask_storeu_ps(s.add(r * c + at), mask, *a);
        }
    }
}

/// `s[j][i] = q_j . k_i` for the query rows `qs` (`hd` each) and `c` keys stored transposed (`kt[d * stride + i]`;
/// columns up to the next multiple of 16 readable, whatever they hold). Each score is summed over the head in
/// order by fused multiply-adds (no lanes to add across), 4 query rows by 32 keys at a time.
///
/// # Safety
/// The CPU has AVX-512 F (`available`).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scores_t(s: &mut [f32], qs: &[f32], kt: &[f32], (c, hd, stride): (usize, usize, usize)) {
    let m = qs.len() / hd;
    assert!(s.len() >= m * c && stride >= c.next_multiple_of(16) && kt.len() >= hd * stride, "score buffers");
    let dims = (c, hd, stride);
    let mut j = 0;
    while j < m {
        let (sp, qp) = (s[j * c..].as_mut_ptr(), qs[j * hd..].as_ptr());
        let mut i = 0;
        if j + 4 <= m {
            while i + 32 <= c.next_multiple_of(16) {
                score_block::<4, 2>(sp, qp, kt.as_ptr(), i, dims);
                i += 32;
            }
            if i < c {
                score_block::<4, 1>(sp, qp, kt.as_ptr(), i, dims);
            }
            j += 4;
        } else {
            while i < c {
                score_block::<1, 1>(sp, qp, kt.as_ptr(), i, dims);
                i += 16;
            }
            j += 1;
        }
    }
}

/// `R` output rows at `out` (`hd` apart) `+= sum_i p[r][i] v_i` over `c` value rows, 16 values at a time.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows<const R: usize>(out: *mut f32, p: *const f32, vc: *const f32, (c, hd): (usize, usize)) {
    for d in (0..hd).step_by(16) {
        // SAFETY: the caller's `R` output rows and `R` weight rows of `c`, and `c` value rows, are in bounds.
        let mut acc = [_mm512_setzero_ps(); R];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm512_loadu_ps(out.add(r * hd + d));
        }
        for i in 0..c {
            let v = _mm512_loadu_ps(vc.add(i * hd + d));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*p.add(r * c + i)), v, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * hd + d), *a);
        }
    }
}

/// `out[j] += sum_i p[j][i] v_i` (cpu.rs's `accumulate`), every element summed over `i` in order.
///
/// # Safety
/// The CPU has AVX-512 F (`available`); `hd` is a multiple of 16; `p` holds `c` weights per output row and `vc`
/// at least `c` value rows.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn accumulate(out: &mut [f32], p: &[f32], vc: &[f32], (c, hd): (usize, usize)) {
    let m = out.len() / hd;
    assert!(p.len() >= m * c && vc.len() >= c * hd, "attention buffers too small");
    let mut j = 0;
    while j + 8 <= m {
        rows::<8>(out[j * hd..].as_mut_ptr(), p[j * c..].as_ptr(), vc.as_ptr(), (c, hd));
        j += 8;
    }
    while j < m {
        rows::<1>(out[j * hd..].as_mut_ptr(), p[j * c..].as_ptr(), vc.as_ptr(), (c, hd));
        j += 1;
    }
}
