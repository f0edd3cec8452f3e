//! teal: an inference server with blue/green model slots.
//!
//! Layout (data flows top to bottom):
//! ```text
//! main.rs      CLI only: parse flags, call server::run or cli::admin::run
//! config.rs    flags + TEAL_* env + teal.toml -> Config
//! server/      bind both listeners, serve, load the startup models through the lifecycle, bounded shutdown;
//!              token.rs (the admin token)
//! api/         axum routes: OpenAI /v1 (openai.rs, generate.rs), health + metrics; admin.rs (own listener,
//!              bearer token); error.rs turns errors into HTTP; body.rs, limits.rs, prompt.rs bound each
//!              request's cost before the work
//! router/      the live pointer (one ArcSwap), slot leases held by each request to its last token, session
//!              pinning while a flip drains (pins.rs)
//! backend.rs   what a slot serves with, by model kind: the LLM engine or a dynamic batcher (batcher.rs)
//! lifecycle/   the controller (actor/, the only writer of slot state): load -> warm -> gate -> flip /
//!              rollback / unload / park / wake / cancel; state.rs (pure transitions), prepare.rs + guard.rs
//!              (model files read off the controller), checks/ (warm-up and gates for every kind), views.rs
//!              (the typed admin answers), audit.rs (JSONL log)
//! memory/      budgets: estimates from the files, device probes (/proc, cgroup, NVML), admission, report
//! cli/         `teal admin`: the admin API from the command line
//! bench/       `teal bench serve|flip|cold-warm`: load generator, stats, JSON with the machine, SVG charts
//! engine/      per-model engine thread: queue -> scheduler (pure policy) -> batched forward -> sampling
//!              kv_cache.rs (paged pool, blocks freed on drop), sequence.rs (stop strings, streaming text)
//! models/      loading (HF safetensors dir or GGUF), llama.rs (stateless forward over a ragged batch),
//!              linear.rs (dense or quantized layers), shared.rs (identical tensors held once per
//!              device), estimate.rs (weight bytes from file headers), tokenizer + chat template;
//!              embedding.rs (BERT sentence embeddings), classifier.rs + efficientnet_lite.rs + image.rs
//!              (image classification with its versioned preprocessing), pth.rs + pickle.rs (PyTorch
//!              checkpoints), gguf.rs + safetensors_check.rs + files.rs (file formats as untrusted input)
//! ops/         teal's own tensor ops, each whole: metadata + checks, CPU reference, CUDA launch (kernels/*.cu ->
//!              PTX by build.rs); kernel module load at warm-up
//! device.rs    cpu / cuda:N and dtype parsing; with ops/ the only code that knows the `cuda` feature
//! net/         the HTTP/1.1 listener loop: connection caps, header and write deadlines, shutdown phases
//! slot.rs      the shared vocabulary (SlotName, ModelIdentity, ModelKind): a leaf
//! telemetry.rs tracing setup and every Prometheus metric
//! ```
//! An engine owns its model, KV pool and device; a slot holds one engine (one model version). Requests reach
//! the live slot through the router's atomic pointer; the lifecycle controller alone moves that pointer.

// No panics on any path a request, a model file or an admin call reaches: checked by clippy in CI.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod backend;
pub mod batcher;
pub mod bench;
pub mod cli;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod lifecycle;
pub mod memory;
pub mod models;
pub mod net;
pub mod ops;
pub mod rollout;
pub mod router;
pub mod server;
pub mod sessions;
pub mod slot;
pub mod telemetry;
