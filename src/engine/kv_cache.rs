//! The KV cache pool: per-layer key and value tensors preallocated at load (`max_total_tokens` slots), handed
//! out to sequences in fixed-size blocks by a `BlockAllocator` (blocks.rs: free blocks, the tables sequences
//! hold, the prefix cache).

pub use super::blocks::{BlockAllocator, BlockTable};
use crate::error::Result;
use crate::models::llama::KvView;
use candle_core::{DType, Device, Tensor};

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
        Ok(KvPool { k, v, alloc: BlockAllocator::new(num_blocks, block_size, false) })
    }

    /// Turns the prefix cache on or off (off after `new`). Call before any block is handed out.
    pub fn with_prefix_cache(mut self, on: bool) -> Self {
        self.alloc = BlockAllocator::new(self.alloc.total_blocks(), self.alloc.block_size, on);
        self
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
