//! Where the device figures come from, behind one trait so tests can fake any device size. On CPU: /proc/meminfo
//! and the cgroup memory limit (a container's limit counts, not the host's RAM). On CUDA: NVML (nvml-wrapper,
//! loaded at run time, so a build without CUDA still reports GPUs when a driver is present).

use super::gpu_match::nvml_index;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Size and free memory of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DeviceFigures {
    pub total: u64,
    pub available: u64,
}

/// NVML telemetry of one GPU.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GpuTelemetry {
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_free_bytes: u64,
    pub utilization_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_watts: Option<f64>,
}

pub trait MemoryProbe: Send + Sync {
    /// Figures for `cpu` or `cuda:N`; None when the device cannot be probed.
    fn device(&self, device: &str) -> Option<DeviceFigures>;
    /// NVML telemetry for `cuda:N`.
    fn gpu(&self, _device: &str) -> Option<GpuTelemetry> {
        None
    }
    /// This process's resident memory (VmRSS).
    fn process_rss(&self) -> Option<u64>;
}

/// The real machine.
#[derive(Default)]
pub struct SystemProbe {
    nvml: OnceLock<Option<nvml_wrapper::Nvml>>,
    /// CUDA ordinal -> NVML index, resolved once per ordinal (gpu_match.rs).
    indices: Mutex<HashMap<u32, Option<u32>>>,
}

impl SystemProbe {
    fn nvml(&self) -> Option<&nvml_wrapper::Nvml> {
        self.nvml.get_or_init(|| nvml_wrapper::Nvml::init().ok()).as_ref()
    }

    /// The NVML device that is `cuda:N`, matched by UUID (not by index: see gpu_match.rs).
    fn nvml_device(&self, device: &str) -> Option<nvml_wrapper::Device<'_>> {
        let nvml = self.nvml()?;
        let ordinal = cuda_ordinal(device)?;
        let mut indices = self.indices.lock().unwrap_or_else(|p| p.into_inner());
        let index = *indices.entry(ordinal).or_insert_with(|| {
            let uuids: Vec<String> = (0..nvml.device_count().unwrap_or(0))
                .map(|i| nvml.device_by_index(i).and_then(|d| d.uuid()).unwrap_or_default())
                .collect();
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
            let found = nvml_index(ordinal, crate::device::cuda_uuid(ordinal).as_deref(), visible.as_deref(), &uuids);
            if found.is_none() {
                tracing::warn!(device, "no NVML device matches this CUDA device: its memory cannot be probed");
            }
            found
        });
        nvml.device_by_index(index?).ok()
    }
}

fn cuda_ordinal(device: &str) -> Option<u32> {
    device.strip_prefix("cuda:")?.parse().ok()
}

impl MemoryProbe for SystemProbe {
    fn device(&self, device: &str) -> Option<DeviceFigures> {
        if device == "cpu" {
            return cpu_figures();
        }
        let g = self.gpu(device)?;
        Some(DeviceFigures { total: g.memory_total_bytes, available: g.memory_free_bytes })
    }

    fn gpu(&self, device: &str) -> Option<GpuTelemetry> {
        let d = self.nvml_device(device)?;
        let mem = d.memory_info().ok()?;
        Some(GpuTelemetry {
            name: d.name().unwrap_or_default(),
            memory_total_bytes: mem.total,
            memory_used_bytes: mem.used,
            memory_free_bytes: mem.free,
            utilization_percent: d.utilization_rates().ok().map(|u| u.gpu),
            temperature_celsius: d.temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu).ok(),
            power_watts: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
        })
    }

    fn process_rss(&self) -> Option<u64> {
        parse_status_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
    }
}

/// Host memory: the smaller of the machine's and the cgroup's.
fn cpu_figures() -> Option<DeviceFigures> {
    let (total, available) = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    let cg = cgroup_limit();
    Some(combine(total, available, cg))
}

/// The cgroup's limit and usage: v2 (memory.max, memory.current) or v1 (memory.limit_in_bytes,
/// memory.usage_in_bytes), at the root of the namespace or at the process's own cgroup path.
fn cgroup_limit() -> Option<(u64, u64)> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let own = read("/proc/self/cgroup").unwrap_or_default();
    let v1_path = own.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string())).unwrap_or_default();
    let candidates = [
        ("/sys/fs/cgroup/memory.max".to_string(), "/sys/fs/cgroup/memory.current".to_string()),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string(),
            "/sys/fs/cgroup/memory/memory.usage_in_bytes".to_string(),
        ),
        (
            format!("/sys/fs/cgroup/memory{v1_path}/memory.limit_in_bytes"),
            format!("/sys/fs/cgroup/memory{v1_path}/memory.usage_in_bytes"),
        ),
    ];
    candidates.iter().find_map(|(max, cur)| {
        let limit = parse_cgroup_limit(&read(max)?)?;
        let usage = read(cur).and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Some((limit, usage))
    })
}

/// Applies a cgroup (limit, usage) to the machine's figures.
pub fn combine(total: u64, available: u64, cgroup: Option<(u64, u64)>) -> DeviceFigures {
    match cgroup {
        Some((limit, usage)) if limit < total => {
            DeviceFigures { total: limit, available: available.min(limit.saturating_sub(usage)) }
        }
        _ => DeviceFigures { total, available },
    }
}

/// MemTotal and MemAvailable in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok().map(|kb| kb * 1024)
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// A cgroup limit file: bytes, or `max` / a v1 "unlimited" value (None).
pub fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// VmRSS in bytes from /proc/<pid>/status.
pub fn parse_status_rss(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse::<u64>().ok().map(|k| k * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_and_cgroup_files() {
        let meminfo = "MemTotal:       24683656 kB\nMemFree:  100 kB\nMemAvailable:   23446424 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((24683656 * 1024, 23446424 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("9223372036854771712\n"), None, "cgroup v1 'unlimited'");
        assert_eq!(parse_cgroup_limit("4294967296\n"), Some(4 << 30));
        assert_eq!(parse_status_rss("Name: teal\nVmRSS:\t  1888 kB\n"), Some(1888 * 1024));
    }

    #[test]
    fn a_container_limit_below_the_host_ram_is_the_device() {
        let host = (24u64 << 30, 20u64 << 30);
        assert_eq!(combine(host.0, host.1, None), DeviceFigures { total: 24 << 30, available: 20 << 30 });
        let c = combine(host.0, host.1, Some((4 << 30, 3 << 30)));
        assert_eq!(c, DeviceFigures { total: 4 << 30, available: 1 << 30 });
        assert_eq!(combine(host.0, host.1, Some((64 << 30, 1 << 30))).total, 24 << 30, "a limit above RAM is moot");
    }
}
