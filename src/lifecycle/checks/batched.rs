//! The one-shot kinds (embeddings, image classification) as warm-up and the gates see them: probe requests go
//! through the version's own dynamic batcher (`infer_blocking`), made of synthetic inputs of the model's shape;
//! golden cases are sentence pairs with a cosine range and images (inside the model directory) with their top-1
//! label; agreement compares top-1 labels on the golden images.

use super::config::{GatesConfig, GoldenImage, GoldenPair, WarmupConfig};
use super::subject::{Golden, Purpose, Sample, Subject};
use crate::batcher::Batcher;
use crate::models::classifier::Classifier;
use crate::models::embedding::Embedder;
use crate::models::image;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// A batched version and what its gates need.
pub enum BatchedSubject<'a> {
    Embed(&'a Batcher<Embedder>),
    Classify { batcher: &'a Batcher<Classifier>, gates: &'a GatesConfig, dir: &'a Path },
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// The ids with their middle repeated until they are `len` long (first and last special tokens kept).
fn stretch(ids: &[u32], len: usize) -> Vec<u32> {
    let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else { return ids.to_vec() };
    if ids.len() < 3 || len <= ids.len() {
        return ids.to_vec();
    }
    let body = ids.get(1..ids.len() - 1).unwrap_or_default();
    let mut out = vec![first];
    out.extend(body.iter().copied().cycle().take(len - 2));
    out.push(last);
    out
}

fn well_formed(out: &[Vec<f32>], width: usize) -> Option<String> {
    out.iter().find_map(|o| {
        if o.len() != width {
            Some(format!("output of width {} (expected {width})", o.len()))
        } else if o.iter().any(|x| !x.is_finite()) {
            Some("non-finite output".into())
        } else {
            None
        }
    })
}

/// The bytes of a file the gates name, inside the model directory and under the golden-image size cap.
fn golden_file(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    use crate::models::files::{ModelDir, MAX_GOLDEN_IMAGE_BYTES};
    let dir = ModelDir::of(dir).map_err(|e| e.to_string())?;
    dir.read(name, MAX_GOLDEN_IMAGE_BYTES).map_err(|e| e.to_string())?.ok_or_else(|| format!("{name}: missing"))
}

/// The classifier's top-1 label for one golden image.
fn top1(b: &Batcher<Classifier>, g: &GoldenImage, dir: &Path) -> Result<String, String> {
    let bytes = golden_file(dir, &g.image)?;
    let m = b.model();
    let img = image::decode(&bytes, 100_000_000).map_err(|e| format!("{}: {e}", g.image))?;
    let x = image::preprocess(&img, &m.preprocess).map_err(|e| format!("{}: {e}", g.image))?;
    let logits = b.infer_blocking(vec![x]).map_err(|e| e.to_string())?;
    let row = logits.first().ok_or("the classifier returned no output")?;
    let top = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    m.labels.get(top).cloned().ok_or_else(|| "the classifier returned more classes than it has labels".into())
}

fn golden_pair(b: &Batcher<Embedder>, g: &GoldenPair) -> Result<(), String> {
    let m = b.model();
    let ids = [&g.a, &g.b].map(|t| m.tokenize(t).map_err(|e| e.to_string()));
    let [a, c] = ids;
    let out = b.infer_blocking(vec![a?, c?]).map_err(|e| e.to_string())?;
    let (Some(x), Some(y)) = (out.first(), out.get(1)) else { return Err("two inputs, fewer outputs".into()) };
    let cos = cosine(x, y);
    if (g.min..=g.max).contains(&cos) {
        Ok(())
    } else {
        Err(format!("cosine({:?}, {:?}) = {cos:.4}, outside [{}, {}]", g.a, g.b, g.min, g.max))
    }
}

impl BatchedSubject<'_> {
    fn max(&self) -> usize {
        match self {
            BatchedSubject::Embed(b) => b.config().max_batch,
            BatchedSubject::Classify { batcher, .. } => batcher.config().max_batch,
        }
    }

    /// Width of one output: embedding dimensions or classes.
    fn width(&self) -> usize {
        match self {
            BatchedSubject::Embed(b) => b.model().dimensions,
            BatchedSubject::Classify { batcher, .. } => batcher.model().net.num_classes,
        }
    }

    /// `n` synthetic inputs as one request; `salt` varies them; `long` makes text inputs as long as allowed.
    fn run(&self, n: usize, salt: usize, long: bool) -> Result<Sample, String> {
        let t = Instant::now();
        let out = match self {
            BatchedSubject::Embed(b) => {
                let m = b.model();
                let text = format!("Warm-up sentence {salt}: the quick brown fox jumps over the lazy dog.");
                let ids = m.tokenize(&text).map_err(|e| e.to_string())?;
                let ids = if long { stretch(&ids, m.max_tokens) } else { ids };
                b.infer_blocking(vec![ids; n]).map_err(|e| e.to_string())?
            }
            BatchedSubject::Classify { batcher, .. } => {
                let len = 3 * batcher.model().input_size().pow(2);
                let x: Vec<f32> = (0..len).map(|i| ((i * 7 + salt) % 255) as f32 / 255.0 - 0.5).collect();
                batcher.infer_blocking(vec![x; n]).map_err(|e| e.to_string())?
            }
        };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(Sample { first_ms: ms, total_ms: ms, problem: well_formed(&out, self.width()), ..Default::default() })
    }
}

impl Subject for BatchedSubject<'_> {
    fn streams(&self) -> bool {
        false
    }

    fn preload(&self) -> Result<Vec<String>, String> {
        Ok(vec![])
    }

    fn max_batch(&self) -> usize {
        self.max()
    }

    fn request(&self, purpose: Purpose, i: usize) -> Result<Sample, String> {
        match (purpose, self) {
            (Purpose::Smoke, _) => self.run(1 + i % 3, i, false),
            (Purpose::Agree, BatchedSubject::Classify { batcher, gates, dir }) => {
                let g = gates.golden_images.get(i).ok_or("no such golden image")?;
                let t = Instant::now();
                let label = top1(batcher, g, dir)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                Ok(Sample { first_ms: ms, total_ms: ms, answer: Some(label), ..Default::default() })
            }
            (Purpose::Warm | Purpose::Health, _) => self.run(1, 0, false),
            _ => self.run(1, i, false),
        }
    }

    fn batch(&self, size: usize) -> Result<usize, String> {
        self.run(size, size, false).map(|_| 1)
    }

    fn largest(&self, _: &WarmupConfig) -> Result<usize, String> {
        match self {
            BatchedSubject::Embed(b) => self.run(1, 0, true).map(|_| b.model().max_tokens),
            BatchedSubject::Classify { .. } => Ok(0),
        }
    }

    fn golden(&self, cfg: &GatesConfig) -> Option<Golden> {
        let failures: Vec<String> = match self {
            BatchedSubject::Classify { batcher, dir, .. } if !cfg.golden_images.is_empty() => cfg
                .golden_images
                .iter()
                .filter_map(|g| match top1(batcher, g, dir) {
                    Ok(got) if got == g.top1 => None,
                    Ok(got) => Some(format!("{}: top-1 is {got:?}, expected {:?}", g.image, g.top1)),
                    Err(e) => Some(e),
                })
                .collect(),
            BatchedSubject::Embed(b) if !cfg.golden_pairs.is_empty() => {
                cfg.golden_pairs.iter().filter_map(|g| golden_pair(b, g).err()).collect()
            }
            _ => return None,
        };
        let checked = match self {
            BatchedSubject::Classify { .. } => cfg.golden_images.len(),
            BatchedSubject::Embed(_) => cfg.golden_pairs.len(),
        };
        let details = json!({"passed": checked - failures.len(), "total": checked});
        Some(Golden { checked, failures, details })
    }

    fn agreement_inputs(&self) -> usize {
        match self {
            BatchedSubject::Classify { gates, .. } => gates.golden_images.len(),
            BatchedSubject::Embed(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretched_inputs_keep_their_special_tokens() {
        assert_eq!(stretch(&[101, 7, 8, 102], 7), vec![101, 7, 8, 7, 8, 7, 102]);
        assert_eq!(stretch(&[101, 102], 7), vec![101, 102], "nothing to repeat");
        assert_eq!(stretch(&[101, 7, 102], 2), vec![101, 7, 102], "already long enough");
    }
}
