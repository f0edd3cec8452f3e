//! Benchmark output: the machine it ran on, a terminal table, and the JSON file.

use super::stats::Summary;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// Where a benchmark ran: enough to compare two result files honestly.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub gpus: Vec<String>,
    pub gpu_driver: Option<String>,
    pub os: String,
    pub teal_version: &'static str,
    pub git_commit: &'static str,
    pub time: String,
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
}

/// GPUs and driver through NVML, when the NVIDIA driver library is present (loaded at run time).
fn gpus() -> (Vec<String>, Option<String>) {
    let Ok(nvml) = nvml_wrapper::Nvml::init() else { return (vec![], None) };
    let count = nvml.device_count().unwrap_or(0);
    let names = (0..count)
        .filter_map(|i| nvml.device_by_index(i).ok())
        .map(|d| {
            let mem = d.memory_info().map(|m| m.total as f64 / (1u64 << 30) as f64).unwrap_or(0.0);
            format!("{} ({mem:.0} GiB)", d.name().unwrap_or_default())
        })
        .collect();
    (names, nvml.sys_driver_version().ok())
}

impl Machine {
    pub fn probe() -> Self {
        let (gpus, gpu_driver) = gpus();
        let kib: f64 = proc_field("/proc/meminfo", "MemTotal")
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0.0);
        Machine {
            cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_gib: kib / (1u64 << 20) as f64,
            gpus,
            gpu_driver,
            os: std::env::consts::OS.to_string(),
            teal_version: env!("CARGO_PKG_VERSION"),
            git_commit: env!("TEAL_GIT_COMMIT"),
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

/// Prints one row per summary.
pub fn print_table(rows: &[Summary]) {
    println!(
        "{:<12} {:>5} {:>4} {:>8} {:>9} | {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} | {:>7} {:>7} | {:>8} {:>8}",
        "load",
        "reqs",
        "err",
        "req/s",
        "tok/s",
        "ttft p50",
        "p90",
        "p99",
        "itl p50",
        "p90",
        "p99",
        "tpot50",
        "p99",
        "e2e p50",
        "p99"
    );
    for s in rows {
        println!(
            "{:<12} {:>5} {:>4} {:>8.2} {:>9.1} | {:>8.1} {:>8.1} {:>8.1} | {:>7.1} {:>7.1} {:>7.1} | {:>7.1} {:>7.1} | {:>8.1} {:>8.1}",
            s.label,
            s.requests,
            s.errors,
            s.request_throughput,
            s.output_token_throughput,
            s.ttft_ms.p50,
            s.ttft_ms.p90,
            s.ttft_ms.p99,
            s.itl_ms.p50,
            s.itl_ms.p90,
            s.itl_ms.p99,
            s.tpot_ms.p50,
            s.tpot_ms.p99,
            s.e2e_ms.p50,
            s.e2e_ms.p99
        );
        for e in &s.error_samples {
            println!("{:<12} error: {e}", "");
        }
        if s.retried > 0 {
            println!("{:<12} {} requests got no response and were sent again on a fresh connection", "", s.retried);
        }
    }
    println!("(latencies in ms)");
}

/// Writes the result file: `{"machine": ..., "benchmark": ..., "config": ..., "results": ...}`.
pub fn write_json(path: &Path, benchmark: &str, config: Value, results: Value) -> anyhow::Result<()> {
    let doc =
        serde_json::json!({"machine": Machine::probe(), "benchmark": benchmark, "config": config, "results": results});
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}
