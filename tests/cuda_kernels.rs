//! teal's CUDA kernels against their CPU reference implementations (the `cpu_fwd` of the same custom ops), on fresh
//! random inputs each run (the seed is printed so a failure can be replayed with TEAL_TEST_SEED), and whole models
//! on cuda:0 against the CPU. Built only with `--features cuda`; run on a machine with a GPU:
//! `cargo test --release --features cuda --test cuda_kernels`.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::direct::greedy;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use teal::models::{load, LoadOptions};
use teal::ops::paged_attention::{paged_attention_windowed, write_kv, AttnMeta};

fn gpu() -> Device {
    teal::device::parse_device("cuda:0").expect("these tests need a CUDA GPU (cuda:0)")
}

fn rng() -> StdRng {
    let seed = std::env::var("TEAL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (TEAL_TEST_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

/// One attention shape and a ragged batch: per sequence, (positions already cached, new tokens this step).
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    seqs: Vec<(usize, usize)>,
    /// Local attention (Gemma's sliding-window layers): each query sees its last `window` positions.
    window: Option<usize>,
}

/// Writes each sequence's cached positions, then runs one step (write the new keys/values, attend) on `dev`.
/// Returns the attention output and both pools, on the CPU.
fn step(dev: &Device, c: &Case, data: &Inputs) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let row = c.kv_heads * c.head_dim;
    let kp = Tensor::zeros((data.pool_slots, c.kv_heads, c.head_dim), DType::F32, dev).unwrap();
    let vp = Tensor::zeros((data.pool_slots, c.kv_heads, c.head_dim), DType::F32, dev).unwrap();
    for (meta, k, v) in [(&data.cached, &data.cached_k, &data.cached_v), (&data.step, &data.step_k, &data.step_v)] {
        let n = meta.num_tokens();
        if n == 0 {
            continue;
        }
        let meta = Arc::new(meta.clone());
        write_kv(&kp, &Tensor::from_slice(k, (n, c.kv_heads, c.head_dim), dev).unwrap(), &meta).unwrap();
        write_kv(&vp, &Tensor::from_slice(v, (n, c.kv_heads, c.head_dim), dev).unwrap(), &meta).unwrap();
    }
    let n = data.step.num_tokens();
    let q = Tensor::from_slice(&data.q, (n, c.heads, 1, c.head_dim), dev).unwrap();
    let out = paged_attention_windowed(&q, &kp, &vp, &Arc::new(data.step.clone()), c.kv_heads, c.window).unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&kp).len(), data.pool_slots * row);
    (flat(&out), flat(&kp), flat(&vp))
}

struct Inputs {
    pool_slots: usize,
    cached: AttnMeta,
    step: AttnMeta,
    cached_k: Vec<f32>,
    cached_v: Vec<f32>,
    step_k: Vec<f32>,
    step_v: Vec<f32>,
    q: Vec<f32>,
}

/// Random keys, values and queries, and each sequence's blocks drawn at random from a shuffled pool.
fn inputs(c: &Case, rng: &mut StdRng) -> Inputs {
    let bs = c.block_size;
    let needs: Vec<usize> = c.seqs.iter().map(|(a, b)| (a + b).div_ceil(bs)).collect();
    let blocks = needs.iter().sum::<usize>() + 3;
    let mut free: Vec<u32> = (0..blocks as u32).collect();
    free.shuffle(rng);
    let tables: Vec<Vec<u32>> = needs.iter().map(|&k| free.split_off(free.len() - k)).collect();
    let slot = |s: usize, p: usize| tables[s][p / bs] * bs as u32 + (p % bs) as u32;
    let (mut cached, mut step) = (AttnMeta::default(), AttnMeta::default());
    for m in [&mut cached, &mut step] {
        m.block_tables = tables.clone();
        m.block_size = bs;
    }
    for (s, &(old, new)) in c.seqs.iter().enumerate() {
        for (m, range) in [(&mut cached, 0..old), (&mut step, old..old + new)] {
            for p in range {
                m.token_seq.push(s as u32);
                m.token_pos.push(p as u32);
                m.slot_mapping.push(slot(s, p));
            }
        }
    }
    let row = c.kv_heads * c.head_dim;
    let (nc, ns) = (cached.num_tokens(), step.num_tokens());
    Inputs {
        pool_slots: blocks * bs,
        cached_k: random(rng, nc * row),
        cached_v: random(rng, nc * row),
        step_k: random(rng, ns * row),
        step_v: random(rng, ns * row),
        q: random(rng, ns * c.heads * c.head_dim),
        cached,
        step,
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check(c: Case, rng: &mut StdRng) {
    let data = inputs(&c, rng);
    let (out_cpu, k_cpu, v_cpu) = step(&Device::Cpu, &c, &data);
    let (out_gpu, k_gpu, v_gpu) = step(&gpu(), &c, &data);
    assert_eq!(k_cpu, k_gpu, "write_kv: key pools differ");
    assert_eq!(v_cpu, v_gpu, "write_kv: value pools differ");
    let d = max_diff(&out_cpu, &out_gpu);
    assert!(d < 1e-4, "paged attention: max difference {d} (heads {}, head_dim {})", c.heads, c.head_dim);
}

#[test]
fn decode_batch_matches_the_cpu_reference() {
    let mut rng = rng();
    // SmolLM2-135M's attention: 9 heads over 3 kv heads, head_dim 64; 8 sequences decoding at random lengths.
    let seqs = (0..8).map(|_| (rng.random_range(1..300), 1)).collect();
    check(Case { heads: 9, kv_heads: 3, head_dim: 64, block_size: 16, seqs, window: None }, &mut rng);
}

#[test]
fn ragged_prefill_and_decode_match_the_cpu_reference() {
    let mut rng = rng();
    // A fresh prompt, a chunked prefill continuing a cached one, and decodes, in one step.
    let seqs = vec![(0, 37), (50, 64), (rng.random_range(1..200), 1), (rng.random_range(1..200), 1)];
    check(Case { heads: 8, kv_heads: 4, head_dim: 8, block_size: 4, seqs, window: None }, &mut rng);
}

#[test]
fn head_dims_that_are_not_a_multiple_of_32_and_the_largest_supported() {
    let mut rng = rng();
    for head_dim in [48, 128, 256] {
        let seqs = vec![(rng.random_range(0..100), 5), (rng.random_range(1..100), 1)];
        check(Case { heads: 4, kv_heads: 1, head_dim, block_size: 16, seqs, window: None }, &mut rng);
    }
}

#[test]
fn long_sequence_matches_the_cpu_reference() {
    let mut rng = rng();
    check(
        Case { heads: 4, kv_heads: 2, head_dim: 64, block_size: 16, seqs: vec![(4000, 1), (0, 3)], window: None },
        &mut rng,
    );
}

#[test]
fn one_long_decode_is_split_across_blocks_and_merged() {
    let mut rng = rng();
    // Batch 1 at 9,000 positions: 19 splits of the decode kernel, merged (decode_splits in meta.rs).
    let seqs = vec![(9000, 1)];
    check(Case { heads: 9, kv_heads: 3, head_dim: 64, block_size: 16, seqs, window: None }, &mut rng);
    // Uneven lengths in one split launch: the short sequences' later splits are empty.
    let seqs = vec![(3000, 1), (5, 1), (700, 1)];
    check(Case { heads: 4, kv_heads: 2, head_dim: 128, block_size: 16, seqs, window: None }, &mut rng);
}

#[test]
fn prefill_runs_share_tiles_across_their_queries() {
    let mut rng = rng();
    // Runs of 16 and a remainder, continuing a cached prefix, beside decodes; head_dim 256 (Gemma 3).
    let seqs = vec![(0, 45), (33, 70), (rng.random_range(1..500), 1)];
    check(Case { heads: 4, kv_heads: 1, head_dim: 256, block_size: 16, seqs, window: None }, &mut rng);
}

#[test]
fn sliding_window_layers_match_the_cpu_reference() {
    let mut rng = rng();
    for window in [1, 7, 512] {
        // Decodes past the window (split and not), a prefill crossing it, and a short one inside it.
        let seqs = vec![(2000, 1), (600, 40), (3, 5), (rng.random_range(1..100), 1)];
        check(Case { heads: 4, kv_heads: 1, head_dim: 256, block_size: 16, seqs, window: Some(window) }, &mut rng);
    }
}

#[test]
fn out_of_range_metadata_is_refused_before_any_launch() {
    let dev = gpu();
    let pool = Tensor::zeros((32, 2, 8), DType::F32, &dev).unwrap();
    let src = Tensor::ones((1, 2, 8), DType::F32, &dev).unwrap();
    let meta = Arc::new(AttnMeta {
        token_seq: vec![0],
        token_pos: vec![0],
        slot_mapping: vec![32],
        block_tables: vec![vec![0]],
        block_size: 16,
        ..Default::default()
    });
    let err = write_kv(&pool, &src, &meta).unwrap_err().to_string();
    assert!(err.contains("outside the pool"), "{err}");
    // The device still works afterwards.
    assert_eq!(pool.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

/// Greedy tokens and first logits of a model on cuda:0 (f32) against the CPU.
fn same_on_gpu(path: &std::path::Path) {
    let prompt = "Once upon a time, there was a little robot who";
    let run = |device: Device| {
        let m = load(path, &LoadOptions { device, dtype: Some(DType::F32), share: None }).unwrap();
        let ids = m.tokenizer.encode(prompt, true).unwrap();
        greedy(&m, &ids, 24).unwrap()
    };
    let (l_cpu, t_cpu) = run(Device::Cpu);
    let (l_gpu, t_gpu) = run(gpu());
    let d = max_diff(&l_cpu, &l_gpu);
    eprintln!("{}: max logit difference {d}", path.display());
    assert_eq!(t_cpu, t_gpu, "greedy tokens differ");
    assert!(d < 1e-3, "logits differ by {d}");
}

#[test]
fn stories260k_on_cuda_matches_the_cpu() {
    same_on_gpu(&common::stories_dir());
}

#[test]
fn smollm2_on_cuda_matches_the_cpu() {
    same_on_gpu(&common::smollm_path());
}
