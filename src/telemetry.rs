//! Logging setup and every Prometheus metric teal exports, defined and described in one place.
//! Engine metrics carry a `model` label so two engines in one process stay apart.

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Installs the `tracing` subscriber (RUST_LOG / TEAL_LOG filter, default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEAL_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
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
    pub batch_size: IntGaugeVec,
    pub step_batch: HistogramVec,
    pub waiting: IntGaugeVec,
    pub kv_usage: GaugeVec,
    pub prompt_tokens: IntCounterVec,
    pub generation_tokens: IntCounterVec,
    pub preemptions: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 18).unwrap_or_default()
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let hist = |name: &str, help: &str| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(latency_buckets()), &["model"])
                .expect("static metric definition");
            registry.register(Box::new(h.clone())).expect("metric registered once");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let igauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["model"]).expect("static metric definition");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let kv_usage =
            GaugeVec::new(Opts::new("teal_kv_cache_usage_ratio", "Share of KV cache blocks in use"), &["model"])
                .expect("static metric definition");
        registry.register(Box::new(kv_usage.clone())).expect("metric registered once");
        Metrics {
            requests: counter(
                "teal_requests_total",
                "HTTP requests by endpoint and status code",
                &["model", "endpoint", "status"],
            ),
            ttft: hist("teal_time_to_first_token_seconds", "Time from request arrival to its first generated token"),
            itl: hist("teal_inter_token_latency_seconds", "Time between consecutive generated tokens of a request"),
            e2e: hist("teal_request_duration_seconds", "Time from request arrival to its last token"),
            queue_time: hist("teal_queue_time_seconds", "Time a request waited before its first step"),
            batch_size: igauge("teal_running_requests", "Sequences in the running batch"),
            step_batch: {
                let h = HistogramVec::new(
                    HistogramOpts::new("teal_batch_size", "Sequences run together in one engine step")
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                    &["model"],
                )
                .expect("static metric definition");
                registry.register(Box::new(h.clone())).expect("metric registered once");
                h
            },
            waiting: igauge("teal_waiting_requests", "Requests queued for admission"),
            kv_usage,
            prompt_tokens: counter("teal_prompt_tokens_total", "Prompt tokens processed", &["model"]),
            generation_tokens: counter("teal_generation_tokens_total", "Tokens generated", &["model"]),
            preemptions: counter("teal_preemptions_total", "Sequences preempted for lack of KV cache", &["model"]),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = vec![];
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn for_model(&self, model: &str) -> EngineMetrics {
        let l = [model];
        EngineMetrics {
            ttft: self.ttft.with_label_values(&l),
            itl: self.itl.with_label_values(&l),
            e2e: self.e2e.with_label_values(&l),
            queue_time: self.queue_time.with_label_values(&l),
            batch_size: self.batch_size.with_label_values(&l),
            step_batch: self.step_batch.with_label_values(&l),
            waiting: self.waiting.with_label_values(&l),
            kv_usage: self.kv_usage.with_label_values(&l),
            prompt_tokens: self.prompt_tokens.with_label_values(&l),
            generation_tokens: self.generation_tokens.with_label_values(&l),
            preemptions: self.preemptions.with_label_values(&l),
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
    pub batch_size: IntGauge,
    pub step_batch: Histogram,
    pub waiting: IntGauge,
    pub kv_usage: Gauge,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub preemptions: IntCounter,
}
