//! teal's own tensor ops, each owned whole by its module: its metadata and their validation, the CPU reference
//! implementation, and the CUDA kernel launch (kernels/*.cu, compiled to PTX by build.rs under `--features
//! cuda`). paged_attention/ holds the KV write and the attention over the paged pool; its cuda.rs is, with
//! device.rs, the only code that knows the `cuda` feature; activation.rs is the gated MLP activation (CPU only),
//! with ggml_gelu.rs the GELU as ggml computes it, for GGUF models.
//! This module loads the kernels onto a device at warm-up (once per candle CUDA device, so the driver's JIT
//! compile and module load are paid before a flip).

pub mod activation;
mod ggml_gelu;
pub mod paged_attention;

use candle_core::{Device, Result};

/// Whether this x86-64 CPU has AVX2 and FMA (checked once). The binary's baseline is plain x86-64, so that one
/// binary runs on any x86-64 CPU; the CPU ops' portable loops also run compiled for AVX2+FMA where this says so
/// (the same arithmetic: Rust never fuses a multiply and an add on its own, so the results are the same bits).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
}

/// Every kernel teal launches, all in one module (kernels/paged_attention.cu).
pub const KERNELS: &[&str] = &["teal_write_kv", "teal_paged_attention"];

/// How many times a kernel module has been loaded onto a device in this process (a load means a driver JIT compile
/// of the PTX; counted in telemetry). Warm-up loads it once per slot device; it must not move after a flip:
/// `teal_kernel_module_loads_total`.
pub fn module_loads() -> u64 {
    crate::telemetry::kernel_module_loads()
}

/// Loads teal's kernel module on `device` and resolves every kernel in it, so nothing is loaded or JIT-compiled on
/// the first request. Returns the kernels now resident (none on a CPU device).
pub fn preload(device: &Device) -> Result<Vec<String>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        for name in KERNELS {
            paged_attention::cuda::function(dev, name)?;
        }
        return Ok(KERNELS.iter().map(|k| k.to_string()).collect());
    }
    let _ = device; // CPU (and every device of a build without CUDA): nothing to load
    Ok(vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_loaded_on_a_cpu_device() {
        let before = module_loads();
        assert!(preload(&Device::Cpu).unwrap().is_empty());
        assert_eq!(module_loads(), before);
    }
}
