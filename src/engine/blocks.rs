//! KV block bookkeeping: which pool blocks are free, which each sequence holds, and the prefix cache.
//!
//! The prefix cache keeps full blocks after the sequence that wrote them is gone. A full block is keyed by the
//! SHA-256 chain of its tokens (its own tokens and the key of the block before it), so a key names the whole
//! prefix up to and including that block, and two prompts that start with the same tokens share those blocks.
//! Blocks are reference-counted: a block held by any sequence is never evicted or written; a cached block that
//! no sequence holds waits in a least-recently-used list and is reused for new work only when the free list is
//! empty. Sequences write only positions past their reused prefix, so a shared block is read-only by
//! construction. One allocator per engine: two model versions never share KV.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The key of a full block: SHA-256 over the previous block's key and this block's token ids.
pub type BlockHash = [u8; 32];

/// The key of a block of `tokens` following the block keyed `prev` (None for the first block).
pub fn chain_hash(prev: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(prev.map_or([0u8; 32], |p| *p));
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

#[derive(Debug)]
struct State {
    free: Vec<u32>,
    /// Sequences holding each block.
    refs: Vec<u32>,
    /// The key of each cached block.
    key: Vec<Option<BlockHash>>,
    /// Cached blocks by key.
    cached: HashMap<BlockHash, u32>,
    /// Cached blocks nobody holds, by the tick of their release (oldest first): evicted in this order.
    idle: BTreeMap<u64, u32>,
    /// The tick under which an idle block sits in `idle`.
    idle_at: Vec<u64>,
    tick: u64,
    enabled: bool,
}

impl State {
    fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// One block for new contents: a free one, else the least recently used idle cached one (forgotten).
    fn take_one(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                if let Some(k) = self.key[b as usize].take() {
                    self.cached.remove(&k);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn hold(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.idle.remove(&self.idle_at[i]);
        }
        self.refs[i] += 1;
    }

    fn release(&mut self, b: u32) {
        let i = b as usize;
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] > 0 {
            return;
        }
        if self.key[i].is_some() {
            self.tick += 1;
            self.idle_at[i] = self.tick;
            self.idle.insert(self.tick, b);
        } else {
            self.free.push(b);
        }
    }
}

/// The pool's blocks, shared by the engine and every live `BlockTable`.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    state: Arc<Mutex<State>>,
    total: usize,
    pub block_size: usize,
}

/// What the prefix cache holds for a prompt, without taking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixPeek {
    /// Leading blocks of the prompt found in the cache.
    pub blocks: usize,
    /// Of those, blocks some sequence holds now (reusing them takes nothing from the free pool).
    pub held: usize,
}

impl BlockAllocator {
    /// `prefix_cache` false: blocks are freed when released and nothing is ever reused.
    pub fn new(num_blocks: usize, block_size: usize, prefix_cache: bool) -> Self {
        // Reversed so blocks are handed out in ascending order (easier to read in tests and dumps).
        let state = State {
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
            key: vec![None; num_blocks],
            cached: HashMap::new(),
            idle: BTreeMap::new(),
            idle_at: vec![0; num_blocks],
            tick: 0,
            enabled: prefix_cache,
        };
        BlockAllocator { state: Arc::new(Mutex::new(state)), total: num_blocks, block_size }
    }

    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Blocks new work may take: free ones and cached ones nobody holds.
    pub fn free_blocks(&self) -> usize {
        self.lock().available()
    }

    /// Blocks that hold a cached prefix (held or idle).
    pub fn cached_blocks(&self) -> usize {
        self.lock().cached.len()
    }

    pub fn prefix_cache(&self) -> bool {
        self.lock().enabled
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain vectors and maps updated in non-panicking steps: poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// An empty table bound to this pool.
    pub fn table(&self) -> BlockTable {
        BlockTable { ids: vec![], keys: vec![], published: 0, root: None, alloc: self.clone() }
    }

    /// How many of `keys` (a prompt's block keys, in order) the cache holds as a leading run.
    pub fn peek(&self, keys: &[BlockHash]) -> PrefixPeek {
        let st = self.lock();
        let mut p = PrefixPeek::default();
        if !st.enabled {
            return p;
        }
        for k in keys {
            let Some(&b) = st.cached.get(k) else { break };
            p.blocks += 1;
            p.held += usize::from(st.refs[b as usize] > 0);
        }
        p
    }
}

/// The blocks one sequence holds, in position order, and the keys of its full blocks. Dropping it releases
/// them.
#[derive(Debug)]
pub struct BlockTable {
    ids: Vec<u32>,
    /// Keys of the sequence's first full blocks (computed once; tokens only grow).
    keys: Vec<BlockHash>,
    /// Leading blocks already offered to the cache.
    published: usize,
    /// What the first block's key chains from: nothing, or a request's cache salt (only requests with the same
    /// salt share blocks).
    root: Option<BlockHash>,
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
        let mut st = self.alloc.lock();
        if st.available() < need {
            return false;
        }
        for _ in 0..need {
            match st.take_one() {
                Some(b) => self.ids.push(b),
                None => break, // cannot happen: `available` counted them under the same lock
            }
        }
        true
    }

    /// Blocks of this table no other table holds (what releasing it would give back).
    pub fn exclusive(&self) -> usize {
        let st = self.alloc.lock();
        self.ids.iter().filter(|&&b| st.refs[b as usize] == 1).count()
    }

    pub fn block_size(&self) -> usize {
        self.alloc.block_size
    }

    /// Keys this table's blocks under `salt` (before any key is computed): its blocks are shared only with
    /// tables of the same salt.
    pub fn salt(&mut self, salt: &str) {
        self.keys.clear();
        let mut h = Sha256::new();
        h.update(b"teal prefix cache salt\0");
        h.update(salt.as_bytes());
        self.root = Some(h.finalize().into());
    }

    /// The pool slot of position `pos`.
    pub fn slot(&self, pos: usize) -> u32 {
        let bs = self.alloc.block_size;
        self.ids[pos / bs] * bs as u32 + (pos % bs) as u32
    }

    /// Keys of the first `tokens.len() / block_size` blocks of `tokens` (at most `max_blocks`), extending what
    /// was computed before.
    pub fn keys(&mut self, tokens: &[u32], max_blocks: usize) -> &[BlockHash] {
        let bs = self.alloc.block_size;
        let want = (tokens.len() / bs).min(max_blocks);
        while self.keys.len() < want {
            let i = self.keys.len();
            let k = chain_hash(self.keys.last().or(self.root.as_ref()), &tokens[i * bs..(i + 1) * bs]);
            self.keys.push(k);
        }
        &self.keys[..want.min(self.keys.len())]
    }

    /// What the cache holds of the first `limit` positions of `tokens` (whole blocks only).
    pub fn peek_prefix(&mut self, tokens: &[u32], limit: usize) -> PrefixPeek {
        let max_blocks = limit / self.alloc.block_size;
        let alloc = self.alloc.clone();
        alloc.peek(self.keys(tokens, max_blocks))
    }

    /// An empty table takes the longest cached run of `tokens`' leading blocks within the first `limit`
    /// positions; returns the positions reused (a multiple of the block size).
    pub fn adopt_prefix(&mut self, tokens: &[u32], limit: usize) -> usize {
        if !self.ids.is_empty() {
            return 0;
        }
        let bs = self.alloc.block_size;
        let alloc = self.alloc.clone();
        let keys = self.keys(tokens, limit / bs).to_vec();
        let mut st = alloc.lock();
        if !st.enabled {
            return 0;
        }
        for k in &keys {
            let Some(&b) = st.cached.get(k) else { break };
            st.hold(b);
            self.ids.push(b);
        }
        self.published = self.ids.len();
        self.ids.len() * bs
    }

    /// Offers the full blocks among the first `cached` positions (written, never to change) to the cache. A
    /// block whose key is already cached under another block stays private.
    pub fn publish(&mut self, tokens: &[u32], cached: usize) {
        let bs = self.alloc.block_size;
        let full = (cached / bs).min(self.ids.len());
        if full <= self.published || !self.alloc.prefix_cache() {
            return;
        }
        let alloc = self.alloc.clone();
        let keys = self.keys(tokens, full).to_vec();
        let mut st = alloc.lock();
        let from = self.published;
        self.published = keys.len();
        for (k, &b) in keys.iter().zip(&self.ids).skip(from) {
            let i = b as usize;
            if st.key[i].is_none() && !st.cached.contains_key(k) {
                st.cached.insert(*k, b);
                st.key[i] = Some(*k);
            }
        }
    }

    /// Gives every block back (cached ones stay cached, idle once nobody holds them).
    pub fn release(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut st = self.alloc.lock();
        // Last block first: a prefix's tail is evicted before its head, which more prompts share.
        for &b in self.ids.iter().rev() {
            st.release(b);
        }
        self.ids.clear();
        self.published = 0;
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_reserve_and_free_on_drop() {
        let a = BlockAllocator::new(4, 16, false);
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

    fn written(a: &BlockAllocator, tokens: &[u32]) -> BlockTable {
        let mut t = a.table();
        assert!(t.reserve(tokens.len()));
        t.publish(tokens, tokens.len());
        t
    }

    #[test]
    fn a_released_prefix_is_reused_by_a_prompt_that_shares_it() {
        let a = BlockAllocator::new(8, 4, true);
        let first: Vec<u32> = (0..10).collect();
        let ids = written(&a, &first).ids().to_vec();
        assert_eq!(a.cached_blocks(), 2, "two full blocks cached, the partial third is not");
        assert_eq!(a.free_blocks(), 8, "idle cached blocks count as available");
        let mut second: Vec<u32> = (0..8).collect();
        second.extend([99, 98, 97]);
        let mut t = a.table();
        assert_eq!(t.peek_prefix(&second, 10), PrefixPeek { blocks: 2, held: 0 });
        assert_eq!(t.adopt_prefix(&second, 10), 8);
        assert_eq!(t.ids(), &ids[..2]);
        assert_eq!(a.free_blocks(), 6, "held blocks are not available");
        let mut third = a.table();
        assert_eq!(third.peek_prefix(&second, 10), PrefixPeek { blocks: 2, held: 2 });
        let other: Vec<u32> = (1..11).collect();
        assert_eq!(a.table().adopt_prefix(&other, 10), 0, "a different first block shares nothing");
    }

    #[test]
    fn the_limit_keeps_the_last_position_to_compute() {
        let a = BlockAllocator::new(8, 4, true);
        let p: Vec<u32> = (0..8).collect();
        drop(written(&a, &p));
        assert_eq!(a.table().adopt_prefix(&p, p.len() - 1), 4, "only the first block: one position must run");
    }

    #[test]
    fn idle_cached_blocks_are_evicted_least_recently_used_and_held_ones_never() {
        let a = BlockAllocator::new(4, 2, true);
        let old = written(&a, &[1, 2, 3, 4]);
        let new = written(&a, &[5, 6, 7, 8]);
        drop(old);
        drop(new);
        assert_eq!(a.cached_blocks(), 4);
        let mut keep = a.table();
        assert_eq!(keep.adopt_prefix(&[5, 6, 7, 8, 9], 4), 4);
        let mut t = a.table();
        assert!(t.reserve(4), "the two idle blocks are taken");
        assert!(!t.reserve(6), "held blocks are never evicted");
        assert_eq!(a.cached_blocks(), 2, "the evicted blocks left the cache");
        assert_eq!(a.table().adopt_prefix(&[1, 2, 3, 4, 0], 4), 0);
    }

    #[test]
    fn a_duplicate_block_stays_private_and_is_freed() {
        let a = BlockAllocator::new(4, 2, true);
        let t1 = written(&a, &[1, 2]);
        let t2 = written(&a, &[1, 2]);
        assert_eq!(a.cached_blocks(), 1);
        drop(t2);
        drop(t1);
        assert_eq!(a.free_blocks(), 4);
        assert_eq!(a.cached_blocks(), 1);
    }

    #[test]
    fn with_the_cache_off_nothing_is_kept() {
        let a = BlockAllocator::new(4, 2, false);
        drop(written(&a, &[1, 2, 3, 4]));
        assert_eq!(a.cached_blocks(), 0);
        assert_eq!(a.table().adopt_prefix(&[1, 2, 3, 4, 5], 4), 0);
    }

    #[test]
    fn a_salt_keeps_blocks_apart() {
        let a = BlockAllocator::new(8, 2, true);
        drop(written(&a, &[1, 2, 3, 4]));
        let mut salted = a.table();
        salted.salt("tenant-a");
        assert_eq!(salted.adopt_prefix(&[1, 2, 3, 4, 5], 4), 0, "unsalted blocks are not shared with a salt");
        assert!(salted.reserve(5));
        salted.publish(&[1, 2, 3, 4, 5], 4);
        drop(salted);
        let mut same = a.table();
        same.salt("tenant-a");
        assert_eq!(same.adopt_prefix(&[1, 2, 3, 4, 5], 4), 4);
        let mut other = a.table();
        other.salt("tenant-b");
        assert_eq!(other.adopt_prefix(&[1, 2, 3, 4, 5], 4), 0);
    }

    #[test]
    fn keys_chain_over_the_whole_prefix() {
        let a = BlockAllocator::new(4, 2, true);
        let mut t = a.table();
        let k1 = t.keys(&[1, 2, 3, 4], 8).to_vec();
        let mut u = a.table();
        let k2 = u.keys(&[9, 9, 3, 4], 8).to_vec();
        assert_eq!(k1.len(), 2);
        assert_ne!(k1[1], k2[1], "same tokens after a different prefix get a different key");
    }
}
