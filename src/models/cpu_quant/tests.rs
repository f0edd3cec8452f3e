//! The kernels against the scalar reference on random blocks, the repacked layouts against candle's own
//! dequantization of the GGUF blocks, and whole matmuls against the exact product.

use super::scalar::{dequantize_row, dot_scalar, Q8_1};
use super::*;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module};

const FORMATS: [Format; 4] = [Format::Q4_1, Format::Q4F, Format::Q8_0, Format::Q8S];

/// Random blocks of `format` (headers of plausible scales, any quant bytes).
fn random_layout(format: Format, rows: usize, cols: usize, seed: u64) -> QuantMatrix {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut data = vec![];
    for _ in 0..rows * cols / QK {
        let mut scale = || (next() % 2000) as f32 / 1000.0 - 1.0;
        match format {
            Format::Q4_1 => {
                data.extend(half::f16::from_f32(scale() / 8.0).to_le_bytes());
                data.extend(half::f16::from_f32(scale()).to_le_bytes());
            }
            Format::Q8_0 => data.extend(half::f16::from_f32(scale() / 64.0).to_le_bytes()),
            Format::Q4F => data.extend([scale() / 8.0, scale()].iter().flat_map(|v| v.to_le_bytes())),
            Format::Q8S => data.extend([scale() / 64.0, scale() / 64.0].iter().flat_map(|v| v.to_le_bytes())),
        }
        let quants = format.block_bytes() - format.header_bytes();
        data.extend((0..quants).map(|_| next() as u8));
    }
    QuantMatrix::new(format, data, rows, cols).unwrap()
}

fn activations(tokens: usize, cols: usize) -> Vec<Vec<f32>> {
    Tensor::randn(0f32, 1.0, (tokens, cols), &Device::Cpu).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn every_kernel_this_cpu_has_matches_the_scalar_reference() {
    let detected = Isa::detected();
    for format in FORMATS {
        // 288 columns: 9 blocks, so the two-block kernels have an odd block left over; 6 tokens: a tile of 4
        // and two single tokens.
        let m = random_layout(format, 9, 288, 7);
        let xq: Vec<Vec<Q8_1>> = activations(6, 288).iter().map(|r| scalar::quantize_row_for(format, r)).collect();
        for isa in Isa::runnable() {
            for r in 0..9 {
                let mut got = vec![0f32; 6];
                row_dots(isa, format, m.row(r), &xq, &mut got);
                for (t, g) in got.iter().enumerate() {
                    let want = dot_scalar(format, m.row(r), &xq[t]);
                    assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "{isa:?} {format:?}: {g} vs {want}");
                }
            }
        }
        eprintln!("{format:?}: kernels up to {detected:?} checked");
    }
}

/// Each row's blocks, row-major, whatever layout `m` keeps.
fn rows_of(m: &QuantMatrix) -> Vec<Vec<u8>> {
    m.row_major().chunks_exact(m.cols / QK * m.format.block_bytes()).map(<[u8]>::to_vec).collect()
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_row_group_kernels_match_the_scalar_reference() {
    let kernels: Vec<Isa> = Isa::runnable().into_iter().filter(|&i| i >= Isa::Avx2).collect();
    if kernels.is_empty() {
        eprintln!("no AVX2 on this CPU: the row-group kernels cannot run here");
        return;
    }
    for format in FORMATS {
        // 32 rows (two groups), 9 blocks; 13 tokens: a tile of 8, one of 4, and one token alone.
        let plain = random_layout(format, 32, 288, 5);
        let rows = rows_of(&plain);
        let x = activations(13, 288);
        for &isa in &kernels {
            let m = QuantMatrix::for_isa(format, plain.row_major(), 32, 288, isa).unwrap();
            assert!(m.grouped);
            assert_eq!(rows_of(&m), rows, "the group layout turns back into the same blocks");
            let got = m.matmul(&x.concat(), isa);
            for (t, row) in x.iter().enumerate() {
                let xq = scalar::quantize_row_for(format, row);
                for (r, w) in rows.iter().enumerate() {
                    let (g, want) = (got[t * 32 + r], dot_scalar(format, w, &xq));
                    let close = (g - want).abs() <= 1e-4 * want.abs().max(1.0);
                    assert!(close, "{isa:?} {format:?} row {r} token {t}: {g} vs {want}");
                }
                // A token alone (decode) gets the bits it gets in a tile (prefill, batched decode).
                let alone = m.matmul(row, isa);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&alone), bits(&got[t * 32..][..32]), "{isa:?} {format:?} token {t} alone");
            }
        }
    }
}

/// GGUF blocks of `dtype` for a random `[rows, cols]` matrix, quantized by candle.
fn gguf(dtype: GgmlDType, rows: usize, cols: usize) -> QTensor {
    let w = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
    QTensor::quantize(&w, dtype).unwrap()
}

const GGUF_TYPES: [GgmlDType; 6] =
    [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K];

#[test]
fn repacked_weights_are_the_numbers_the_gguf_blocks_encode() {
    for dtype in GGUF_TYPES {
        let q = gguf(dtype, 6, 512);
        let m = QuantMatrix::from_gguf(dtype, q.data().unwrap().as_ref(), 6, 512).unwrap().unwrap();
        assert_eq!(Some(m.format), layout_of(dtype));
        assert_eq!(Some(m.bytes()), repacked_bytes(dtype, 6 * 512));
        let want = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        for (r, want) in want.iter().enumerate() {
            for (g, w) in dequantize_row(m.format, m.row(r)).iter().zip(want) {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{dtype:?} row {r}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn matmuls_of_every_gguf_type_are_as_close_to_the_exact_product_as_candles() {
    for dtype in GGUF_TYPES {
        // 48 rows: three groups of 16 where the CPU takes the group layout.
        let q = gguf(dtype, 48, 256);
        let m = QuantMatrix::from_gguf(dtype, q.data().unwrap().as_ref(), 48, 256).unwrap().unwrap();
        let rows = rows_of(&m);
        let x = Tensor::randn(0f32, 1.0, (7, 256), &Device::Cpu).unwrap();
        let ours = m.forward(&x).unwrap();
        for (t, row) in x.to_vec2::<f32>().unwrap().iter().enumerate() {
            let xq = scalar::quantize_row_for(m.format, row);
            for (r, g) in ours.get(t).unwrap().to_vec1::<f32>().unwrap().iter().enumerate() {
                let want = dot_scalar(m.format, &rows[r], &xq);
                assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "{dtype:?} row {r}: {g} vs {want}");
            }
        }
        // Against the exact product with dequantized weights: both quantize activations to 8 bits and differ
        // only in rounding (K-quants: 256-value activation blocks in both).
        let exact = x.matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap()).unwrap();
        let theirs = candle_core::quantized::QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        let err = |t: &Tensor| (t - &exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = exact.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let (e_ours, e_theirs) = (err(&ours), err(&theirs));
        // A scale per 256 activations (K-quants, as ggml) rounds more coarsely than one per 32.
        let bound = if m.format.k_quant() { 2e-2 } else { 1e-2 };
        assert!(e_ours / scale < bound, "{dtype:?}: relative error {}", e_ours / scale);
        assert!(e_ours <= 2.0 * e_theirs + 1e-3, "{dtype:?}: ours {e_ours} vs candle {e_theirs}");
    }
}

#[test]
fn layouts_without_a_candle_type_leave_as_f32_with_the_same_weights() {
    let q = gguf(GgmlDType::Q6K, 4, 256);
    let m = QuantMatrix::from_gguf(GgmlDType::Q6K, q.data().unwrap().as_ref(), 4, 256).unwrap().unwrap();
    let back = m.to_qtensor(&Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
    let want = q.dequantize(&Device::Cpu).unwrap();
    let diff = (back - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-6, "{diff}");
}

#[test]
fn a_q4_0_scale_whose_minimum_overflows_f16_keeps_it_in_f32() {
    // One Q4_0 block with d = 10000 (so -8 d is beyond f16) and nibbles 0..15.
    let mut block = half::f16::from_f32(10000.0).to_le_bytes().to_vec();
    block.extend((0..16u8).map(|i| i | (15 - i) << 4));
    let m = QuantMatrix::from_gguf(GgmlDType::Q4_0, &block, 1, 32).unwrap().unwrap();
    assert_eq!(m.format, Format::Q4F);
    let w = dequantize_row(m.format, m.row(0));
    assert_eq!(w[0], -80000.0);
    assert_eq!(w[16], 70000.0);
}

#[test]
fn malformed_sizes_are_rejected() {
    assert!(QuantMatrix::new(Format::Q4_1, vec![0; 19], 1, 32).is_err());
    assert!(QuantMatrix::new(Format::Q4_1, vec![0; 20], 1, 31).is_err());
    assert!(QuantMatrix::new(Format::Q8_0, vec![0; 20], 1, 32).is_err());
    assert!(QuantMatrix::from_gguf(GgmlDType::Q4K, &[0; 144], 1, 128).is_err(), "K-quant rows are whole super-blocks");
    assert!(QuantMatrix::from_gguf(GgmlDType::Q6K, &[0; 209], 1, 256).is_err());
    assert!(QuantMatrix::from_gguf(GgmlDType::Q5_0, &[], 0, 0).is_err());
    assert!(QuantMatrix::from_gguf(GgmlDType::Q5_0, &[0; 22], usize::MAX, 32).is_err(), "an overflowing shape");
    assert!(QuantMatrix::from_gguf(GgmlDType::Q5K, &[0; 176], 1, 256).unwrap().is_none(), "Q5_K stays with candle");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_vector_quantizers_give_the_scalar_ones_bits() {
    let detected = Isa::detected();
    if detected < Isa::Avx2 {
        eprintln!("no AVX2 on this CPU: the vector quantizers cannot run here");
        return;
    }
    // Random rows, a zero block, ties at .5 after scaling (127 / 127 * 0.5 steps), and one huge value.
    let mut x = activations(3, 256).concat();
    x[32..64].fill(0.0);
    for (i, v) in x[64..96].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 0.5;
    }
    x[96] = 1e30;
    // Both quantizers: 32 values per scale, and 256 per scale (K-quants), the last group of 64 shorter.
    x.extend(activations(1, 64).concat());
    type Quantizer = fn(&[f32]) -> Vec<Q8_1>;
    type VectorQuantizer = Box<dyn Fn(&[f32]) -> Vec<Q8_1>>;
    // SAFETY (every closure): pushed only where the CPU has what it runs (AVX2, FMA and F16C for the AVX2 copy of
    // the scalar code; AVX-512 F and BW, which VNNI implies, for the AVX-512 ones).
    let mut pairs: Vec<(Quantizer, VectorQuantizer)> = vec![
        (scalar::quantize_row, Box::new(|x| unsafe { x86::quantize_row_for_avx2(Format::Q4_1, x) })),
        (scalar::quantize_row_k, Box::new(|x| unsafe { x86::quantize_row_for_avx2(Format::Q4F, x) })),
    ];
    if detected >= Isa::Avx512Vnni {
        pairs.push((scalar::quantize_row, Box::new(|x| unsafe { x86::quantize_row_avx512(x) })));
        pairs.push((scalar::quantize_row_k, Box::new(|x| unsafe { x86::quantize_row_k_avx512(x) })));
    }
    for (scalar, vector) in pairs {
        let scalar = scalar(&x);
        let vector = vector(&x);
        assert_eq!(scalar.len(), x.len() / 32);
        for (b, (s, v)) in scalar.iter().zip(&vector).enumerate() {
            assert_eq!(
                (s.d.to_bits(), s.s.to_bits(), s.qs, s.sums),
                (v.d.to_bits(), v.s.to_bits(), v.qs, v.sums),
                "block {b}"
            );
        }
    }
}

/// K-quant activations as ggml's Q8_K: one f32 scale `max|x| / 127` for each 256 values, the largest value at
/// +-127, and each value within half a step of its quant.
#[test]
fn k_quant_activations_share_one_scale_per_256_values() {
    let mut x = activations(1, 512).concat();
    x[300] = 9.0;
    let q = scalar::quantize_row_k(&x);
    assert_eq!(q.len(), 16);
    for (g, group) in q.chunks(8).enumerate() {
        let amax = x[g * 256..][..256].iter().fold(0f32, |m, v| m.max(v.abs()));
        for (b, block) in group.iter().enumerate() {
            assert_eq!(block.d.to_bits(), (1.0 / (127.0 / amax)).to_bits(), "group {g} block {b}");
            for (i, &qv) in block.qs.iter().enumerate() {
                let v = x[g * 256 + b * 32 + i];
                assert!((v - qv as f32 * block.d).abs() <= block.d * 0.5 + 1e-6, "value {v} as {qv}");
            }
        }
    }
    assert_eq!(q[9].qs[300 - 256 - 32], 127);
}

/// The embedding lookup from a quantized head: each row dequantized as stored, in the grouped layout too, and an
/// id past the rows (the largest id a request could carry included) an error, not a read past the matrix.
#[test]
fn rows_f32_looks_up_rows_and_refuses_ids_past_the_matrix() {
    let plain = random_layout(Format::Q8_0, 32, 64, 11);
    let rows = rows_of(&plain);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut matrices = vec![plain];
    #[cfg(target_arch = "x86_64")]
    matrices.push(QuantMatrix::for_isa(Format::Q8_0, rows.concat(), 32, 64, Isa::Avx512Vnni).unwrap());
    for m in &matrices {
        let got = m.rows_f32(&[31, 0, 7]).unwrap().to_vec2::<f32>().unwrap();
        for (g, r) in got.iter().zip([31, 0, 7]) {
            assert_eq!(g, &dequantize_row(Format::Q8_0, &rows[r]), "row {r} (grouped: {})", m.grouped);
        }
        for bad in [32, u32::MAX] {
            assert!(m.rows_f32(&[0, bad]).is_err(), "id {bad} of 32 rows");
        }
        assert_eq!(m.rows_f32(&[]).unwrap().dims(), &[0, 64]);
    }
}
