//! CPU attention for a run of new tokens of one sequence (one token in decode, up to `RUN` in a prefill chunk):
//! the run's queries (every query head sharing one kv head) against the sequence's positions in chunks of
//! `CHUNK`, each chunk copied out of the pool, scored and summed with flash attention's running max and sum. A
//! key or value row read from the pool serves every query of the run; positions before the earliest query's
//! window are never read. Every value is summed in an order fixed by its own query and position alone, so a
//! token's numbers do not depend on how its prompt was split into steps or what shared its batch (a blocked GEMM
//! was 10% faster but its order follows the shapes: scoring a greedy answer then disagreed with generating it).
//! Against the per-position dot products this replaced (2-core AMD EPYC, docs/benchmarks.md): a third of a Gemma
//! 3 prefill became a tenth.

use super::PagedAttention;
use crate::ops::activation::exp;

#[cfg(target_arch = "x86_64")]
use super::cpu_x86;

/// Positions per chunk: the chunk's keys, values and scores stay in L2.
const CHUNK: usize = 128;

/// `s[j][i] = q_j . k_i` for the `m` query rows and `c` chunk rows. Each dot product is summed in one fixed order
/// (16 lanes, then the lanes), so a query's numbers do not depend on which other queries or how many positions
/// share the call: a prompt read whole, in chunks or token by token gets the same bits (a blocked GEMM's order
/// depends on the shapes).
#[inline(always)]
fn scores(s: &mut [f32], qs: &[f32], kc: &[f32], (c, hd): (usize, usize)) {
    for (q, row) in qs.chunks_exact(hd).zip(s.chunks_exact_mut(c)) {
        for (sv, k) in row.iter_mut().zip(kc.chunks_exact(hd)) {
            *sv = dot(q, k);
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `out[j] += sum_i p[j][i] v_i`, four query rows at a time (each value row read once for the four), every
/// element summed over `i` in order.
#[inline(always)]
fn accumulate(out: &mut [f32], p: &[f32], vc: &[f32], (c, hd): (usize, usize)) {
    let mut rows = out.chunks_exact_mut(4 * hd);
    let mut weights = p.chunks_exact(4 * c);
    for (o, w) in (&mut rows).zip(&mut weights) {
        let (o01, o23) = o.split_at_mut(2 * hd);
        let ((o0, o1), (o2, o3)) = (o01.split_at_mut(hd), o23.split_at_mut(hd));
        for (i, v) in vc.chunks_exact(hd).take(c).enumerate() {
            let (w0, w1, w2, w3) = (w[i], w[c + i], w[2 * c + i], w[3 * c + i]);
            for d in 0..hd {
                o0[d] += w0 * v[d];
                o1[d] += w1 * v[d];
                o2[d] += w2 * v[d];
                o3[d] += w3 * v[d];
            }
        }
    }
    for (o, w) in rows.into_remainder().chunks_exact_mut(hd).zip(weights.remainder().chunks_exact(c)) {
        for (&wi, v) in w.iter().zip(vc.chunks_exact(hd)) {
            o.iter_mut().zip(v).for_each(|(o, v)| *o += wi * v);
        }
    }
}

/// Whether cpu_x86.rs's loops run for heads of `hd` values on this CPU.
fn vector_loops(hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return cpu_x86::available(hd);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = hd;
        false
    }
}

/// `scores`, with cpu_x86.rs's loop where `fast` (`vector_loops`) says it runs (`kc` then holds the keys
/// transposed, CHUNK apart).
#[inline(always)]
fn scores_on(fast: bool, s: &mut [f32], qs: &[f32], kc: &[f32], dims: (usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is `vector_loops(hd)`: AVX-512 F; `run` stores the keys transposed, CHUNK per value.
        return unsafe { cpu_x86::scores_t(s, qs, kc, (dims.0, dims.1, CHUNK)) };
    }
    let _ = fast;
    scores(s, qs, &kc[..dims.0 * dims.1], dims)
}

/// `accumulate`, with cpu_x86.rs's loop where `fast` (`vector_loops`) says it runs.
#[inline(always)]
fn accumulate_on(fast: bool, out: &mut [f32], p: &[f32], vc: &[f32], dims: (usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `scores_on`.
        return unsafe { cpu_x86::accumulate(out, p, vc, dims) };
    }
    let _ = fast;
    accumulate(out, p, vc, dims)
}

impl PagedAttention {
    /// Attention of the run's `len` tokens starting at `start` for every query head of kv head `kvh`.
    /// Returns `[token][group head][hd]`.
    pub(super) fn run(&self, q: &[f32], kp: &[f32], vp: &[f32], run: (usize, usize), kvh: usize) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if crate::ops::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { self.run_avx2(q, kp, vp, run, kvh) };
        }
        self.run_portable(q, kp, vp, run, kvh)
    }

    /// `run_portable` compiled for AVX2+FMA: the portable loops (inlined) in eight lanes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, q: &[f32], kp: &[f32], vp: &[f32], run: (usize, usize), kvh: usize) -> Vec<f32> {
        self.run_portable(q, kp, vp, run, kvh)
    }

    #[inline(always)]
    fn run_portable(&self, q: &[f32], kp: &[f32], vp: &[f32], (start, len): (usize, usize), kvh: usize) -> Vec<f32> {
        let (hd, nh, nkv, bs) = (self.head_dim, self.num_heads, self.num_kv_heads, self.meta.block_size);
        let group = nh / nkv;
        let m = len * group;
        let table = &self.meta.block_tables[self.meta.token_seq[start] as usize];
        let first = self.meta.token_pos[start] as usize;
        let window = self.window.unwrap_or(usize::MAX);
        let fast = vector_loops(hd);
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
        // Chunks start at multiples of CHUNK (positions before `lo` are masked for every query of the run), so a
        // query meets the same chunks and lanes whichever run it is in.
        for c0 in (lo / CHUNK * CHUNK..hi).step_by(CHUNK) {
            let c = CHUNK.min(hi - c0);
            for i in 0..c {
                // check_meta: every position up to the run's last has a block in the table.
                let p = c0 + i;
                let off = ((table[p / bs] as usize * bs + p % bs) * nkv + kvh) * hd;
                if fast {
                    // Transposed for cpu_x86::scores_t: head value d of every position in one row of CHUNK.
                    for (d, &v) in kp[off..off + hd].iter().enumerate() {
                        kc[d * CHUNK + i] = v;
                    }
                } else {
                    kc[i * hd..][..hd].copy_from_slice(&kp[off..off + hd]);
                }
                vc[i * hd..][..hd].copy_from_slice(&vp[off..off + hd]);
            }
            scores_on(fast, &mut s[..m * c], &qs, &kc, (c, hd));
            for (j, row) in s[..m * c].chunks_mut(c).enumerate() {
                let at = first + j / group;
                self.softmax_step(row, (c0, at, window), (&mut max[j], &mut sum[j]), &mut out[j * hd..][..hd]);
            }
            accumulate_on(fast, &mut out, &s[..m * c], &vc[..c * hd], (c, hd));
        }
        for (row, total) in out.chunks_mut(hd).zip(&sum) {
            row.iter_mut().for_each(|o| *o /= total);
        }
        out
    }

    /// One chunk of one query's scores (positions `c0..`, query at position `at`) into probabilities relative to
    /// the running max, rescaling the query's running sum and output when the max grows.
    #[inline(always)]
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
        // Branch-free loops that vectorize (the exp of a masked -inf is clamped, then replaced by 0). The sum goes
        // in 16 lanes by position (a chunk's tail too), so how far the chunk reaches (the run's last query) only
        // adds zeros: the order is fixed by the query.
        for v in row.iter_mut() {
            let e = exp(*v - new_max);
            *v = if *v == f32::NEG_INFINITY { 0.0 } else { e };
        }
        let mut lanes = [0f32; 16];
        for c in row.chunks(16) {
            lanes.iter_mut().zip(c).for_each(|(l, v)| *l += v);
        }
        let chunk_sum = lanes.iter().sum::<f32>();
        if correction != 1.0 {
            out.iter_mut().for_each(|o| *o *= correction);
        }
        *sum = *sum * correction + chunk_sum;
        *max = new_max;
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::PagedAttention;

    /// The AVX2+FMA copy of the run computes the portable loops' exact bits: head sizes on cpu_x86.rs's
    /// vector path (64) and off it (24), with and without a window, a run that starts mid-sequence.
    #[test]
    fn the_avx2_copy_gives_the_portable_loops_bits() {
        if !crate::ops::avx2_fma() {
            return;
        }
        let (t, nh, nkv, bs) = (300usize, 4usize, 2usize, 8usize);
        let mut seed = 7u64;
        let mut rand = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        };
        for hd in [64usize, 24] {
            let q: Vec<f32> = (0..t * nh * hd).map(|_| rand()).collect();
            let slots = t.div_ceil(bs) * bs;
            let kp: Vec<f32> = (0..slots * nkv * hd).map(|_| rand()).collect();
            let vp: Vec<f32> = (0..slots * nkv * hd).map(|_| rand()).collect();
            let table: Vec<u32> = (0..t.div_ceil(bs) as u32).rev().collect();
            let meta = super::super::one_sequence(&table, bs, (0, t));
            for window in [None, Some(100)] {
                let op = PagedAttention {
                    meta: meta.clone(),
                    num_heads: nh,
                    num_kv_heads: nkv,
                    head_dim: hd,
                    scale: 0.125,
                    window,
                };
                for (run, kvh) in [((0, 32), 0), ((250, 32), 1), ((299, 1), 0)] {
                    // SAFETY: avx2_fma() said the CPU has AVX2 and FMA.
                    let fast = unsafe { op.run_avx2(&q, &kp, &vp, run, kvh) };
                    let plain = op.run_portable(&q, &kp, &vp, run, kvh);
                    let differ = fast.iter().zip(&plain).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    assert_eq!(differ, 0, "hd {hd}, window {window:?}, run {run:?}: values that differ");
                }
            }
        }
    }
}
