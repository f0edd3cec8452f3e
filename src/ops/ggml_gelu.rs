//! tanh-GELU as ggml computes it on the CPU (`GGML_GELU_FP16`): the gate rounded to f16 and looked up in a table
//! of f16 results, inputs beyond +-10 passing through (>= 10) or giving 0 (<= -10). GGUF models run it so their
//! numbers track llama.cpp's: the f16 rounding (a relative 2^-11, below the 8-bit quantization the next matmul
//! applies) moved greedy choices at near ties. A table lookup is also cheaper than a tanh; with AVX-512 sixteen
//! values are converted and gathered at once.

/// For every f16 bit pattern, `gelu(x)` computed in f32 (ggml's formula) and rounded to f16, as f32.
fn table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                let g = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
                half::f16::from_f32(g).to_f32()
            })
            .collect()
    })
}

/// `gelu(gate) * up` elementwise into `out`, ggml's way.
pub fn gated(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let table = table();
    let n = out.len().min(gate.len()).min(up.len());
    #[cfg(target_arch = "x86_64")]
    let done = if avx512() {
        // SAFETY: AVX-512 F was detected; the loop reads and writes below `n`, within all three slices.
        unsafe { x86::gated(table, &gate[..n], &up[..n], &mut out[..n]) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for ((o, &g), &u) in out[done..n].iter_mut().zip(&gate[done..n]).zip(&up[done..n]) {
        let a = if g <= -10.0 {
            0.0
        } else if g >= 10.0 {
            g
        } else {
            table[half::f16::from_f32(g).to_bits() as usize]
        };
        *o = a * u;
    }
}

/// Whether the AVX-512 loop runs (AVX-512 F and F16C, unless `TEAL_CPU_KERNEL` asks for a lower kernel).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let lower = matches!(std::env::var("TEAL_CPU_KERNEL").ok().as_deref(), Some("scalar" | "avx2"));
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("f16c") && !lower
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The whole multiples of 16 of `gated`; returns how many values it wrote. The table has 65536 entries, so
    /// every gathered index (a zero-extended f16) is inside it.
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn gated(table: &[f32], gate: &[f32], up: &[f32], out: &mut [f32]) -> usize {
        debug_assert_eq!(table.len(), 1 << 16);
        let n = gate.len() / 16 * 16;
        let (lo, hi) = (_mm512_set1_ps(-10.0), _mm512_set1_ps(10.0));
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 <= n <= every slice's length (the caller's slices are all of one length).
            let g = _mm512_loadu_ps(gate.as_ptr().add(i));
            let u = _mm512_loadu_ps(up.as_ptr().add(i));
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(g);
            let a = _mm512_i32gather_ps::<4>(_mm512_cvtepu16_epi32(h), table.as_ptr());
            let a = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(g, hi), a, g);
            let a = _mm512_maskz_mov_ps(!_mm512_cmp_ps_mask::<_CMP_LE_OQ>(g, lo), a);
            _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(a, u));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector loop and the scalar one give the same bits, the cut-offs included; the table is the formula
    /// rounded to f16.
    #[test]
    fn the_table_gelu_is_the_f16_rounded_formula_and_both_loops_agree() {
        let gate: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) * 0.0091 + 0.0003).chain([f32::NAN, 1e30]).collect();
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut got = vec![0f32; gate.len()];
        gated(&gate, &up, &mut got);
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&got) {
            let want = if g.is_nan() {
                f64::NAN
            } else if g <= -10.0 {
                0.0
            } else if g >= 10.0 {
                g as f64 * u as f64
            } else {
                let x = g as f64;
                0.5 * x * (1.0 + (0.797_884_560_802_865_4 * x * (1.0 + 0.044_715 * x * x)).tanh()) * u as f64
            } as f32;
            // f16 keeps 11 bits; the gate's own rounding to f16 moves the result by up to |gelu'| * 2^-11 |g|.
            let tol = 2e-3 * (want.abs() + g.abs() * u) + 1e-6;
            assert!(
                o.is_nan() == want.is_nan() && (o.is_nan() || (o - want).abs() <= tol),
                "gelu({g}) * {u}: {o} vs {want}"
            );
        }
        let mut scalar = vec![0f32; gate.len()];
        for ((o, &g), &u) in scalar.iter_mut().zip(&gate).zip(&up) {
            let a = if g <= -10.0 {
                0.0
            } else if g >= 10.0 {
                g
            } else {
                table()[half::f16::from_f32(g).to_bits() as usize]
            };
            *o = a * u;
        }
        let bits = |v: &[f32]| v.iter().map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() }).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&scalar));
    }
}
