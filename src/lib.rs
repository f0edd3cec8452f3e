//! teal: an inference server with blue/green model slots.
//!
//! Layout (data flows top to bottom):
//! ```text
//! main.rs      CLI only: parse flags, call server::run
//! config.rs    flags + TEAL_* env + teal.toml -> Config
//! server.rs    bind, serve, load + warm the model in the background, graceful shutdown
//! api/         axum routes: OpenAI /v1 (openai.rs, generate.rs), health + metrics; error.rs turns errors into HTTP
//! engine/      per-model engine thread: queue -> scheduler (pure policy) -> batched forward -> sampling
//!              kv_cache.rs (paged pool, blocks freed on drop), sequence.rs (stop strings, streaming text)
//! models/      loading (HF safetensors dir or GGUF), llama.rs (stateless forward over a ragged batch),
//!              paged_attention.rs (custom ops over the KV pool), tokenizer + chat template
//! device.rs    cpu / cuda:N and dtype parsing; the one place that knows the `cuda` feature
//! telemetry.rs tracing setup and every Prometheus metric
//! ```
//! An engine owns its model, KV pool and device; the API holds engines behind an atomic pointer, so a second
//! engine (the standby slot) can live beside the first.

pub mod api;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod models;
pub mod server;
pub mod telemetry;
