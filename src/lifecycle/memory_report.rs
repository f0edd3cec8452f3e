//! The memory report of GET /admin/memory, and the memory metrics set from it: per device and per slot, what is
//! held (weights, shared weights counted once, KV pool, workspace), what the budget leaves, and on CUDA the NVML
//! figures. The lifecycle owns it (only the controller knows what each slot holds); memory/ keeps the budget
//! arithmetic and the probes it reads.

use crate::memory::budget::Need;
use crate::memory::probe::GpuTelemetry;
use crate::slot::SlotName;
use crate::telemetry::MemoryMetrics;
use serde::Serialize;

/// One slot's memory.
#[derive(Debug, Clone, Serialize)]
pub struct SlotMemory {
    pub slot: SlotName,
    pub state: &'static str,
    pub device: String,
    pub version: Option<String>,
    /// Weights this slot's model uses on the device (objects it shares included).
    pub weights_bytes: u64,
    /// Of those, the bytes the other slot uses too (held once on the device).
    pub shared_bytes: u64,
    pub kv_cache_bytes: u64,
    /// Reserved for an engine step's activations and logits (an estimate; 0 when parked).
    pub workspace_bytes: u64,
    /// Weights kept in host memory while parked (on CPU they are the same bytes as `weights_bytes`).
    pub host_bytes: u64,
    /// What admission estimated from the files, beside the actual figures above.
    pub estimate: Option<Need>,
}

impl SlotMemory {
    /// Bytes on the device, the shared weights included.
    pub fn device_bytes(&self) -> u64 {
        self.weights_bytes + self.kv_cache_bytes + self.workspace_bytes
    }
}

/// One device's memory.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceMemory {
    pub device: String,
    pub total_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    pub budget_bytes: Option<u64>,
    /// Everything teal's slots hold here, shared weights counted once.
    pub held_bytes: u64,
    pub weights_bytes: u64,
    pub shared_bytes: u64,
    pub kv_cache_bytes: u64,
    pub workspace_bytes: u64,
    /// What a new load may take (`min(budget - held, available)`).
    pub free_within_budget_bytes: Option<u64>,
    pub slots: Vec<SlotName>,
    pub nvml: Option<GpuTelemetry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub devices: Vec<DeviceMemory>,
    pub slots: Vec<SlotMemory>,
    /// This process's resident memory (VmRSS), for comparison with what the report accounts on the CPU.
    pub process_resident_bytes: Option<u64>,
}

/// Folds the slots on one device into its totals (shared weights once).
pub fn device_totals(device: &str, slots: &[SlotMemory]) -> (u64, u64, u64, u64) {
    let here: Vec<&SlotMemory> = slots.iter().filter(|s| s.device == device).collect();
    let weights: u64 = here.iter().map(|s| s.weights_bytes).sum();
    // Both slots report the objects they share; the device holds them once.
    let shared = if here.len() > 1 { here.iter().map(|s| s.shared_bytes).min().unwrap_or(0) } else { 0 };
    let kv = here.iter().map(|s| s.kv_cache_bytes).sum();
    let ws = here.iter().map(|s| s.workspace_bytes).sum();
    (weights - shared, shared, kv, ws)
}

/// The values of GPU_GAUGES, in order, from one NVML reading.
fn gpu_values(g: &GpuTelemetry) -> [Option<f64>; 6] {
    [
        Some(g.memory_used_bytes as f64),
        Some(g.memory_free_bytes as f64),
        Some(g.memory_total_bytes as f64),
        g.utilization_percent.map(|u| f64::from(u) / 100.0),
        g.temperature_celsius.map(f64::from),
        g.power_watts,
    ]
}

/// Sets the memory gauges from a report.
pub fn publish(r: &MemoryReport, m: &MemoryMetrics) {
    for d in &r.devices {
        let dev = d.device.as_str();
        let figures = [
            ("total", d.total_bytes),
            ("available", d.available_bytes),
            ("budget", d.budget_bytes),
            ("held", Some(d.held_bytes)),
            ("weights", Some(d.weights_bytes)),
            ("shared", Some(d.shared_bytes)),
            ("kv_cache", Some(d.kv_cache_bytes)),
            ("workspace", Some(d.workspace_bytes)),
            ("free_within_budget", d.free_within_budget_bytes),
        ];
        for (kind, v) in figures {
            v.inspect(|v| m.set_device(dev, kind, *v));
        }
        if let Some(g) = &d.nvml {
            m.set_gpu(dev, &gpu_values(g));
        }
    }
    for s in &r.slots {
        let slot = s.slot.as_str();
        m.set_slot(slot, "weights", s.weights_bytes);
        m.set_slot(slot, "shared", s.shared_bytes);
        m.set_slot(slot, "kv_cache", s.kv_cache_bytes);
        m.set_slot(slot, "workspace", s.workspace_bytes);
        m.set_slot(slot, "host", s.host_bytes);
        m.set_slot(slot, "estimate", s.estimate.map(|e| e.total()).unwrap_or(0));
    }
    if let Some(rss) = r.process_resident_bytes {
        m.set_process_rss(rss);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(slot: SlotName, device: &str, weights: u64, shared: u64) -> SlotMemory {
        SlotMemory {
            slot,
            state: "ready",
            device: device.into(),
            version: None,
            weights_bytes: weights,
            shared_bytes: shared,
            kv_cache_bytes: 10,
            workspace_bytes: 1,
            host_bytes: 0,
            estimate: None,
        }
    }

    #[test]
    fn shared_weights_count_once_per_device() {
        let same = [slot(SlotName::Blue, "cpu", 100, 90), slot(SlotName::Green, "cpu", 100, 90)];
        assert_eq!(device_totals("cpu", &same), (110, 90, 20, 2));
        let apart = [slot(SlotName::Blue, "cuda:0", 100, 0), slot(SlotName::Green, "cuda:1", 100, 0)];
        assert_eq!(device_totals("cuda:0", &apart), (100, 0, 10, 1));
    }

    #[test]
    fn nvml_figures_become_one_gauge_family_each() {
        let registry = prometheus::Registry::new();
        let metrics = MemoryMetrics::new(&registry);
        let gpu = GpuTelemetry {
            name: "H100".into(),
            memory_total_bytes: 80,
            memory_used_bytes: 30,
            memory_free_bytes: 50,
            utilization_percent: Some(45),
            temperature_celsius: Some(61),
            power_watts: None,
        };
        let device = DeviceMemory {
            device: "cuda:0".into(),
            total_bytes: Some(80),
            available_bytes: Some(50),
            budget_bytes: None,
            held_bytes: 0,
            weights_bytes: 0,
            shared_bytes: 0,
            kv_cache_bytes: 0,
            workspace_bytes: 0,
            free_within_budget_bytes: None,
            slots: vec![],
            nvml: Some(gpu),
        };
        publish(&MemoryReport { devices: vec![device], slots: vec![], process_resident_bytes: None }, &metrics);
        let mut text = vec![];
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        for line in [
            "teal_gpu_memory_used_bytes{device=\"cuda:0\"} 30",
            "teal_gpu_memory_free_bytes{device=\"cuda:0\"} 50",
            "teal_gpu_memory_total_bytes{device=\"cuda:0\"} 80",
            "teal_gpu_utilization_ratio{device=\"cuda:0\"} 0.45",
            "teal_gpu_temperature_celsius{device=\"cuda:0\"} 61",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // A figure NVML did not give is absent, not zero.
        assert!(!text.contains("teal_gpu_power_watts{"));
    }
}
