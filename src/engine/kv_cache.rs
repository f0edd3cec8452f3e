//! The KV cache pool: per-layer key and value tensors preallocated at load (`max_total_tokens` slots), handed
//! out to sequences in fixed-size blocks. A sequence's `BlockTable` returns its blocks when dropped, so a
//! finished, cancelled or preempted sequence can never leak cache.

use crate::error::Result;
use crate::models::llama::KvView;
use candle_core::{DType, Device, Tensor};
use std::sync::{Arc, Mutex};

/// Free-list of block ids, shared by the pool and every live `BlockTable`.
#[derive(Debug)]
struct FreeList {
    free: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Arc<Mutex<FreeList>>,
    total: usize,
    pub block_size: usize,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Reverse so blocks are handed out in ascending order (easier to read in tests and dumps).
        let free = (0..num_blocks as u32).rev().collect();
        BlockAllocator { free: Arc::new(Mutex::new(FreeList { free })), total: num_blocks, block_size }
    }

    pub fn total_blocks(&self) -> usize {
        self.total
    }

    pub fn free_blocks(&self) -> usize {
        self.lock().free.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreeList> {
        // The free list is a plain Vec: a panic elsewhere cannot leave it inconsistent, so poisoning is ignored.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// An empty table bound to this pool.
    pub fn table(&self) -> BlockTable {
        BlockTable { ids: vec![], alloc: self.clone() }
    }
}

/// The blocks one sequence holds, in position order. Dropping it frees them.
#[derive(Debug)]
pub struct BlockTable {
    ids: Vec<u32>,
    alloc: BlockAllocator,
}

impl BlockTable {
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Grows the table to hold `tokens` positions; false (and nothing taken) if the pool is short.
    pub fn reserve(&mut self, tokens: usize) -> bool {
        let need = self.alloc.blocks_for(tokens).saturating_sub(self.ids.len());
        if need == 0 {
            return true;
        }
        let mut fl = self.alloc.lock();
        if fl.free.len() < need {
            return false;
        }
        let at = fl.free.len() - need;
        self.ids.extend(fl.free.drain(at..).rev());
        true
    }

    /// The pool slot of position `pos`.
    pub fn slot(&self, pos: usize) -> u32 {
        let bs = self.alloc.block_size;
        self.ids[pos / bs] * bs as u32 + (pos % bs) as u32
    }

    pub fn release(&mut self) {
        if !self.ids.is_empty() {
            self.alloc.lock().free.append(&mut self.ids);
        }
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.release();
    }
}

/// Slots of a pool for `max_tokens` tokens: whole blocks, rounded up.
pub fn pool_slots(max_tokens: usize, block_size: usize) -> usize {
    max_tokens.div_ceil(block_size.max(1)) * block_size.max(1)
}

/// Bytes of a pool: layers x 2 (keys, values) x slots x kv heads x head dim x 4 (f32). What `KvPool::new`
/// allocates, and what admission (memory/) reserves for it.
pub fn pool_bytes(layers: usize, kv_heads: usize, head_dim: usize, max_tokens: usize, block_size: usize) -> u64 {
    (layers * 2 * pool_slots(max_tokens, block_size) * kv_heads * head_dim * 4) as u64
}

/// The device tensors behind the blocks: per layer `[slots, kv_heads, head_dim]` f32 keys and values.
pub struct KvPool {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    pub alloc: BlockAllocator,
}

impl KvPool {
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        max_tokens: usize,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let slots = pool_slots(max_tokens, block_size);
        let num_blocks = slots / block_size.max(1);
        let shape = (slots, kv_heads, head_dim);
        let mk = || -> candle_core::Result<Tensor> {
            if device.is_cpu() {
                // Filled with -0.0 (not all-zero bytes) so the allocator cannot hand out lazily mapped zero
                // pages: the whole pool is resident now, counted in memory reports, and a first request pays no
                // page faults. Slots are always written before they are read.
                Tensor::from_vec(vec![-0.0f32; slots * kv_heads * head_dim], shape, device)
            } else {
                Tensor::zeros(shape, DType::F32, device)
            }
        };
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(mk()?);
            v.push(mk()?);
        }
        Ok(KvPool { k, v, alloc: BlockAllocator::new(num_blocks, block_size) })
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|t| t.elem_count() * 4).sum()
    }

    pub fn capacity_tokens(&self) -> usize {
        self.alloc.total_blocks() * self.alloc.block_size
    }

    pub fn usage(&self) -> f64 {
        1.0 - self.alloc.free_blocks() as f64 / self.alloc.total_blocks().max(1) as f64
    }
}

impl KvView for KvPool {
    fn layer(&self, i: usize) -> (&Tensor, &Tensor) {
        (&self.k[i], &self.v[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_reserve_and_free_on_drop() {
        let a = BlockAllocator::new(4, 16);
        let mut t1 = a.table();
        assert!(t1.reserve(17));
        assert_eq!(t1.ids(), &[0, 1]);
        assert_eq!(t1.slot(17), 17);
        let mut t2 = a.table();
        assert!(!t2.reserve(49), "needs 4 blocks, only 2 free");
        assert_eq!(a.free_blocks(), 2, "a failed reserve takes nothing");
        assert!(t2.reserve(32));
        assert_eq!(a.free_blocks(), 0);
        drop(t1);
        assert_eq!(a.free_blocks(), 2);
        drop(t2);
        assert_eq!(a.free_blocks(), 4);
    }
}
