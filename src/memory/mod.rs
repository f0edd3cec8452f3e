//! Memory budgets: what a load will need (estimated from the model's files before anything is allocated), what
//! each device has (probe.rs) and may give teal (budget.rs), and the report GET /admin/memory and the metrics
//! show. The lifecycle controller asks `Budgets::admit` before every load and wake, so a standby load can never
//! push the live slot out of memory. Weights shared between slots are counted once (models/shared.rs).

pub mod budget;
pub mod gpu_match;
pub mod probe;

use crate::engine::EngineConfig;
use crate::models::config::LlamaConfig;
use budget::{BudgetSpec, DeviceState, Need};
use candle_core::DType;
use probe::{DeviceFigures, MemoryProbe};
use std::path::Path;
use std::sync::Arc;

/// Bytes of an engine's KV pool (the engine's own formula).
pub fn kv_bytes(cfg: &LlamaConfig, e: &EngineConfig) -> u64 {
    crate::engine::kv_cache::pool_bytes(
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
        e.max_total_tokens,
        e.block_size,
    )
}

/// Scratch an engine step needs at most: the activations of the largest step (hidden states, q/k/v, the MLP's
/// gate, up and product, in f32) and the logits and sampling copies of the largest batch.
pub fn workspace_bytes(cfg: &LlamaConfig, e: &EngineConfig) -> u64 {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let per_token = 4 * h + (cfg.num_heads + 2 * cfg.num_kv_heads) * hd + 3 * i;
    let step = e.max_step_tokens * per_token;
    let logits = 2 * e.max_batch_size * cfg.vocab_size;
    ((step + logits) * 4) as u64
}

/// The estimate of a load from the model's files alone.
pub fn estimate_load(
    path: &Path,
    dtype: Option<DType>,
    cpu: bool,
    engine: &EngineConfig,
) -> crate::error::Result<Need> {
    if crate::models::detect_kind(path, None)? != crate::slot::ModelKind::TextGeneration {
        // Embedding and image models load their f32 files as they are and keep no KV cache; their activations
        // (a batch at a time) are small beside the weights.
        let weights =
            crate::models::weight_files(path)?.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
        return Ok(Need { weights, kv: 0, workspace: 64 << 20 });
    }
    let w = crate::models::estimate::estimate(path, dtype, cpu)?;
    Ok(Need { weights: w.weights, kv: kv_bytes(&w.config, engine), workspace: workspace_bytes(&w.config, engine) })
}

/// The configured budgets and the probe that measures devices.
#[derive(Clone)]
pub struct Budgets {
    pub spec: BudgetSpec,
    pub probe: Arc<dyn MemoryProbe>,
}

impl Budgets {
    pub fn new(spec: BudgetSpec, probe: Arc<dyn MemoryProbe>) -> Self {
        Budgets { spec, probe }
    }

    /// A device's figures, its budget in bytes; None when the device cannot be probed.
    pub fn device(&self, device: &str) -> Option<(DeviceFigures, u64)> {
        let f = self.probe.device(device)?;
        Some((f, self.spec.limit_for(device).resolve(f.total)))
    }

    /// Admission: Ok if `need` fits on `device` given what teal's other slots hold there (`held`), what the load
    /// frees first (`reclaimable`) and what the live slot holds (for the message). A device that cannot be
    /// probed is refused: a load must never be started blind.
    pub fn admit(
        &self,
        device: &str,
        need: &Need,
        held: u64,
        reclaimable: u64,
        live: Option<u64>,
    ) -> Result<(), String> {
        let Some((f, budget)) = self.device(device) else {
            return Err(format!("cannot read the memory of {device}, so a load there cannot be admitted"));
        };
        let state = DeviceState { device: device.to_string(), budget, held, available: f.available, reclaimable, live };
        budget::admit(need, &state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_and_workspace_follow_the_engine_settings() {
        let cfg = LlamaConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,
                "num_key_value_heads":3,"vocab_size":49152,"max_position_embeddings":8192}"#,
        )
        .unwrap();
        let e = EngineConfig { max_total_tokens: 16384, block_size: 16, ..Default::default() };
        assert_eq!(kv_bytes(&cfg, &e), 30 * 2 * 3 * 64 * 16384 * 4);
        let rounded = EngineConfig { max_total_tokens: 16380, ..e.clone() };
        assert_eq!(kv_bytes(&cfg, &rounded), kv_bytes(&cfg, &e), "the pool rounds up to whole blocks");
        let w = workspace_bytes(&cfg, &e);
        assert!(w > 20 << 20 && w < 40 << 20, "{w}");
    }
}
