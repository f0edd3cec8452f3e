//! A step's attention metadata: where each new token of a ragged batch lives (its sequence, position and pool
//! slot) and each sequence's block table; its validation against the pool before any kernel runs; and the cache of
//! its copy on a CUDA device (made by the first layer, reused by the rest).

use candle_core::Result;

/// Where each token of a ragged batch lives: its sequence, its position and its pool slot.
#[derive(Debug, Clone, Default)]
pub struct AttnMeta {
    /// Per new token: the index of its sequence in `block_tables`.
    pub token_seq: Vec<u32>,
    /// Per new token: its absolute position in its sequence.
    pub token_pos: Vec<u32>,
    /// Per new token: the pool slot its key/value is written to.
    pub slot_mapping: Vec<u32>,
    /// Per sequence: the pool blocks holding its positions, in order.
    pub block_tables: Vec<Vec<u32>>,
    pub block_size: usize,
    /// The same metadata on a CUDA device, copied once per step by the first layer that needs it.
    pub device_copy: MetaCache,
}

impl AttnMeta {
    /// Metadata for one step over pools of `block_size`-token blocks, with no sequence yet.
    pub fn new(block_size: usize) -> Self {
        AttnMeta { block_size, ..Default::default() }
    }

    /// Adds a sequence whose new tokens are at `positions`: `slot` maps a position to its pool slot, `blocks` is
    /// the sequence's block table. The one way both the engine and the direct runner describe a step.
    pub fn push_sequence(&mut self, positions: std::ops::Range<usize>, slot: impl Fn(usize) -> u32, blocks: &[u32]) {
        let seq = self.block_tables.len() as u32;
        for pos in positions {
            self.token_seq.push(seq);
            self.token_pos.push(pos as u32);
            self.slot_mapping.push(slot(pos));
        }
        self.block_tables.push(blocks.to_vec());
    }

    pub fn num_tokens(&self) -> usize {
        self.token_seq.len()
    }
}

/// Runs of up to `max_len` consecutive new tokens of the same sequence with consecutive positions (how the worker
/// lays out each sequence's new tokens): `(first token, count)`, covering every token once, in order. Attention
/// reads each key/value row once per run, for all of the run's queries (the CPU op and the CUDA prefill kernel).
pub fn runs(meta: &AttnMeta, max_len: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = vec![];
    for t in 0..meta.num_tokens() {
        match runs.last_mut() {
            Some((start, len))
                if *len < max_len
                    && meta.token_seq[*start] == meta.token_seq[t]
                    && meta.token_pos[t] == meta.token_pos[*start] + *len as u32 =>
            {
                *len += 1
            }
            _ => runs.push((t, 1)),
        }
    }
    runs
}

/// Decode splits: at least this many positions each, enough blocks to fill an H100/H200 (132 SMs) twice, and
/// at most this many splits (a bound on the partials' workspace).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const MIN_SPLIT_POSITIONS: usize = 128;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const TARGET_BLOCKS: usize = 264;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const MAX_SPLITS: usize = 64;

/// How many splits the decode items get, and the positions per split: by the longest visible span, so one long
/// sequence is spread over enough blocks to fill the GPU, and never more than the work is worth.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn decode_splits(item_pos: &[u32], window: Option<usize>, num_heads: usize) -> (usize, usize) {
    let span = |p: u32| (p as usize + 1).min(window.unwrap_or(usize::MAX));
    let longest = item_pos.iter().map(|&p| span(p)).max().unwrap_or(1).max(1);
    let by_length = longest.div_ceil(MIN_SPLIT_POSITIONS);
    let by_occupancy = TARGET_BLOCKS.div_ceil((num_heads * item_pos.len()).max(1));
    let splits = by_length.min(by_occupancy).clamp(1, MAX_SPLITS);
    (splits, longest.div_ceil(splits))
}

/// A step's attention metadata as copied to one CUDA device, made at the first layer and reused by the rest.
/// A clone starts empty: the copy belongs to the metadata it was made from.
/// Held type-erased, so this file needs no CUDA types (cuda.rs stores and reads its own `DeviceMeta`).
#[derive(Default)]
pub struct MetaCache {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) cell: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl Clone for MetaCache {
    fn clone(&self) -> Self {
        MetaCache::default()
    }
}

impl std::fmt::Debug for MetaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaCache")
    }
}

/// Checks that every token's sequence, block table entry and pool slot are in range, so a kernel can never read
/// or write outside the pool (an out-of-range access on a GPU poisons the whole CUDA context, both slots with it).
pub fn check_meta(meta: &AttnMeta, pool_slots: usize) -> Result<()> {
    let n = meta.num_tokens();
    if meta.token_pos.len() != n || meta.slot_mapping.len() != n || meta.block_size == 0 {
        candle_core::bail!("attention metadata: inconsistent lengths");
    }
    for t in 0..n {
        let Some(table) = meta.block_tables.get(meta.token_seq[t] as usize) else {
            candle_core::bail!("token {t}: sequence {} has no block table", meta.token_seq[t]);
        };
        if meta.token_pos[t] as usize / meta.block_size >= table.len() {
            candle_core::bail!("token {t}: position {} beyond its block table", meta.token_pos[t]);
        }
        if meta.slot_mapping[t] as usize >= pool_slots {
            candle_core::bail!("token {t}: kv slot {} outside the pool", meta.slot_mapping[t]);
        }
    }
    let blocks = pool_slots / meta.block_size;
    if let Some(b) = meta.block_tables.iter().flatten().find(|&&b| b as usize >= blocks) {
        candle_core::bail!("block {b} outside the pool ({blocks} blocks)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> AttnMeta {
        AttnMeta {
            token_seq: vec![0, 1],
            token_pos: vec![5, 0],
            slot_mapping: vec![5, 16],
            block_tables: vec![vec![0], vec![1]],
            block_size: 16,
            ..Default::default()
        }
    }

    #[test]
    fn long_decodes_are_split_and_busy_batches_are_not() {
        // One sequence at 4,000 positions, 9 heads: 30 splits of 134 positions (270 blocks).
        assert_eq!(decode_splits(&[3999], None, 9), (30, 134));
        // Short: one split covering it all.
        assert_eq!(decode_splits(&[100], None, 9), (1, 101));
        // 64 sequences x 9 heads already fill the GPU: no split however long.
        assert_eq!(decode_splits(&[8000; 64], None, 9), (1, 8001));
        // A window bounds the span: Gemma's local layers (512) at position 30,000.
        assert_eq!(decode_splits(&[30_000], Some(512), 4), (4, 128));
        // Never more than MAX_SPLITS.
        assert_eq!(decode_splits(&[1_000_000], None, 1).0, MAX_SPLITS);
    }

    #[test]
    fn runs_group_consecutive_positions_of_one_sequence() {
        let m = AttnMeta {
            token_seq: vec![0, 0, 0, 1, 2, 2, 0],
            token_pos: vec![7, 8, 9, 3, 0, 2, 10],
            ..Default::default()
        };
        assert_eq!(runs(&m, 16), vec![(0, 3), (3, 1), (4, 1), (5, 1), (6, 1)]);
        assert_eq!(runs(&m, 2), vec![(0, 2), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1)]);
        assert!(runs(&AttnMeta::default(), 4).is_empty());
    }

    #[test]
    fn metadata_in_range_passes_and_every_out_of_range_index_is_named() {
        check_meta(&meta(), 32).unwrap();
        type Spoil = fn(&mut AttnMeta);
        let cases: [(Spoil, &str); 5] = [
            (|m| m.token_seq[1] = 2, "has no block table"),
            (|m| m.token_pos[0] = 16, "beyond its block table"),
            (|m| m.slot_mapping[1] = 32, "outside the pool"),
            (|m| m.block_tables[1][0] = 2, "block 2 outside the pool"),
            (|m| m.token_pos.truncate(1), "inconsistent lengths"),
        ];
        for (spoil, want) in cases {
            let mut m = meta();
            spoil(&mut m);
            let err = check_meta(&m, 32).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }
}
