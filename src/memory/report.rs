//! The memory report of GET /admin/memory and the memory metrics: per device and per slot, what is held (weights,
//! shared weights counted once, KV pool, workspace), what the budget leaves, and on CUDA the NVML figures.

use super::budget::Need;
use super::probe::GpuTelemetry;
use crate::router::SlotName;
use prometheus::{Gauge, GaugeVec, Opts, Registry};
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

/// The memory gauges, set from each report.
#[derive(Clone)]
pub struct MemoryMetrics {
    device: GaugeVec,
    slot: GaugeVec,
    gpu: GaugeVec,
    rss: Gauge,
}

impl MemoryMetrics {
    pub fn new(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let rss = Gauge::new("teal_process_resident_memory_bytes", "Resident memory of the teal process (VmRSS)")
            .expect("static metric definition");
        registry.register(Box::new(rss.clone())).expect("metric registered once");
        MemoryMetrics {
            device: vec(
                "teal_memory_device_bytes",
                "Device memory by kind: total, available, budget, held (teal's slots, shared weights once), \
                 weights, shared, kv_cache, workspace, free_within_budget",
                &["device", "kind"],
            ),
            slot: vec(
                "teal_memory_slot_bytes",
                "A slot's memory by kind: weights, shared, kv_cache, workspace, host, estimate",
                &["slot", "kind"],
            ),
            gpu: vec(
                "teal_gpu_info",
                "NVML telemetry by kind: memory_used_bytes, memory_total_bytes, utilization_ratio, \
                 temperature_celsius, power_watts",
                &["device", "kind"],
            ),
            rss,
        }
    }

    pub fn observe(&self, r: &MemoryReport) {
        for d in &r.devices {
            let set = |kind: &str, v: Option<u64>| {
                if let Some(v) = v {
                    self.device.with_label_values(&[d.device.as_str(), kind]).set(v as f64);
                }
            };
            set("total", d.total_bytes);
            set("available", d.available_bytes);
            set("budget", d.budget_bytes);
            set("held", Some(d.held_bytes));
            set("weights", Some(d.weights_bytes));
            set("shared", Some(d.shared_bytes));
            set("kv_cache", Some(d.kv_cache_bytes));
            set("workspace", Some(d.workspace_bytes));
            set("free_within_budget", d.free_within_budget_bytes);
            if let Some(g) = &d.nvml {
                let gset = |kind: &str, v: f64| self.gpu.with_label_values(&[d.device.as_str(), kind]).set(v);
                gset("memory_used_bytes", g.memory_used_bytes as f64);
                gset("memory_total_bytes", g.memory_total_bytes as f64);
                g.utilization_percent.inspect(|u| gset("utilization_ratio", f64::from(*u) / 100.0));
                g.temperature_celsius.inspect(|t| gset("temperature_celsius", f64::from(*t)));
                g.power_watts.inspect(|p| gset("power_watts", *p));
            }
        }
        for s in &r.slots {
            let set = |kind: &str, v: u64| self.slot.with_label_values(&[s.slot.as_str(), kind]).set(v as f64);
            set("weights", s.weights_bytes);
            set("shared", s.shared_bytes);
            set("kv_cache", s.kv_cache_bytes);
            set("workspace", s.workspace_bytes);
            set("host", s.host_bytes);
            set("estimate", s.estimate.map(|e| e.total()).unwrap_or(0));
        }
        if let Some(rss) = r.process_resident_bytes {
            self.rss.set(rss as f64);
        }
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
}
