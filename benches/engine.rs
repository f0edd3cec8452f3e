//! Engine micro-benchmarks: sampling over a real vocabulary, the scheduler's plan, the CPU quantized matmul
//! at batch sizes 1/4/8, and one forward step of SmolLM2 (Q4_1) at decode batch 1 and 8.
//! Run: `cargo bench` (SmolLM2 benches need scripts/fetch-models.sh; they are skipped with a message if the
//! model is absent). Serving numbers (HTTP, concurrency, llama.cpp beside teal) come from
//! scripts/bench-vs-llamacpp.sh; see docs/benchmarks.md.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use teal::engine::request::SamplingParams;
use teal::engine::sampling::Sampler;
use teal::engine::scheduler::{plan, Limits, SeqView};

fn sampling(c: &mut Criterion) {
    // Power-law logits in scrambled order, shaped like an LM's next-token distribution.
    let logits: Vec<f32> = (0..49152u64).map(|i| -3.0 * (((i * 7919) % 49152) as f32 + 1.0).ln()).collect();
    let mut g = c.benchmark_group("sampling_vocab49152");
    for (name, p) in [
        ("greedy", SamplingParams { temperature: 0.0, ..Default::default() }),
        ("temperature", SamplingParams { temperature: 0.8, ..Default::default() }),
        ("top_p_0.9", SamplingParams { temperature: 0.8, top_p: 0.9, ..Default::default() }),
        ("top_k_50_logprobs_5", SamplingParams { top_k: 50, logprobs: Some(5), ..Default::default() }),
    ] {
        let mut s = Sampler::new(Some(1));
        g.bench_function(name, |b| b.iter(|| s.sample(&mut logits.clone(), &p, &[1, 2, 3], 1)));
    }
    g.finish();
}

fn scheduler(c: &mut Criterion) {
    let running: Vec<SeqView> =
        (0..32).map(|i| SeqView { cached: 100 + i, total: 101 + i, blocks: 8, freeable: 8 }).collect();
    let waiting: Vec<SeqView> = (0..64).map(|i| SeqView { cached: 0, total: 50 + i, blocks: 0, freeable: 0 }).collect();
    let lim = Limits { block_size: 16, max_seqs: 64, max_step_tokens: 512 };
    c.bench_function("scheduler_plan_32_running_64_waiting", |b| b.iter(|| plan(&running, &waiting, 300, lim)));
}

fn quant_matmul(c: &mut Criterion) {
    let (rows, cols) = (1536, 576);
    let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
    let m = teal::models::cpu_quant::QuantMatrix::new(
        teal::models::cpu_quant::Format::Q4_1,
        q.data().unwrap().to_vec(),
        rows,
        cols,
    )
    .unwrap();
    let mut g = c.benchmark_group("q4_1_matmul_1536x576");
    for t in [1usize, 4, 8] {
        let x = Tensor::randn(0f32, 1.0, (t, cols), &Device::Cpu).unwrap();
        g.bench_with_input(BenchmarkId::from_parameter(t), &x, |b, x| b.iter(|| m.forward(x).unwrap()));
    }
    g.finish();
}

/// Each GGUF type teal repacks, teal's kernel beside candle's matmul on the same blocks (1, 8 and 64 tokens), at
/// Gemma 3 270M's widths: 640 (not a multiple of 256, as for its Q5_0 and Q8_0 matrices) and 1024 (its Q4_K).
fn gguf_matmuls(c: &mut Criterion) {
    let rows = 1536;
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
        let cols = if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) { 1024 } else { 640 };
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let ours =
            teal::models::cpu_quant::QuantMatrix::from_gguf(dtype, &q.data().unwrap(), rows, cols).unwrap().unwrap();
        let theirs = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        let mut g = c.benchmark_group(format!("{dtype:?}_matmul_{rows}x{cols}"));
        for t in [1usize, 8, 64] {
            let x = Tensor::randn(0f32, 1.0, (t, cols), &Device::Cpu).unwrap();
            g.bench_with_input(BenchmarkId::new("teal", t), &x, |b, x| b.iter(|| ours.forward(x).unwrap()));
            g.bench_with_input(BenchmarkId::new("candle", t), &x, |b, x| {
                b.iter(|| candle_core::Module::forward(&theirs, x).unwrap())
            });
        }
        g.finish();
    }
}

fn model_step(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2");
    if !path.exists() {
        eprintln!("skipping model_step: run scripts/fetch-models.sh for SmolLM2");
        return;
    }
    let opts = teal::models::LoadOptions { device: Device::Cpu, dtype: None, share: None };
    let model = Arc::new(teal::models::load(&path, &opts).unwrap());
    let mut g = c.benchmark_group("smollm2_q4_1_decode_step");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for batch in [1usize, 8] {
        let cfg = model.llama.config();
        let pool =
            teal::engine::kv_cache::KvPool::new(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 4096, 16, &Device::Cpu)
                .unwrap();
        // Each sequence has 64 cached positions and decodes its 65th.
        let tables: Vec<_> = (0..batch)
            .map(|_| {
                let mut t = pool.alloc.table();
                assert!(t.reserve(65));
                t
            })
            .collect();
        let meta = teal::ops::paged_attention::AttnMeta {
            token_seq: (0..batch as u32).collect(),
            token_pos: vec![64; batch],
            slot_mapping: tables.iter().map(|t| t.slot(64)).collect(),
            block_tables: tables.iter().map(|t| t.ids().to_vec()).collect(),
            block_size: 16,
            ..Default::default()
        };
        let input = teal::models::llama::StepInput {
            tokens: (0..batch as u32).map(|i| 100 + i).collect(),
            meta: Arc::new(meta),
            logits_rows: (0..batch as u32).collect(),
        };
        g.bench_with_input(BenchmarkId::from_parameter(batch), &input, |b, input| {
            b.iter(|| model.llama.forward(input, &pool).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = sampling, scheduler, quant_matmul, gguf_matmuls, model_step
}
criterion_main!(benches);
