//! Progressive delivery against real servers and real model variants: the canary split as clients see it, the
//! faults each comparison or guard must catch (a degenerate, a short-context, a slow and a perturbed version of
//! stories260K, each of which passes the default gates), A/A rollouts that must all promote, and the API.
//!
//! Variants are made here from stories260K's safetensors (candle reads and writes them):
//! - degenerate: every attention output and MLP down projection zeroed, so each layer adds nothing and the model
//!   is a bigram table that repeats itself;
//! - short context: `max_position_embeddings` 64 instead of 512 (refuses the longer prompts);
//! - slow: 120 extra layers whose output projections are zero (identity layers: the same answers, much later);
//! - perturbed: Gaussian noise on every MLP up projection (different answers, still fluent enough for the gates).

mod api;
mod faults;
mod split;
mod sticky;

pub use crate::common::rollout::*;
