//! Attention over the paged KV pool, as candle custom ops so the model code stays device-agnostic:
//! - `write_kv`: stores the new tokens' keys or values at their pool slots (in place, like vLLM's
//!   reshape_and_cache);
//! - `paged_attention`: each new token attends to every earlier position of its own sequence, reading keys and
//!   values from the pool through the sequence's block table (no padding); on the CPU as matrix products over
//!   chunks of positions (cpu.rs).
//!
//! The CPU implementations here are also the reference for the CUDA kernels (kernels/paged_attention.cu, launched
//! from the ops' `cuda_fwd` through cuda.rs; compared in tests/cuda_kernels.rs). meta.rs holds the metadata and
//! its checks. The pool is always f32 and laid out `[slots, kv_heads, head_dim]`, slot = block * block_size +
//! offset.

mod cpu;
#[cfg(target_arch = "x86_64")]
mod cpu_x86;
#[cfg(feature = "cuda")]
pub mod cuda;
mod meta;

pub use meta::{check_meta, AttnMeta, MetaCache};

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp3, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: expected f32, got {:?}", s.dtype()) };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: must be contiguous"),
    }
}

/// In-place write of `src` rows (`[tokens, row]`) into `pool` rows given by the slot mapping.
struct WriteKv {
    meta: Arc<AttnMeta>,
}

impl InplaceOp2 for WriteKv {
    fn name(&self) -> &'static str {
        "teal-write-kv"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let src = contiguous_f32(s2, l2, "kv source")?;
        let CpuStorage::F32(pool) = s1 else { candle_core::bail!("kv pool must be f32") };
        let Some((start, end)) = l1.contiguous_offsets() else { candle_core::bail!("kv pool must be contiguous") };
        let pool = &mut pool[start..end];
        let n = self.meta.slot_mapping.len();
        if n == 0 {
            return Ok(());
        }
        let row = src.len() / n;
        for (t, &slot) in self.meta.slot_mapping.iter().enumerate() {
            let dst = slot as usize * row;
            if dst + row > pool.len() {
                candle_core::bail!("kv slot {slot} outside the pool");
            }
            pool[dst..dst + row].copy_from_slice(&src[t * row..(t + 1) * row]);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        cuda::write_kv(s1, l1, s2, l2, &self.meta)
    }
}

/// Writes the new tokens' keys (or values), shaped `[tokens, kv_heads, .., head_dim]`, into the pool.
pub fn write_kv(pool: &Tensor, src: &Tensor, meta: &Arc<AttnMeta>) -> Result<()> {
    let src = src.contiguous()?;
    pool.inplace_op2(&src, &WriteKv { meta: meta.clone() })
}

struct PagedAttention {
    meta: Arc<AttnMeta>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    /// Local attention: a query at position q sees only positions above q - window.
    window: Option<usize>,
}

/// Most query tokens one work item handles: each key/value row read from the pool serves this many tokens
/// times the query heads that share its kv head (cpu.rs).
const RUN: usize = 32;

impl PagedAttention {
    /// Runs of up to `RUN` consecutive new tokens of the same sequence: `(first token, count)`.
    fn tiles(&self) -> Vec<(usize, usize)> {
        meta::runs(&self.meta, RUN)
    }
}

impl CustomOp3 for PagedAttention {
    fn name(&self) -> &'static str {
        "teal-paged-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(s1, l1, "query")?;
        let kp = contiguous_f32(s2, l2, "key pool")?;
        let vp = contiguous_f32(s3, l3, "value pool")?;
        let (nh, hd) = (self.num_heads, self.head_dim);
        let t_count = self.meta.num_tokens();
        if q.len() != t_count * nh * hd {
            candle_core::bail!("query has {} values, expected {}", q.len(), t_count * nh * hd);
        }
        let (nkv, group) = (self.num_kv_heads, nh / self.num_kv_heads);
        if kp.len() != vp.len() || kp.len() % (nkv * hd) != 0 {
            candle_core::bail!("key and value pools must both be [slots, {nkv}, {hd}]");
        }
        check_meta(&self.meta, kp.len() / (nkv * hd))?;
        let work: Vec<((usize, usize), usize)> =
            self.tiles().into_iter().flat_map(|t| (0..nkv).map(move |h| (t, h))).collect();
        let results: Vec<Vec<f32>> = work.par_iter().map(|&(t, h)| self.run(q, kp, vp, t, h)).collect();
        let mut out = vec![0f32; q.len()];
        for (((start, _), kvh), r) in work.iter().zip(&results) {
            for (j, o) in r.chunks(hd).enumerate() {
                let at = ((start + j / group) * nh + kvh * group + j % group) * hd;
                out[at..at + hd].copy_from_slice(o);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((t_count, nh * hd))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = cuda::AttnShape {
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            scale: self.scale,
            window: self.window,
        };
        let out = cuda::paged_attention(s1, l1, s2, l2, s3, l3, &self.meta, &shape)?;
        Ok((out, Shape::from((self.meta.num_tokens(), self.num_heads * self.head_dim))))
    }
}

/// Attention of `q` (`[tokens, heads, 1, head_dim]`, f32) against the pools; returns `[tokens, heads*head_dim]`.
pub fn paged_attention(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    meta: &Arc<AttnMeta>,
    num_kv_heads: usize,
) -> Result<Tensor> {
    paged_attention_windowed(q, k_pool, v_pool, meta, num_kv_heads, None)
}

/// `paged_attention` where each query sees only the last `window` positions (itself included) when one is given.
pub fn paged_attention_windowed(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    meta: &Arc<AttnMeta>,
    num_kv_heads: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    let (_, num_heads, _, head_dim) = q.dims4()?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let op = PagedAttention { meta: meta.clone(), num_heads, num_kv_heads, head_dim, scale, window };
    q.contiguous()?.apply_op3_no_bwd(k_pool, v_pool, &op)
}

/// One sequence's positions `from..to`, block `b` of it in pool block `table[b]` of `bs` slots (for the tests).
#[cfg(test)]
fn one_sequence(table: &[u32], bs: usize, (from, to): (usize, usize)) -> Arc<AttnMeta> {
    Arc::new(AttnMeta {
        token_seq: vec![0; to - from],
        token_pos: (from as u32..to as u32).collect(),
        slot_mapping: (from..to).map(|p| table[p / bs] * bs as u32 + (p % bs) as u32).collect(),
        block_tables: vec![table.to_vec()],
        block_size: bs,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    /// Dense causal attention with repeated kv heads, the textbook formula, as the reference.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, group: usize) -> Tensor {
        reference_windowed(q, k, v, group, usize::MAX)
    }

    /// The same where query i sees only positions j with i - window < j <= i.
    fn reference_windowed(q: &Tensor, k: &Tensor, v: &Tensor, group: usize, window: usize) -> Tensor {
        // q: [T, nh, hd], k/v: [T, nkv, hd]
        let (t, _nh, hd) = q.dims3().unwrap();
        let k = k.repeat_interleave_heads(group);
        let v = v.repeat_interleave_heads(group);
        let q = q.transpose(0, 1).unwrap().contiguous().unwrap();
        let k = k.transpose(0, 1).unwrap().contiguous().unwrap();
        let v = v.transpose(0, 1).unwrap().contiguous().unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j <= i && i - j < window { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let att = att.broadcast_add(&mask).unwrap();
        let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
        att.matmul(&v).unwrap().transpose(0, 1).unwrap().contiguous().unwrap()
    }

    trait Repeat {
        fn repeat_interleave_heads(&self, n: usize) -> Tensor;
    }
    impl Repeat for Tensor {
        fn repeat_interleave_heads(&self, n: usize) -> Tensor {
            let (t, h, d) = self.dims3().unwrap();
            self.unsqueeze(2).unwrap().expand((t, h, n, d)).unwrap().reshape((t, h * n, d)).unwrap()
        }
    }

    #[test]
    fn ragged_batch_of_a_prefill_and_a_decode_matches_each_alone() {
        let dev = Device::Cpu;
        let (nh, nkv, hd, bs) = (4, 2, 8, 4);
        let kp = Tensor::zeros((16 * bs, nkv, hd), DType::F32, &dev).unwrap();
        let vp = Tensor::zeros((16 * bs, nkv, hd), DType::F32, &dev).unwrap();
        // Sequence A: 7 cached positions then 1 new (decode); sequence B: 6 new (prefill). Both in one batch.
        let (ta, tb) = (vec![3u32, 9], vec![12u32, 0]);
        let slot = |t: &[u32], p: usize| t[p / bs] * bs as u32 + (p % bs) as u32;
        let k_all = Tensor::randn(0f32, 1.0, (14, nkv, hd), &dev).unwrap();
        let v_all = Tensor::randn(0f32, 1.0, (14, nkv, hd), &dev).unwrap();
        let q = Tensor::randn(0f32, 1.0, (7, nh, 1, hd), &dev).unwrap();
        let cached = Arc::new(AttnMeta {
            token_seq: vec![0; 7],
            token_pos: (0..7).collect(),
            slot_mapping: (0..7).map(|p| slot(&ta, p)).collect(),
            block_tables: vec![ta.clone()],
            block_size: bs,
            ..Default::default()
        });
        write_kv(&kp, &k_all.narrow(0, 0, 7).unwrap(), &cached).unwrap();
        write_kv(&vp, &v_all.narrow(0, 0, 7).unwrap(), &cached).unwrap();
        let batch = Arc::new(AttnMeta {
            token_seq: vec![0, 1, 1, 1, 1, 1, 1],
            token_pos: vec![7, 0, 1, 2, 3, 4, 5],
            slot_mapping: std::iter::once(slot(&ta, 7)).chain((0..6).map(|p| slot(&tb, p))).collect(),
            block_tables: vec![ta.clone(), tb.clone()],
            block_size: bs,
            ..Default::default()
        });
        write_kv(&kp, &k_all.narrow(0, 7, 7).unwrap(), &batch).unwrap();
        write_kv(&vp, &v_all.narrow(0, 7, 7).unwrap(), &batch).unwrap();
        let got = paged_attention(&q, &kp, &vp, &batch, nkv).unwrap();
        // Reference: sequence A's 8 positions (query = its last), sequence B's 6 positions.
        let qa = Tensor::cat(
            &[Tensor::zeros((7, nh, hd), DType::F32, &dev).unwrap(), q.narrow(0, 0, 1).unwrap().squeeze(2).unwrap()],
            0,
        )
        .unwrap();
        let ra = reference(&qa, &k_all.narrow(0, 0, 8).unwrap(), &v_all.narrow(0, 0, 8).unwrap(), nh / nkv);
        let rb = reference(
            &q.narrow(0, 1, 6).unwrap().squeeze(2).unwrap(),
            &k_all.narrow(0, 8, 6).unwrap(),
            &v_all.narrow(0, 8, 6).unwrap(),
            nh / nkv,
        );
        let want = Tensor::cat(&[ra.narrow(0, 7, 1).unwrap(), rb], 0).unwrap().reshape((7, nh * hd)).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "max diff {diff}");
    }

    #[test]
    fn matches_dense_causal_attention_with_scattered_blocks() {
        check_scattered(None, 5, 8); // decode tiles
        check_scattered(None, 13, 8); // one run of 13: the blocked prefill path
        check_scattered(None, 300, 64); // runs of 32 over three chunks of positions
    }

    #[test]
    fn a_window_limits_each_query_to_its_last_positions() {
        check_scattered(Some(5), 5, 8);
        check_scattered(Some(5), 13, 8);
        check_scattered(Some(150), 300, 64); // windows that start inside a chunk and skip whole ones
    }

    fn check_scattered(window: Option<usize>, t: usize, hd: usize) {
        let dev = Device::Cpu;
        let (nh, nkv, bs) = (6, 2, 4);
        let q = Tensor::randn(0f32, 1.0, (t, nh, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (t, nkv, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (t, nkv, hd), &dev).unwrap();
        // Blocks deliberately out of order (reversed, rotated, some unused) to exercise the block table.
        let blocks = t.div_ceil(bs) as u32 + 3;
        let table: Vec<u32> = (0..blocks).map(|b| (2 * blocks - b - 3) % blocks).take(t.div_ceil(bs)).collect();
        let meta = one_sequence(&table, bs, (0, t));
        let kp = Tensor::zeros((blocks as usize * bs, nkv, hd), DType::F32, &dev).unwrap();
        let vp = Tensor::zeros((blocks as usize * bs, nkv, hd), DType::F32, &dev).unwrap();
        write_kv(&kp, &k, &meta).unwrap();
        write_kv(&vp, &v, &meta).unwrap();
        let got = paged_attention_windowed(&q.unsqueeze(2).unwrap(), &kp, &vp, &meta, nkv, window).unwrap();
        let want =
            reference_windowed(&q, &k, &v, nh / nkv, window.unwrap_or(usize::MAX)).reshape((t, nh * hd)).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "t={t} window={window:?}: max diff {diff}");
    }
}

#[cfg(test)]
mod invariance {
    use super::*;
    use candle_core::{DType, Device};

    /// The attention of positions `from..to` of one sequence whose keys and values are already in the pools.
    fn attend(
        q: &Tensor,
        kv: (&Tensor, &Tensor),
        table: &[u32],
        (from, to): (usize, usize),
        window: Option<usize>,
    ) -> Vec<f32> {
        let bs = 4;
        let meta = one_sequence(table, bs, (from, to));
        let q = q.narrow(0, from, to - from).unwrap().unsqueeze(2).unwrap();
        paged_attention_windowed(&q, kv.0, kv.1, &meta, 2, window).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn a_tokens_attention_does_not_depend_on_how_its_prompt_was_split_into_steps() {
        // Chunked prefill and batch composition must not change a token's numbers (scores of a prompt read whole
        // and read 7 tokens a step are compared bit for bit by the engine's tests).
        let (dev, t, nh, nkv, hd, bs) = (Device::Cpu, 150, 6, 2, 64, 4);
        let q = Tensor::randn(0f32, 1.0, (t, nh, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (t, nkv, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (t, nkv, hd), &dev).unwrap();
        let table: Vec<u32> = (0..t.div_ceil(bs) as u32).rev().collect();
        let all = one_sequence(&table, bs, (0, t));
        let kp = Tensor::zeros((table.len() * bs, nkv, hd), DType::F32, &dev).unwrap();
        let vp = Tensor::zeros((table.len() * bs, nkv, hd), DType::F32, &dev).unwrap();
        write_kv(&kp, &k, &all).unwrap();
        write_kv(&vp, &v, &all).unwrap();
        // Windows too: a window that starts inside a chunk moves with the query.
        for window in [None, Some(50)] {
            let whole = attend(&q, (&kp, &vp), &table, (0, t), window);
            let steps: Vec<f32> =
                (0..t).step_by(7).flat_map(|s| attend(&q, (&kp, &vp), &table, (s, (s + 7).min(t)), window)).collect();
            let one_by_one: Vec<f32> =
                (0..t).flat_map(|s| attend(&q, (&kp, &vp), &table, (s, s + 1), window)).collect();
            let differ = |a: &[f32]| a.iter().zip(&whole).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!((differ(&steps), differ(&one_by_one)), (0, 0), "values that changed with the split, {window:?}");
        }
    }
}
