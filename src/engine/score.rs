//! Teacher-forced scoring inside the engine: which logits rows a scoring sequence needs in a step, and what
//! each row says about the token it predicts. A scoring sequence is a prompt read in (chunked) prefill like any
//! other; it never samples, and it ends when its last token is in the KV cache.

use super::request::PositionScore;
use super::sampling::{argmax, log_softmax};
use std::ops::Range;

/// Longest continuation one scoring request may score: each scored token costs a logits row (vocabulary-sized)
/// in the step that reads it.
pub const MAX_SCORED: usize = 64;
/// Most ids asked about per scored token.
pub const MAX_ASKED: usize = 20;

/// What a logits row of a step is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// Sample the next token of the batch's sequence `i`.
    Sample(usize),
    /// Score the token after position `p` of the batch's sequence `i`.
    Score(usize, usize),
}

/// Positions among `cached..cached + n` whose logits score a token of a `len`-token prompt scored from `from`:
/// position p predicts token p + 1.
pub fn scored_positions(from: usize, len: usize, cached: usize, n: usize) -> Range<usize> {
    let lo = cached.max(from.saturating_sub(1));
    let hi = (cached + n).min(len.saturating_sub(1));
    lo..hi.max(lo)
}

/// Reads one logits row: the log-probability of `token`, the model's top choice and the `ask`ed ids.
pub fn score_row(row: &[f32], token: u32, ask: &[u32]) -> PositionScore {
    let lp = log_softmax(row);
    let at = |id: u32| lp.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
    let best = argmax(&lp);
    PositionScore { logprob: at(token), top1: (best, at(best)), asked: ask.iter().map(|&id| at(id)).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_each_scored_token_once_across_chunks() {
        // 10 tokens, scored from 6: positions 5..9 predict tokens 6..10.
        let chunks = [(0, 4), (4, 3), (7, 3)];
        let all: Vec<usize> = chunks.iter().flat_map(|&(c, n)| scored_positions(6, 10, c, n)).collect();
        assert_eq!(all, vec![5, 6, 7, 8]);
        assert!(scored_positions(6, 10, 0, 4).is_empty());
    }

    #[test]
    fn a_row_reports_the_token_the_top_choice_and_asked_ids() {
        let s = score_row(&[0.0, 2.0, 1.0], 2, &[0, 1, 99]);
        assert_eq!(s.top1.0, 1);
        assert!((s.logprob - (1.0 - (1.0f32 + 2f32.exp() + 1f32.exp()).ln())).abs() < 1e-6);
        assert_eq!(s.asked.len(), 3);
        assert_eq!(s.asked[2], f32::NEG_INFINITY);
    }
}
