//! Device and dtype selection from user strings, and the one way a device is named; with ops/, the only code
//! that knows whether CUDA was compiled in.

use crate::error::{Result, TealError};
use candle_core::{DType, Device};

/// The canonical name of a device the user wrote: `cuda` -> `cuda:0`, `CPU` -> `cpu` (names only: no device is
/// opened). Budgets, reports and admission key devices by it, as `label` names an opened one.
pub fn canonical_name(s: &str) -> String {
    match s.trim().to_ascii_lowercase().as_str() {
        "cuda" => "cuda:0".into(),
        d => d.to_string(),
    }
}

/// `cpu`, `cuda` (device 0) or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.as_str() {
        "cuda" => 0,
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| TealError::Config(format!("unknown device '{s}': use cpu, cuda or cuda:N")))?,
    };
    cuda_device(ordinal)
}

/// One candle device per GPU for the whole process: candle tells devices apart by instance, so two slots on
/// `cuda:0` must get the same one, or weights shared between them, and teal's kernel module (loaded once per
/// device), would belong to "another device".
///
/// The device is opened with **one explicit stream** (`new_cuda_with_stream`), which every thread that touches it
/// uses: both slots' engine threads, loads, park/wake copies and KV-pool allocation on tokio's blocking threads.
/// `Device::new_cuda` would give each OS thread its own per-thread stream with nothing ordering them, while
/// candle's quantized matmuls share one scratch buffer per device on the assumption that all launches are
/// serialised (ARCHITECTURE.md "CUDA": the ordering discipline).
#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPENED: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut opened = OPENED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = opened.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda_with_stream(ordinal).map_err(|e| TealError::Device(format!("cuda:{ordinal}: {e}")))?;
    if let Device::Cuda(cuda) = &d {
        // SAFETY: every buffer of this context is allocated, used and freed on its one stream (above), so stream
        // order alone keeps each use after its allocation and before its free; the per-use events cudarc would
        // otherwise record (a few per launch) order nothing.
        unsafe { cuda.disable_event_tracking() };
    }
    opened.insert(ordinal, d.clone());
    Ok(d)
}

/// The driver's UUID of CUDA ordinal `ordinal` (`GPU-...`, as NVML prints it), without opening a context: what
/// memory/gpu_match.rs matches NVML's devices by.
#[cfg(feature = "cuda")]
pub fn cuda_uuid(ordinal: u32) -> Option<String> {
    use candle_core::cuda_backend::cudarc::driver::result;
    result::init().ok()?;
    let dev = result::device::get(i32::try_from(ordinal).ok()?).ok()?;
    let uuid = result::device::get_uuid(dev).ok()?;
    Some(crate::memory::gpu_match::format_uuid(&uuid.bytes.map(|b| b as u8)))
}

/// Without CUDA compiled in there is no driver to ask (NVML's order is used, see memory/gpu_match.rs).
#[cfg(not(feature = "cuda"))]
pub fn cuda_uuid(_ordinal: u32) -> Option<String> {
    None
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Err(TealError::Device(format!(
        "cuda:{ordinal} requested, but teal was built without CUDA support (rebuild with --features cuda)"
    )))
}

/// The canonical name of a device: `cpu` or `cuda:N` (what budgets and reports are keyed by).
pub fn label(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".into(),
    }
}

/// `auto` (None), `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<Option<DType>> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(None),
        "f32" | "float32" => Ok(Some(DType::F32)),
        "f16" | "float16" | "half" => Ok(Some(DType::F16)),
        "bf16" | "bfloat16" => Ok(Some(DType::BF16)),
        other => Err(TealError::Config(format!("unknown dtype '{other}': use auto, f32, f16 or bf16"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda:0").unwrap_err().to_string().contains("without CUDA support"));
        assert_eq!(parse_dtype("bf16").unwrap(), Some(DType::BF16));
        assert_eq!(parse_dtype("auto").unwrap(), None);
        assert!(parse_dtype("int3").is_err());
    }
}
