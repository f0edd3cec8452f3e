//! Logging setup and every Prometheus metric teal exports, defined and described in one place.
//! Engine metrics carry `model`, `slot` and `version` labels so the blue and green engines stay apart; the
//! lifecycle metrics (live slot, slot states, flips, rollbacks, gate results) are process-wide.

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Installs the `tracing` subscriber (RUST_LOG / TEAL_LOG filter, default info) writing to stderr: `json` gives
/// one JSON object per line for log shippers; text has colours only when stderr is a terminal.
pub fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEAL_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// All metrics of one server process.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub ttft: HistogramVec,
    pub itl: HistogramVec,
    pub e2e: HistogramVec,
    pub queue_time: HistogramVec,
    pub running_requests: IntGaugeVec,
    pub batch_size: HistogramVec,
    pub waiting: IntGaugeVec,
    pub kv_usage: GaugeVec,
    pub prompt_tokens: IntCounterVec,
    pub prefix_hit_tokens: IntCounterVec,
    pub prefix_hit_ratio: GaugeVec,
    pub prefix_cached_blocks: IntGaugeVec,
    pub generation_tokens: IntCounterVec,
    pub preemptions: IntCounterVec,
    pub nonfinite: IntCounterVec,
    pub live_slot: IntGaugeVec,
    pub slot_state: IntGaugeVec,
    pub flips: IntCounter,
    pub rollbacks: IntCounter,
    pub flip_duration: Histogram,
    pub gate_results: IntCounterVec,
    pub slot_gates_passed: IntGaugeVec,
    pub last_flip: Gauge,
    pub since_last_flip: Gauge,
    pub session_errors: IntCounterVec,
    pub sessions_degraded: IntCounter,
    pub kernel_module_loads: IntCounter,
    pub memory: MemoryMetrics,
    pub rollout: RolloutMetrics,
    pub fleet: FleetMetrics,
}

/// Kernel modules loaded onto a device in this process (a load is a driver JIT compile of teal's PTX); counted
/// by kernels.rs, exported as `teal_kernel_module_loads_total`. Process-wide, like the loads themselves.
static KERNEL_MODULE_LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one kernel module load (kernels.rs calls it).
pub fn note_kernel_module_load() {
    KERNEL_MODULE_LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Kernel module loads so far in this process.
pub fn kernel_module_loads() -> u64 {
    KERNEL_MODULE_LOADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The labels of every engine metric.
const ENGINE_LABELS: [&str; 3] = ["model", "slot", "version"];
const SLOT_STATES: [&str; 11] =
    ["empty", "loading", "warming", "gating", "ready", "live", "draining", "parking", "parked", "waking", "failed"];

/// Registers a statically defined metric. The definitions are constants and each is registered once, when the
/// server starts: a failure is a programming error found by every test, never something input can cause.
#[allow(clippy::expect_used)]
pub(crate) fn reg<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> T {
    let m = metric.expect("static metric definition");
    registry.register(Box::new(m.clone())).expect("metric registered once");
    m
}

fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 18).unwrap_or_default()
}

impl Metrics {
    /// Every metric, registered once. One entry per metric.
    // size-check: table
    pub fn new() -> Self {
        let registry = Registry::new();
        let hist = |name: &str, help: &str| {
            reg(&registry, HistogramVec::new(HistogramOpts::new(name, help).buckets(latency_buckets()), &ENGINE_LABELS))
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| reg(&registry, IntCounterVec::new(Opts::new(name, help), labels));
        let igauge = |name: &str, help: &str| reg(&registry, IntGaugeVec::new(Opts::new(name, help), &ENGINE_LABELS));
        let kv_usage = reg(
            &registry,
            GaugeVec::new(Opts::new("teal_kv_cache_usage_ratio", "Share of KV cache blocks in use"), &ENGINE_LABELS),
        );
        Metrics {
            requests: counter(
                "teal_requests_total",
                "HTTP requests by endpoint and status code",
                &["model", "slot", "endpoint", "status"],
            ),
            ttft: hist("teal_time_to_first_token_seconds", "Time from request arrival to its first generated token"),
            itl: hist("teal_inter_token_latency_seconds", "Time between consecutive generated tokens of a request"),
            e2e: hist("teal_request_duration_seconds", "Time from request arrival to its last token"),
            queue_time: hist("teal_queue_time_seconds", "Time a request waited before its first step"),
            running_requests: igauge("teal_running_requests", "Sequences in the running batch"),
            batch_size: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("teal_batch_size", "Sequences run together in one engine step")
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                    &ENGINE_LABELS,
                ),
            ),
            waiting: igauge("teal_waiting_requests", "Requests queued for admission"),
            kv_usage,
            prompt_tokens: counter("teal_prompt_tokens_total", "Prompt tokens processed", &ENGINE_LABELS),
            prefix_hit_tokens: counter(
                "teal_prefix_cache_hit_tokens_total",
                "Prompt tokens whose KV came from the prefix cache (not prefilled)",
                &ENGINE_LABELS,
            ),
            prefix_hit_ratio: reg(
                &registry,
                GaugeVec::new(
                    Opts::new("teal_prefix_cache_hit_ratio", "Prefix cache hit tokens over prompt tokens, since load"),
                    &ENGINE_LABELS,
                ),
            ),
            prefix_cached_blocks: igauge("teal_prefix_cache_blocks", "KV blocks holding a cached prefix"),
            generation_tokens: counter("teal_generation_tokens_total", "Tokens generated", &ENGINE_LABELS),
            preemptions: counter("teal_preemptions_total", "Sequences preempted for lack of KV cache", &ENGINE_LABELS),
            nonfinite: counter(
                "teal_nonfinite_logits_total",
                "Requests failed because the model produced NaN or infinite logits",
                &ENGINE_LABELS,
            ),
            live_slot: reg(
                &registry,
                IntGaugeVec::new(Opts::new("teal_live_slot", "1 for the slot serving traffic, else 0"), &["slot"]),
            ),
            slot_state: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("teal_slot_state", "1 for each slot's current lifecycle state, else 0"),
                    &["slot", "state"],
                ),
            ),
            flips: reg(
                &registry,
                IntCounter::new("teal_flips_total", "Flips of the live slot (rollbacks not included)"),
            ),
            rollbacks: reg(&registry, IntCounter::new("teal_rollbacks_total", "Rollbacks to the previous live slot")),
            flip_duration: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("teal_flip_duration_seconds", "Time the controller took to flip or roll back")
                        .buckets(exponential_buckets(1e-6, 2.0, 20).unwrap_or_default()),
                ),
            ),
            gate_results: counter("teal_gate_results_total", "Gate runs by gate and result", &["gate", "result"]),
            slot_gates_passed: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("teal_slot_gates_passed", "1 when the slot's model passed its gates"),
                    &["slot"],
                ),
            ),
            last_flip: reg(
                &registry,
                Gauge::new("teal_last_flip_timestamp_seconds", "Unix time of the last flip or rollback"),
            ),
            since_last_flip: reg(
                &registry,
                Gauge::new("teal_seconds_since_last_flip", "Seconds since the last flip or rollback"),
            ),
            session_errors: counter(
                "teal_session_store_errors_total",
                "Session store operations that failed (store unreachable or data corrupt)",
                &["op"],
            ),
            sessions_degraded: reg(
                &registry,
                IntCounter::new(
                    "teal_sessions_served_without_history_total",
                    "Session requests served without their history because the store failed (fail-open)",
                ),
            ),
            kernel_module_loads: reg(
                &registry,
                IntCounter::new(
                    "teal_kernel_module_loads_total",
                    "Loads of teal's CUDA kernel module onto a device (each JIT-compiles its PTX); warm-up does them",
                ),
            ),
            memory: MemoryMetrics::new(&registry),
            rollout: RolloutMetrics::new(&registry),
            fleet: FleetMetrics::new(&registry),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let last = self.last_flip.get();
        if last > 0.0 {
            self.since_last_flip.set((unix_seconds(std::time::SystemTime::now()) - last).max(0.0));
        }
        let loads = KERNEL_MODULE_LOADS.load(std::sync::atomic::Ordering::Relaxed);
        self.kernel_module_loads.inc_by(loads.saturating_sub(self.kernel_module_loads.get()));
        let mut buf = vec![];
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn set_last_flip(&self, at: std::time::SystemTime) {
        self.last_flip.set(unix_seconds(at));
    }

    /// Marks `state` as the slot's current state.
    pub fn set_slot_state(&self, slot: &str, state: &str) {
        for s in SLOT_STATES {
            self.slot_state.with_label_values(&[slot, s]).set(i64::from(s == state));
        }
    }

    /// Drops the series of a version that left its slot.
    pub fn forget_slot(&self, model: &str, slot: &str, version: &str) {
        let l = [model, slot, version];
        let _ = self.ttft.remove_label_values(&l);
        let _ = self.itl.remove_label_values(&l);
        let _ = self.e2e.remove_label_values(&l);
        let _ = self.queue_time.remove_label_values(&l);
        let _ = self.running_requests.remove_label_values(&l);
        let _ = self.batch_size.remove_label_values(&l);
        let _ = self.waiting.remove_label_values(&l);
        let _ = self.kv_usage.remove_label_values(&l);
        let _ = self.prefix_hit_ratio.remove_label_values(&l);
        let _ = self.prefix_cached_blocks.remove_label_values(&l);
    }

    /// The metrics of one engine: a model version in a slot.
    pub fn for_slot(&self, model: &str, slot: &str, version: &str) -> EngineMetrics {
        let l = [model, slot, version];
        EngineMetrics {
            ttft: self.ttft.with_label_values(&l),
            itl: self.itl.with_label_values(&l),
            e2e: self.e2e.with_label_values(&l),
            queue_time: self.queue_time.with_label_values(&l),
            running_requests: self.running_requests.with_label_values(&l),
            batch_size: self.batch_size.with_label_values(&l),
            waiting: self.waiting.with_label_values(&l),
            kv_usage: self.kv_usage.with_label_values(&l),
            prompt_tokens: self.prompt_tokens.with_label_values(&l),
            prefix_hit_tokens: self.prefix_hit_tokens.with_label_values(&l),
            prefix_hit_ratio: self.prefix_hit_ratio.with_label_values(&l),
            prefix_cached_blocks: self.prefix_cached_blocks.with_label_values(&l),
            generation_tokens: self.generation_tokens.with_label_values(&l),
            preemptions: self.preemptions.with_label_values(&l),
            nonfinite: self.nonfinite.with_label_values(&l),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The metrics one engine updates, already bound to its model label.
#[derive(Clone)]
pub struct EngineMetrics {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
    pub running_requests: IntGauge,
    pub batch_size: Histogram,
    pub waiting: IntGauge,
    pub kv_usage: Gauge,
    pub prompt_tokens: IntCounter,
    pub prefix_hit_tokens: IntCounter,
    pub prefix_hit_ratio: Gauge,
    pub prefix_cached_blocks: IntGauge,
    pub generation_tokens: IntCounter,
    pub preemptions: IntCounter,
    pub nonfinite: IntCounter,
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
/// The memory gauges, set from each report.
#[derive(Clone)]
pub struct MemoryMetrics {
    device: GaugeVec,
    slot: GaugeVec,
    /// One family per NVML quantity (GPU_GAUGES), labelled by device.
    gpu: Vec<GaugeVec>,
    rss: Gauge,
}

/// NVML telemetry families: name and help.
pub const GPU_GAUGES: [(&str, &str); 6] = [
    ("teal_gpu_memory_used_bytes", "GPU memory in use on the device, all processes (NVML)"),
    ("teal_gpu_memory_free_bytes", "GPU memory free on the device (NVML)"),
    ("teal_gpu_memory_total_bytes", "GPU memory on the device (NVML)"),
    ("teal_gpu_utilization_ratio", "Share of the last sample period a kernel ran on the GPU (NVML)"),
    ("teal_gpu_temperature_celsius", "GPU core temperature (NVML)"),
    ("teal_gpu_power_watts", "GPU power draw (NVML)"),
];

impl MemoryMetrics {
    pub fn new(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| reg(registry, GaugeVec::new(Opts::new(name, help), labels));
        let rss = reg(
            registry,
            Gauge::new("teal_process_resident_memory_bytes", "Resident memory of the teal process (VmRSS)"),
        );
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
            gpu: GPU_GAUGES.iter().map(|(name, help)| vec(name, help, &["device"])).collect(),
            rss,
        }
    }

    /// One device figure (`kind`: total, available, budget, held, weights, shared, kv_cache, workspace,
    /// free_within_budget).
    pub fn set_device(&self, device: &str, kind: &str, bytes: u64) {
        self.device.with_label_values(&[device, kind]).set(bytes as f64);
    }

    /// One slot figure (`kind`: weights, shared, kv_cache, workspace, host, estimate).
    pub fn set_slot(&self, slot: &str, kind: &str, bytes: u64) {
        self.slot.with_label_values(&[slot, kind]).set(bytes as f64);
    }

    /// One NVML reading: the values of `GPU_GAUGES`, in order (absent readings stay absent).
    pub fn set_gpu(&self, device: &str, values: &[Option<f64>]) {
        for (gauge, v) in self.gpu.iter().zip(values) {
            v.inspect(|v| gauge.with_label_values(&[device]).set(*v));
        }
    }

    pub fn set_process_rss(&self, bytes: u64) {
        self.rss.set(bytes as f64);
    }
}

/// Fleet mode: how long since this replica reached the fleet's Redis, and the last epoch it applied.
#[derive(Clone)]
pub struct FleetMetrics {
    pub staleness: Gauge,
    pub epoch: IntGauge,
}

impl FleetMetrics {
    pub fn new(registry: &Registry) -> Self {
        FleetMetrics {
            staleness: reg(
                registry,
                Gauge::new("teal_fleet_staleness_seconds", "Seconds since this replica last reached the fleet's Redis"),
            ),
            epoch: reg(registry, IntGauge::new("teal_fleet_epoch", "The last fleet epoch this replica applied")),
        }
    }
}

/// Progressive delivery: the running rollout's weight and step, its decisions, and shadow traffic.
#[derive(Clone)]
pub struct RolloutMetrics {
    pub weight: Gauge,
    pub step: IntGauge,
    pub decisions: IntCounterVec,
    pub shadow_agreement: Gauge,
    pub shadow_requests: IntCounterVec,
    /// Teacher-forced: mean top-1 agreement and KL per answer, of the canary and of the A/A reference.
    pub shadow_top1: GaugeVec,
    pub shadow_kl: GaugeVec,
}

impl RolloutMetrics {
    pub fn new(registry: &Registry) -> Self {
        RolloutMetrics {
            weight: reg(
                registry,
                Gauge::new("teal_rollout_weight_percent", "Share of requests the running rollout sends to the canary"),
            ),
            step: reg(registry, IntGauge::new("teal_rollout_step", "Index of the running rollout's step")),
            decisions: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("teal_rollout_decisions_total", "Rollout decisions by kind and the metric behind them"),
                    &["decision", "metric"],
                ),
            ),
            shadow_agreement: reg(
                registry,
                Gauge::new(
                    "teal_rollout_shadow_agreement_ratio",
                    "Share of mirrored requests whose canary answer matched the live answer exactly",
                ),
            ),
            shadow_requests: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("teal_rollout_shadow_requests_total", "Requests picked for mirroring, by outcome"),
                    &["outcome"],
                ),
            ),
            shadow_top1: reg(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "teal_rollout_shadow_top1_agreement_ratio",
                        "Teacher-forced: mean share of positions where the scoring version's top token is the live one's",
                    ),
                    &["scored_by"],
                ),
            ),
            shadow_kl: reg(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "teal_rollout_shadow_kl_nats",
                        "Teacher-forced: mean KL divergence per token from the live next-token distribution",
                    ),
                    &["scored_by"],
                ),
            ),
        }
    }
}
