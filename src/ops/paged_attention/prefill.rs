//! CPU attention for a run of many new tokens of one sequence (a prefill chunk): the run's queries (every query
//! head sharing one kv head) against the sequence's positions in chunks of `CHUNK`, each chunk two matrix products
//! (the `gemm` crate, on the calling thread) and flash attention's running max and sum. A key or value row read
//! from the pool serves every query of the run, where the decode tile (mod.rs) serves a few; with Gemma's 256-wide
//! heads the decode tile was a third of a prefill. Positions before the earliest query's window are never read.

use super::PagedAttention;
use crate::ops::activation::exp;
use gemm::Parallelism;

/// Positions per chunk: the chunk's keys, values and scores stay in L2.
const CHUNK: usize = 128;

/// `C[m, n] (+)= A[m, k] B[k, n]`, row-major slices, B read through `(row stride, column stride)`.
fn matmul(c: &mut [f32], a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize), b_strides: (usize, usize), acc: bool) {
    assert!(c.len() >= m * n && a.len() >= m * k);
    assert!(k == 0 || n == 0 || b.len() > (k - 1) * b_strides.0 + (n - 1) * b_strides.1);
    // SAFETY: the asserts bound every index gemm reads or writes: C's m x n row-major, A's m x k row-major,
    // B's (k - 1) * rs + (n - 1) * cs; the three slices do not overlap (one is &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_strides.1 as isize,
            b_strides.0 as isize,
            if acc { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

impl PagedAttention {
    /// Attention of the run's `len` tokens starting at `start` for every query head of kv head `kvh`, like
    /// `tile`. Returns `[token][group head][hd]`.
    pub(super) fn run(&self, q: &[f32], kp: &[f32], vp: &[f32], (start, len): (usize, usize), kvh: usize) -> Vec<f32> {
        let (hd, nh, nkv, bs) = (self.head_dim, self.num_heads, self.num_kv_heads, self.meta.block_size);
        let group = nh / nkv;
        let m = len * group;
        let table = &self.meta.block_tables[self.meta.token_seq[start] as usize];
        let first = self.meta.token_pos[start] as usize;
        let window = self.window.unwrap_or(usize::MAX);
        // Scaled queries, token-major then head: row j is token first + j / group.
        let mut qs = vec![0f32; m * hd];
        for (j, row) in qs.chunks_mut(hd).enumerate() {
            let src = &q[((start + j / group) * nh + kvh * group + j % group) * hd..][..hd];
            row.iter_mut().zip(src).for_each(|(d, s)| *d = s * self.scale);
        }
        let (lo, hi) = ((first + 1).saturating_sub(window), first + len);
        let mut out = vec![0f32; m * hd];
        let (mut max, mut sum) = (vec![f32::NEG_INFINITY; m], vec![0f32; m]);
        let (mut kc, mut vc, mut s) = (vec![0f32; CHUNK * hd], vec![0f32; CHUNK * hd], vec![0f32; m * CHUNK]);
        for c0 in (lo..hi).step_by(CHUNK) {
            let c = CHUNK.min(hi - c0);
            for i in 0..c {
                // check_meta: every position up to the run's last has a block in the table.
                let p = c0 + i;
                let off = ((table[p / bs] as usize * bs + p % bs) * nkv + kvh) * hd;
                kc[i * hd..][..hd].copy_from_slice(&kp[off..off + hd]);
                vc[i * hd..][..hd].copy_from_slice(&vp[off..off + hd]);
            }
            // Scores: S = Q K^T, K read as its transpose (row stride 1, column stride hd).
            matmul(&mut s, &qs, &kc, (m, c, hd), (1, hd), false);
            for (j, row) in s[..m * c].chunks_mut(c).enumerate() {
                let at = first + j / group;
                self.softmax_step(row, (c0, at, window), (&mut max[j], &mut sum[j]), &mut out[j * hd..][..hd]);
            }
            matmul(&mut out, &s[..m * c], &vc, (m, hd, c), (hd, 1), true);
        }
        for (row, total) in out.chunks_mut(hd).zip(&sum) {
            row.iter_mut().for_each(|o| *o /= total);
        }
        out
    }

    /// One chunk of one query's scores (positions `c0..`, query at position `at`) into probabilities relative to
    /// the running max, rescaling the query's running sum and output when the max grows.
    fn softmax_step(
        &self,
        row: &mut [f32],
        (c0, at, window): (usize, usize, usize),
        acc: (&mut f32, &mut f32),
        out: &mut [f32],
    ) {
        let (max, sum) = acc;
        for (i, v) in row.iter_mut().enumerate() {
            let p = c0 + i;
            if p > at || at - p >= window {
                *v = f32::NEG_INFINITY;
            }
        }
        let chunk_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if chunk_max == f32::NEG_INFINITY {
            row.fill(0.0);
            return;
        }
        let new_max = max.max(chunk_max);
        // exp clamps far-negative inputs to a tiny positive value: masked positions are set to exactly 0.
        let correction = if *max == f32::NEG_INFINITY { 0.0 } else { exp(*max - new_max) };
        let mut chunk_sum = 0f32;
        for v in row.iter_mut() {
            *v = if *v == f32::NEG_INFINITY { 0.0 } else { exp(*v - new_max) };
            chunk_sum += *v;
        }
        if correction != 1.0 {
            out.iter_mut().for_each(|o| *o *= correction);
        }
        *sum = *sum * correction + chunk_sum;
        *max = new_max;
    }
}
