//! Runs a model on one sequence without the scheduler or the engine thread: the full-prompt logits and a
//! greedy continuation, through the library's public pieces (the KV pool, the attention metadata, the forward
//! pass). The reference tests compare it with transformers and llama.cpp; the engine's own tests compare the
//! engine with it.

use std::sync::Arc;
use teal::engine::kv_cache::KvPool;
use teal::engine::sampling::argmax;
use teal::error::Result;
use teal::models::llama::StepInput;
use teal::models::LanguageModel;
use teal::ops::paged_attention::AttnMeta;

/// Last-position logits of `prompt`, then `steps` greedy tokens (eos does not stop it).
pub fn greedy(model: &LanguageModel, prompt: &[u32], steps: usize) -> Result<(Vec<f32>, Vec<u32>)> {
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
            return Err(teal::error::TealError::KvCacheFull("the pool is too small for this sequence".into()));
        }
        let mut meta = AttnMeta::new(bs);
        meta.push_sequence(cached..tokens.len(), |p| table.slot(p), table.ids());
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

/// Teacher-forced: `prompt` then `continuation` in one pass; for every continuation token, the log-probability
/// of the model's own best token and of the given one, and the best token's id.
pub fn forced(model: &LanguageModel, prompt: &[u32], continuation: &[u32]) -> Result<Vec<(f32, f32, u32)>> {
    let c = model.llama.config();
    let bs = 16;
    let tokens: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
    let pool = KvPool::new(c.num_layers, c.num_kv_heads, c.head_dim, tokens.len() + bs, bs, model.llama.device())?;
    let mut table = pool.alloc.table();
    if !table.reserve(tokens.len()) {
        return Err(teal::error::TealError::KvCacheFull("the pool is too small for this sequence".into()));
    }
    let mut meta = AttnMeta::new(bs);
    meta.push_sequence(0..tokens.len(), |p| table.slot(p), table.ids());
    let rows = (prompt.len() - 1..tokens.len() - 1).map(|r| r as u32).collect();
    let input = StepInput { tokens, meta: Arc::new(meta), logits_rows: rows };
    let logits = model.llama.forward(&input, &pool)?.to_vec2::<f32>()?;
    Ok(logits
        .iter()
        .zip(continuation)
        .map(|(row, &want)| {
            let best = argmax(row);
            let max = row[best as usize];
            let log_z = max + row.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
            (max - log_z, row[want as usize] - log_z, best)
        })
        .collect())
}
