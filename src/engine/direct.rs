//! Runs a model on one sequence without the scheduler or the engine thread: the full-prompt logits and a
//! greedy continuation. Used by reference tests (outputs against transformers) and by anything that needs a
//! model's raw answer for a fixed prompt.

use super::kv_cache::KvPool;
use super::sampling::argmax;
use crate::error::Result;
use crate::models::llama::StepInput;
use crate::models::Model;
use crate::ops::paged_attention::AttnMeta;
use std::sync::Arc;

/// Last-position logits of `prompt`, then `steps` greedy tokens (eos does not stop it).
pub fn greedy(model: &Model, prompt: &[u32], steps: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    let c = model.llama.config();
    let bs = 16;
    let pool =
        KvPool::new(c.num_layers, c.num_kv_heads, c.head_dim, prompt.len() + steps + bs, bs, model.llama.device())?;
    let mut table = pool.alloc.table();
    let mut tokens = prompt.to_vec();
    let (mut cached, mut first, mut out) = (0, None, vec![]);
    while out.len() < steps || first.is_none() {
        let n = tokens.len() - cached;
        if !table.reserve(tokens.len()) {
            return Err(crate::error::TealError::KvCacheFull("the pool is too small for this sequence".into()));
        }
        let meta = AttnMeta {
            token_seq: vec![0; n],
            token_pos: (cached as u32..tokens.len() as u32).collect(),
            slot_mapping: (cached..tokens.len()).map(|p| table.slot(p)).collect(),
            block_tables: vec![table.ids().to_vec()],
            block_size: bs,
            ..Default::default()
        };
        let input =
            StepInput { tokens: tokens[cached..].to_vec(), meta: Arc::new(meta), logits_rows: vec![n as u32 - 1] };
        let logits = model.llama.forward(&input, &pool)?.squeeze(0)?.to_vec1::<f32>()?;
        cached = tokens.len();
        let next = argmax(&logits);
        first.get_or_insert(logits);
        if out.len() == steps {
            break;
        }
        out.push(next);
        tokens.push(next);
    }
    Ok((first.unwrap_or_default(), out))
}
