//! An image-classification model version: the network, its labels and its preprocessing, loaded together from
//! one directory whose teal.toml names them (`kind = "image-classification"`, `[classifier]`). Batches of
//! preprocessed images in, logits out.

#![deny(clippy::indexing_slicing)]

use super::efficientnet_lite::EfficientNetLite;
use super::image::Preprocess;
use crate::error::{Result, TealError};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// teal.toml `[classifier]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    pub architecture: String,
    /// The weights file (a PyTorch state dict), relative to the model directory.
    pub weights: String,
    /// One label per line, in class order.
    pub labels: String,
    pub preprocess: Preprocess,
}

impl ClassifierSpec {
    /// A file named by the spec: a relative path that resolves inside the model directory (symlinks included).
    pub fn file(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        super::files::ModelDir::of(dir)?.require(name)
    }
}

pub struct Classifier {
    pub name: String,
    pub source: PathBuf,
    pub net: EfficientNetLite,
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    pub device: Device,
    pub format: String,
}

impl Classifier {
    pub fn load(dir: &Path, spec: &ClassifierSpec, device: &Device) -> Result<Self> {
        if spec.architecture != "efficientnet-lite0" {
            return Err(TealError::UnsupportedModel(format!(
                "classifier architecture {:?}; supported: efficientnet-lite0",
                spec.architecture
            )));
        }
        spec.preprocess.validate().map_err(TealError::InvalidModel)?;
        let weights = spec.file(dir, &spec.weights)?;
        let tensors = super::pth::read(&weights)?;
        let net = EfficientNetLite::lite0(&tensors, device)?;
        let labels_path = spec.file(dir, &spec.labels)?;
        let text = String::from_utf8(super::files::read_capped(&labels_path, super::files::MAX_LABELS_BYTES)?)
            .map_err(|_| TealError::InvalidModel(format!("{}: not UTF-8 text", labels_path.display())))?;
        let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        if labels.len() != net.num_classes {
            return Err(TealError::InvalidModel(format!(
                "{}: {} labels for {} classes",
                labels_path.display(),
                labels.len(),
                net.num_classes
            )));
        }
        Ok(Classifier {
            name: String::new(),
            source: dir.to_path_buf(),
            net,
            labels,
            preprocess: spec.preprocess.clone(),
            device: device.clone(),
            format: "pth F32".into(),
        })
    }

    /// The side of the square input the model takes.
    pub fn input_size(&self) -> usize {
        self.preprocess.crop as usize
    }

    /// Logits of each image of a batch of preprocessed inputs (each [3, size, size], flattened).
    pub fn logits(&self, batch: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        let s = self.input_size();
        let flat: Vec<f32> = batch.iter().flat_map(|x| x.iter().copied()).collect();
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let x = Tensor::from_vec(flat, (batch.len(), 3, s, s), &self.device)?;
            self.net.forward(&x)?.to_vec2::<f32>()
        };
        run().map_err(TealError::from)
    }
}
