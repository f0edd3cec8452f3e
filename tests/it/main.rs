//! Every real-server and real-model test in one binary (one link instead of a dozen): each file is a module named
//! after what it covers; `cargo test --release --test it MODULE::` runs one of them. Five tests keep their own
//! binary: bench_accuracy (it measures time, so nothing else may load the CPU), rollout_aa (its false-alarm
//! count is only meaningful when no other test shares the CPU with its two engines), fleet_chaos (it runs teal,
//! redis-server and haproxy as processes and kills them), fuzz_parsers (it installs a counting global allocator)
//! and cuda_kernels (it needs a GPU and `--features cuda`).

#[path = "../common/mod.rs"]
mod common;

mod admin_api;
mod admin_races;
mod api_oneshot;
mod architectures;
mod bench;
mod dashboard_auth;
mod detokenize;
mod engine_behaviour;
mod engine_scoring;
mod fleet;
mod fleet_rollout;
mod gates;
mod gemma3;
mod gguf_tokenizer;
mod hostile;
mod http_api;
mod memory;
mod model_loading;
mod openai_fields;
mod prefix_cache;
mod process;
mod reference_outputs;
mod rollouts;
mod session_turns;
mod sessions;
mod slots;
mod structured;
mod vision_embeddings;
