//! The slot vocabulary every layer shares: the two slots, a loaded version's identity and its model kind. A leaf:
//! it imports nothing of teal, so the models, the engine, the router and the lifecycle can all name a slot or a
//! kind without importing each other.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotName {
    Blue,
    Green,
}

impl SlotName {
    pub const ALL: [SlotName; 2] = [SlotName::Blue, SlotName::Green];

    pub fn other(self) -> SlotName {
        match self {
            SlotName::Blue => SlotName::Green,
            SlotName::Green => SlotName::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SlotName::Blue => "blue",
            SlotName::Green => "green",
        }
    }

    pub fn parse(s: &str) -> Option<SlotName> {
        match s {
            "blue" => Some(SlotName::Blue),
            "green" => Some(SlotName::Green),
            _ => None,
        }
    }
}

impl std::fmt::Display for SlotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a loaded model version is: what the admin API reports and the audit log records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    pub version: String,
    pub source: PathBuf,
    /// sha256 of the weight files (of the one file, or of "name digest" lines for several).
    pub digest: String,
    pub device: String,
    pub format: String,
    pub kind: ModelKind,
}

/// What a model does, and so which API serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    TextGeneration,
    Embedding,
    ImageClassification,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::TextGeneration => "text-generation",
            ModelKind::Embedding => "embedding",
            ModelKind::ImageClassification => "image-classification",
        }
    }

    pub fn parse(s: &str) -> Option<ModelKind> {
        match s {
            "text-generation" | "llm" => Some(ModelKind::TextGeneration),
            "embedding" => Some(ModelKind::Embedding),
            "image-classification" => Some(ModelKind::ImageClassification),
            _ => None,
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
