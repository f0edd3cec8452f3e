//! One request inside the engine: its tokens, KV blocks, sampler and the text it has produced. Turns each new
//! token into the text the client may see now, holding back anything that could still become a stop string.

use super::constraint::Constraint;
use super::kv_cache::BlockTable;
use super::request::{Event, FinishReason, GenRequest, PositionScore, SamplingParams, Scoring, TokenLogprob};
use super::sampling::Sampler;
use super::score::score_row;
use crate::models::tokenizer::{IncrementalDecoder, TextTokenizer};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

pub struct Sequence {
    /// Prompt followed by every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Positions whose keys and values are in the KV pool.
    pub cached: usize,
    /// Prompt positions the prefix cache supplied when the sequence was first admitted (reported to the client).
    pub cached_prompt: Option<usize>,
    pub blocks: BlockTable,
    pub params: SamplingParams,
    sampler: Sampler,
    /// Made at the first new token, with the prompt's tail as context.
    decoder: Option<IncrementalDecoder>,
    /// Generated text so far (stop string excluded once found).
    text: String,
    /// Bytes of `text` already sent.
    sent: usize,
    events: UnboundedSender<Event>,
    pub arrived: Instant,
    pub first_scheduled: Option<Instant>,
    last_token_at: Option<Instant>,
    /// Tokens that end generation: the model's eos ids (unless ignored) and the request's own.
    stop_ids: Vec<u32>,
    /// teal's own request (warm-up, gates, shadow): kept out of the client metrics.
    pub internal: bool,
    /// A scoring sequence (teacher forcing) and the scores it has so far.
    pub score: Option<Scoring>,
    scores: Vec<PositionScore>,
    /// The grammar the output follows (constrained decoding), with its next mask.
    constraint: Option<Constraint>,
}

/// What happened when a token was added.
pub struct Step {
    pub finished: Option<FinishReason>,
    /// Seconds since the previous token (None for the first).
    pub inter_token: Option<f64>,
    pub first_token_latency: Option<f64>,
}

impl Sequence {
    pub fn new(req: GenRequest, mut blocks: BlockTable, eos_ids: &[u32]) -> Self {
        if let Some(salt) = &req.params.cache_salt {
            blocks.salt(salt);
        }
        let mut stop_ids = req.params.stop_token_ids.clone();
        if !req.params.ignore_eos {
            stop_ids.extend_from_slice(eos_ids);
        }
        let constraint = req.params.constraint.as_ref().filter(|_| req.score.is_none()).map(Constraint::start);
        Sequence {
            constraint,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            cached: 0,
            cached_prompt: None,
            blocks,
            sampler: Sampler::new(req.params.seed),
            params: req.params,
            decoder: None,
            text: String::new(),
            sent: 0,
            events: req.events,
            arrived: req.arrived,
            first_scheduled: None,
            last_token_at: None,
            stop_ids,
            internal: req.internal,
            score: req.score,
            scores: vec![],
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// The client hung up (its receiver is gone).
    pub fn cancelled(&self) -> bool {
        self.events.is_closed()
    }

    pub fn send_error(&self, msg: &str) {
        let _ = self.events.send(Event::Error(msg.to_string()));
    }

    /// Samples the next token from this sequence's logits row and reports it to the client.
    pub fn sample(&mut self, logits: &mut [f32], tok: &TextTokenizer, max_context: usize) -> Step {
        let Some(c) = self.constraint.as_mut() else {
            let (id, lp) = self.sampler.sample(logits, &self.params, &self.tokens, self.prompt_len);
            return self.push(id, lp, tok, max_context, false);
        };
        // Near the end of the budget the output is steered to its end, so that it is complete when it stops.
        let generated = self.tokens.len() - self.prompt_len;
        let left = self.params.max_tokens.min(max_context.saturating_sub(self.prompt_len)).saturating_sub(generated);
        let closing = left <= c.reserve();
        let mut masked = Ok(());
        let (id, lp) = self
            .sampler
            .sample_masked(logits, &self.params, &self.tokens, self.prompt_len, |l| masked = c.apply(l, closing));
        let complete = match masked {
            Ok(()) if self.stop_ids.contains(&id) => Ok(true),
            Ok(()) => c.advance(id),
            Err(e) => Err(e),
        };
        match complete {
            Ok(complete) => self.push(id, lp, tok, max_context, complete),
            Err(e) => {
                tracing::warn!(error = %e, "constrained decoding failed");
                self.send_error(&format!("constrained decoding failed: {e}"));
                Step { finished: Some(FinishReason::Stop), inter_token: None, first_token_latency: None }
            }
        }
    }

    /// Adds token `id`; `complete`: the output's grammar allows nothing after it.
    fn push(
        &mut self,
        id: u32,
        lp: Option<TokenLogprob>,
        tok: &TextTokenizer,
        max_context: usize,
        complete: bool,
    ) -> Step {
        let now = Instant::now();
        let inter_token = self.last_token_at.map(|t| (now - t).as_secs_f64());
        let first_token_latency = self.last_token_at.is_none().then(|| (now - self.arrived).as_secs_f64());
        self.last_token_at = Some(now);
        self.tokens.push(id);
        let (mut finished, mut cut) = (None, false);
        if self.stop_ids.contains(&id) {
            finished = Some(FinishReason::Stop);
        } else {
            // A decoding error on one token drops its text but must not fail the request.
            let prompt = self.tokens.get(..self.prompt_len).unwrap_or_default();
            let decoder = self.decoder.get_or_insert_with(|| IncrementalDecoder::after(tok, prompt));
            let delta = decoder.step(tok, id).unwrap_or_default();
            self.text.push_str(&delta);
            if let Some(at) = find_stop(&self.text, self.sent, &self.params.stop) {
                self.text.truncate(at);
                (finished, cut) = (Some(FinishReason::Stop), true);
            }
        }
        if finished.is_none() && complete {
            finished = Some(FinishReason::Stop);
        }
        if finished.is_none() && (self.generated() >= self.params.max_tokens || self.tokens.len() >= max_context) {
            finished = Some(FinishReason::Length);
        }
        if let (Some(_), false, Some(decoder)) = (finished, cut, self.decoder.as_mut()) {
            // The end: bytes held back for an incomplete character are text now (as in the whole decode).
            self.text.push_str(&decoder.finish(tok).unwrap_or_default());
        }
        let visible = if finished.is_some() {
            self.text.len()
        } else {
            self.text.len() - held_back(&self.text, &self.params.stop)
        };
        let text = self.text[self.sent..visible.max(self.sent)].to_string();
        self.sent = visible.max(self.sent);
        let _ = self.events.send(Event::Token { id, text, logprob: lp });
        if let Some(reason) = finished {
            let _ = self.events.send(Event::Done {
                reason,
                prompt_tokens: self.prompt_len,
                completion_tokens: self.generated(),
                cached_tokens: self.cached_prompt.unwrap_or_default(),
            });
        }
        Step { finished, inter_token, first_token_latency }
    }

    /// Positions the prefix cache may supply: all but the last known token (whose logits the next step needs),
    /// and for a scoring sequence nothing from the first position whose logits score a token.
    fn prefix_limit(&self) -> usize {
        let last = self.tokens.len().saturating_sub(1);
        match &self.score {
            Some(sc) => last.min(sc.from.saturating_sub(1)),
            None => last,
        }
    }

    /// What the prefix cache holds for this (waiting) sequence: positions and blocks others hold.
    pub fn peek_prefix(&mut self) -> (usize, usize) {
        let limit = self.prefix_limit();
        let p = self.blocks.peek_prefix(&self.tokens, limit);
        (p.blocks * self.blocks.block_size(), p.held)
    }

    /// On admission: takes the cached prefix (nothing if the cache is off or the table holds blocks already).
    /// Returns the positions reused.
    pub fn adopt_prefix(&mut self) -> usize {
        if self.cached > 0 {
            return 0;
        }
        let limit = self.prefix_limit();
        self.cached = self.blocks.adopt_prefix(&self.tokens, limit);
        self.cached
    }

    /// Forgets the cache (blocks freed) so the sequence can be recomputed from its tokens later.
    pub fn preempt(&mut self) {
        self.blocks.release();
        self.cached = 0;
        self.scores.clear();
    }

    /// Keeps the score of the token after position `p` (a scoring sequence).
    pub fn record_score(&mut self, p: usize, row: &[f32]) {
        let Some(sc) = &self.score else { return };
        let token = self.tokens.get(p + 1).copied().unwrap_or(0);
        let ask = (p + 1).checked_sub(sc.from).and_then(|i| sc.ask.get(i)).map(Vec::as_slice).unwrap_or(&[]);
        self.scores.push(score_row(row, token, ask));
    }

    /// A scoring sequence with its whole prompt read: sends the scores and ends.
    pub fn finish_scoring(&mut self) {
        let _ = self.events.send(Event::Scored(std::mem::take(&mut self.scores)));
        let _ = self.events.send(Event::Done {
            reason: FinishReason::Stop,
            prompt_tokens: self.prompt_len,
            completion_tokens: 0,
            cached_tokens: self.cached_prompt.unwrap_or_default(),
        });
    }
}

/// Byte offset of the first stop string that starts at or after `from`.
fn find_stop(text: &str, from: usize, stops: &[String]) -> Option<usize> {
    let from = floor_char_boundary(text, from);
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i)).min()
}

/// Length of the longest suffix of `text` that is a proper prefix of some stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > best && text.ends_with(&s[..i]) {
                best = i;
            }
        }
    }
    best
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_search_and_hold_back() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(find_stop("abc END x", 0, &stops), Some(4));
        assert_eq!(find_stop("a\n\nEND", 0, &stops), Some(1));
        assert_eq!(find_stop("abc", 0, &stops), None);
        assert_eq!(held_back("abc EN", &stops), 2);
        assert_eq!(held_back("abc\n", &stops), 1);
        assert_eq!(held_back("abc", &stops), 0);
        assert_eq!(held_back("é", &["éa".to_string()]), 2, "multi-byte prefixes are held whole");
    }
}
