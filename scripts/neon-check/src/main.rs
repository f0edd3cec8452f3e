//! The NEON kernels (src/models/cpu_quant/neon.rs) against the scalar reference (scalar.rs) on random blocks of
//! every layout, as a plain single-threaded program: teal's own tests spawn threads (the test harness, rayon),
//! which the qemu-user of Debian 12 cannot run for binaries of a current Rust, so scripts/check-aarch64.sh runs
//! this under qemu, and `cargo check` over teal for the rest. The kernel files are compiled here as they are.

#[allow(dead_code)]
#[path = "../../../src/models/cpu_quant/layout.rs"]
mod layout;
#[cfg(target_arch = "aarch64")]
#[path = "../../../src/models/cpu_quant/neon.rs"]
mod neon;
#[allow(dead_code)]
#[path = "../../../src/models/cpu_quant/scalar.rs"]
mod scalar;

#[allow(dead_code)]
mod cpu_quant {
    #[cfg(target_arch = "aarch64")]
    use super::neon;
    use super::{layout, scalar};

    use layout::{Format, QK};
    use scalar::Q8_1;

    /// A linear congruential generator (the same as teal's kernel tests).
    pub struct Rng(u64);

    impl Rng {
        pub fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }

        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            (self.next() % 2000) as f32 / 1000.0 - 1.0
        }
    }

    /// A row of `blocks` random blocks of `format`: plausible scales, any quant bytes.
    fn random_row(format: Format, blocks: usize, rng: &mut Rng) -> Vec<u8> {
        let mut data = vec![];
        for _ in 0..blocks {
            match format {
                Format::Q4_1 => {
                    data.extend(half::f16::from_f32(rng.unit() / 8.0).to_le_bytes());
                    data.extend(half::f16::from_f32(rng.unit()).to_le_bytes());
                }
                Format::Q8_0 => data.extend(half::f16::from_f32(rng.unit() / 64.0).to_le_bytes()),
                Format::Q4F => data.extend([rng.unit() / 8.0, rng.unit()].iter().flat_map(|v| v.to_le_bytes())),
                Format::Q8S => data.extend([rng.unit() / 64.0, rng.unit() / 64.0].iter().flat_map(|v| v.to_le_bytes())),
            }
            data.extend((0..format.block_bytes() - format.header_bytes()).map(|_| rng.next() as u8));
        }
        data
    }

    /// Every format: 9 rows of 9 blocks against 6 tokens (a tile of 4, then two alone); returns the dot products
    /// compared.
    #[cfg(target_arch = "aarch64")]
    pub fn check() -> usize {
        let mut rng = Rng(7);
        let mut compared = 0;
        for format in [Format::Q4_1, Format::Q4F, Format::Q8_0, Format::Q8S] {
            let blocks = 9;
            let xs: Vec<Vec<Q8_1>> = (0..6)
                .map(|_| {
                    let x: Vec<f32> = (0..blocks * QK).map(|_| 3.0 * rng.unit()).collect();
                    scalar::quantize_row_for(format, &x)
                })
                .collect();
            for r in 0..9 {
                let w = random_row(format, blocks, &mut rng);
                // SAFETY: every aarch64 CPU has NEON; each x row has a block for every weight block.
                let four = unsafe { neon::dot_tile::<4>(format, &w, [&xs[0], &xs[1], &xs[2], &xs[3]]) };
                let ones = [4, 5].map(|t| unsafe { neon::dot_tile::<1>(format, &w, [&xs[t]]) }[0]);
                for (t, got) in four.iter().chain(&ones).enumerate() {
                    let want = scalar::dot_scalar(format, &w, &xs[t]);
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{format:?} row {r} token {t}: NEON {got} vs scalar {want}"
                    );
                    compared += 1;
                }
            }
            println!("{format:?}: NEON matches the scalar reference");
        }
        compared
    }
}

fn main() {
    #[cfg(target_arch = "aarch64")]
    println!("{} dot products checked", cpu_quant::check());
    #[cfg(not(target_arch = "aarch64"))]
    println!("not an aarch64 build: nothing to check");
}
