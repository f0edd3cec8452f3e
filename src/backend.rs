//! What a resident model version serves requests with, by model kind: the LLM engine (continuous batching over
//! a paged KV cache), or a dynamic batcher around an embedding model or an image classifier. The router, the
//! lifecycle and the API see one `Backend` per slot and ask it for the kind they need.

use crate::batcher::{BatchModel, Batcher};
use crate::engine::Engine;
use crate::error::Result;
use crate::models::classifier::Classifier;
use crate::models::embedding::Embedder;
use crate::slot::ModelKind;

pub enum Backend {
    Llm(Engine),
    Embed(Batcher<Embedder>),
    Classify(Batcher<Classifier>),
}

impl Backend {
    pub fn kind(&self) -> ModelKind {
        match self {
            Backend::Llm(_) => ModelKind::TextGeneration,
            Backend::Embed(_) => ModelKind::Embedding,
            Backend::Classify(_) => ModelKind::ImageClassification,
        }
    }

    pub fn engine(&self) -> Option<&Engine> {
        match self {
            Backend::Llm(e) => Some(e),
            _ => None,
        }
    }

    /// Bytes of the model's weights on its device.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Backend::Llm(e) => e.model().llama.weight_bytes(),
            Backend::Embed(b) => b.model().weight_bytes(),
            Backend::Classify(b) => b.model().net.weight_bytes(),
        }
    }

    /// Stops at once without waiting (a cancelled or timed-out standby): new requests are refused and the ones
    /// it holds end with an error, so whoever waits on them returns.
    pub fn abort(&self) {
        match self {
            Backend::Llm(e) => e.abort(),
            Backend::Embed(b) => b.close(),
            Backend::Classify(b) => b.close(),
        }
    }

    /// Stops serving: the engine's or batcher's thread ends after the work it holds.
    pub fn shutdown(&self) {
        match self {
            Backend::Llm(e) => e.shutdown(),
            Backend::Embed(b) => b.shutdown(),
            Backend::Classify(b) => b.shutdown(),
        }
    }
}

impl BatchModel for Embedder {
    type Input = Vec<u32>;
    type Output = Vec<f32>;
    fn run_batch(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        self.embed(&refs)
    }
}

impl BatchModel for Classifier {
    type Input = Vec<f32>;
    type Output = Vec<f32>;
    fn run_batch(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        self.logits(&refs)
    }
}
