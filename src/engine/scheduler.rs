//! The batching policy, as a pure function: given the running and waiting sequences and the free KV blocks,
//! decide who runs this step with how many tokens, who is admitted, and who is preempted. The worker applies
//! the plan; nothing here touches tensors or channels, so every case is unit-tested.
//!
//! Policy: running sequences go first, oldest first (decode needs one token, a chunked prefill continues).
//! When the pool cannot grow a sequence, the newest running sequences are preempted (their blocks freed, their
//! tokens recomputed later). Waiting requests are admitted in arrival order while the batch has room, the step
//! has token budget and the pool has blocks for their whole prompt; the first that does not fit waits, and so
//! does everyone behind it (no starvation of long prompts).

/// What the scheduler needs to know about one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqView {
    /// Positions already in the KV cache; for a waiting sequence, the prefix the prefix cache holds for it.
    pub cached: usize,
    /// Positions known (prompt plus generated tokens).
    pub total: usize,
    /// Blocks held now; for a waiting sequence, the blocks of its cached prefix that running sequences hold
    /// (reusing them takes nothing from the free blocks).
    pub blocks: usize,
    /// Of `blocks`, those no other sequence holds: what preempting this one gives back (a prefix shared with
    /// others stays held).
    pub freeable: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub block_size: usize,
    /// Most sequences in one batch.
    pub max_seqs: usize,
    /// Most new tokens in one step (caps prefill chunks).
    pub max_step_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run this many new tokens, after growing the table to hold them.
    Run(usize),
    /// Nothing this step (token budget spent).
    Skip,
    /// Free the blocks and send back to the front of the queue.
    Preempt,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// One decision per running sequence, in the same order.
    pub running: Vec<Decision>,
    /// Admitted waiting sequences (the first `admit.len()` of the queue): tokens to run this step.
    pub admit: Vec<usize>,
}

fn blocks_for(tokens: usize, bs: usize) -> usize {
    tokens.div_ceil(bs)
}

pub fn plan(running: &[SeqView], waiting: &[SeqView], free_blocks: usize, lim: Limits) -> Plan {
    let bs = lim.block_size.max(1);
    let mut free = free_blocks;
    let mut budget = lim.max_step_tokens;
    let mut decisions = vec![Decision::Skip; running.len()];
    // Newest-first preemption candidates are taken from the end of `alive`.
    let mut alive: Vec<usize> = (0..running.len()).collect();
    let mut i = 0;
    while i < alive.len() {
        let s = running[alive[i]];
        let n = (s.total - s.cached).min(budget);
        if n == 0 {
            i += 1;
            continue;
        }
        let need = blocks_for(s.cached + n, bs).saturating_sub(s.blocks);
        while need > free && alive.len() > i + 1 {
            let victim = alive.pop().unwrap_or_default();
            decisions[victim] = Decision::Preempt;
            free += running[victim].freeable;
        }
        if need > free {
            decisions[alive[i]] = Decision::Preempt;
            free += s.freeable;
            alive.remove(i);
            continue;
        }
        free -= need;
        budget -= n;
        decisions[alive[i]] = Decision::Run(n);
        i += 1;
    }
    let mut admit = vec![];
    for (seqs, w) in (alive.len()..).zip(waiting) {
        if seqs >= lim.max_seqs || budget == 0 {
            break;
        }
        // The whole prompt plus the first generated token, so an admitted prefill never stalls half-way.
        let need = blocks_for(w.total + 1, bs).saturating_sub(w.blocks);
        if need > free {
            break;
        }
        let n = w.total.saturating_sub(w.cached).min(budget);
        free -= need;
        budget -= n;
        admit.push(n);
    }
    Plan { running: decisions, admit }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    const LIM: Limits = Limits { block_size: 4, max_seqs: 8, max_step_tokens: 64 };

    fn decoding(len: usize) -> SeqView {
        let blocks = (len - 1).div_ceil(4).max(1);
        SeqView { cached: len - 1, total: len, blocks, freeable: blocks }
    }
    fn waiting(len: usize) -> SeqView {
        SeqView { cached: 0, total: len, blocks: 0, freeable: 0 }
    }

    #[test]
    fn decodes_and_admits_in_one_step() {
        let p = plan(&[decoding(5), decoding(9)], &[waiting(10), waiting(3)], 10, LIM);
        assert_eq!(p.running, vec![Run(1), Run(1)]);
        assert_eq!(p.admit, vec![10, 3]);
    }

    #[test]
    fn a_cached_prefix_shortens_the_prefill_and_shared_blocks_cost_nothing() {
        // 20 tokens, 16 cached (4 blocks, 3 of them held by running sequences): 4 to run; 6 blocks for 21
        // positions, 3 already held elsewhere, so 3 must be free.
        let w = SeqView { cached: 16, total: 20, blocks: 3, freeable: 0 };
        assert_eq!(plan(&[], &[w], 3, LIM).admit, vec![4]);
        assert!(plan(&[], &[w], 2, LIM).admit.is_empty());
    }

    #[test]
    fn head_of_line_waits_when_pool_is_short() {
        // 10 tokens + 1 need 3 blocks; only 2 free. The small one behind must wait too (FIFO).
        let p = plan(&[], &[waiting(10), waiting(2)], 2, LIM);
        assert!(p.admit.is_empty());
    }

    #[test]
    fn respects_batch_and_token_limits() {
        let lim = Limits { max_seqs: 2, ..LIM };
        let p = plan(&[decoding(5)], &[waiting(3), waiting(3)], 100, lim);
        assert_eq!(p.admit, vec![3]);
        let lim = Limits { max_step_tokens: 20, ..LIM };
        let p = plan(&[decoding(5)], &[waiting(50)], 100, lim);
        assert_eq!(p.admit, vec![19], "prefill is chunked to the remaining budget");
    }

    #[test]
    fn chunked_prefill_continues_without_new_blocks() {
        let s = SeqView { cached: 16, total: 40, blocks: 11, freeable: 11 };
        let lim = Limits { max_step_tokens: 16, ..LIM };
        let p = plan(&[s], &[], 0, lim);
        assert_eq!(p.running, vec![Run(16)]);
    }

    #[test]
    fn preempts_newest_to_grow_oldest() {
        // Both at a block boundary: each needs one new block; none free.
        let a = SeqView { cached: 8, total: 9, blocks: 2, freeable: 2 };
        let b = SeqView { cached: 4, total: 5, blocks: 1, freeable: 1 };
        let p = plan(&[a, b], &[], 0, LIM);
        assert_eq!(p.running, vec![Run(1), Preempt]);
    }

    #[test]
    fn preempting_a_sequence_frees_only_the_blocks_it_holds_alone() {
        // b shares both its blocks with a: preempting it frees nothing, so a cannot grow either.
        let a = SeqView { cached: 8, total: 9, blocks: 2, freeable: 0 };
        let b = SeqView { cached: 8, total: 9, blocks: 2, freeable: 0 };
        let p = plan(&[a, b], &[waiting(1)], 0, LIM);
        assert_eq!(p.running, vec![Preempt, Preempt]);
        assert!(p.admit.is_empty());
    }

    #[test]
    fn a_lone_sequence_that_cannot_grow_is_preempted() {
        let a = SeqView { cached: 8, total: 9, blocks: 2, freeable: 2 };
        let p = plan(&[a], &[], 0, LIM);
        assert_eq!(p.running, vec![Preempt]);
    }

    #[test]
    fn preempted_blocks_do_not_admit_new_work_past_them() {
        let a = SeqView { cached: 8, total: 9, blocks: 2, freeable: 2 };
        let b = SeqView { cached: 4, total: 5, blocks: 1, freeable: 1 };
        let p = plan(&[a, b], &[waiting(1)], 0, LIM);
        // b's freed block went to a; nothing is left for the newcomer.
        assert_eq!(p.running, vec![Run(1), Preempt]);
        assert!(p.admit.is_empty());
    }
}
