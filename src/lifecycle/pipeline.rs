//! The blocking half of a load: digest the weight files, load the model, start its engine, warm it, run its
//! gates. It writes no slot state; it reports each stage to the controller, which decides what the slot becomes.
//! A panic anywhere in here fails the load with a reason instead of touching the live slot.

use super::checks;
use super::guard::CancelFlag;
use super::prepare::Prepared;
use super::report::{JobError, Report};
use super::views::Phase;
use super::Command;
use crate::backend::Backend;
use crate::batcher::{BatchConfig, Batcher};
use crate::engine::{Engine, EngineConfig};
use crate::models::classifier::{Classifier, ClassifierSpec};
use crate::models::embedding::Embedder;
use crate::models::{self, LoadOptions};
use crate::router::{LiveRouter, Resident};
use crate::slot::ModelKind;
use crate::slot::{ModelIdentity, SlotName};
use crate::telemetry::Metrics;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

pub(crate) struct Job {
    pub op: String,
    pub slot: SlotName,
    pub load_id: u64,
    /// The request resolved and its settings merged (prepare.rs).
    pub prepared: Prepared,
    pub engine: EngineConfig,
    pub batch: BatchConfig,
    pub metrics: Metrics,
    pub router: Arc<LiveRouter>,
    pub registry: crate::models::shared::TensorRegistry,
    /// Set when the operation is cancelled or timed out: stop at the next stage.
    pub cancel: CancelFlag,
    pub tx: UnboundedSender<Command>,
}

impl Job {
    fn send(&self, r: Report) {
        let _ = self.tx.send(Command::Report(r));
    }

    fn progress(&self, p: f64) {
        self.send(Report::Progress { op: self.op.clone(), progress: p });
    }

    /// Runs every stage; whatever goes wrong ends as one `Failed` report.
    pub fn run(self) {
        let error = match crate::error::catching("loading", || self.stages()) {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(panic) => JobError::Internal(panic),
        };
        self.send(Report::Failed { op: self.op.clone(), error });
    }

    /// Err when the operation was cancelled (the controller has already failed the slot).
    fn check_cancel(&self) -> Result<(), JobError> {
        if self.cancel.load(std::sync::atomic::Ordering::Acquire) {
            return Err(JobError::Cancelled);
        }
        Ok(())
    }

    fn stages(&self) -> Result<(), JobError> {
        let t0 = Instant::now();
        let (p, s) = (&self.prepared, &self.prepared.settings);
        let files = models::weight_files(&p.path).map_err(JobError::at(Phase::Loading))?;
        let (digest, weights_bytes) =
            digest_files(&files, &|f| self.progress(f * 0.5), &self.cancel).map_err(JobError::at(Phase::Loading))?;
        let short = digest.get(..12).unwrap_or(&digest).to_string();
        let version = s.version.clone().unwrap_or(short);
        let name = models::model_name(&p.path);
        let metrics = self.metrics.for_slot(&name, self.slot.as_str(), &version);
        self.check_cancel()?;
        let (backend, format) = self.start_backend(metrics).map_err(JobError::at(Phase::Loading))?;
        self.check_cancel()?;
        let identity = ModelIdentity {
            name,
            version,
            source: p.path.clone(),
            digest: format!("sha256:{digest}"),
            device: p.device_label.clone(),
            format,
            kind: s.kind,
        };
        let resident = Arc::new(Resident::new(self.load_id, self.slot, identity, backend));
        let seconds = t0.elapsed().as_secs_f64();
        let warm = s.warmup.clone();
        self.send(Report::Loaded { op: self.op.clone(), resident: resident.clone(), seconds, weights_bytes, warm });

        let dir = model_dir(&p.path);
        let standby = checks::subject_of(&resident.backend, &s.warmup, &s.gates, &dir);
        let report = checks::warm(standby.as_ref(), &s.warmup, &|f| self.progress(f))
            .map_err(|e| JobError::Stage { phase: Phase::Warming, reason: format!("warm-up failed: {e}") })?;
        self.check_cancel()?;
        self.send(Report::Warmed { op: self.op.clone(), report });

        // The live slot is compared only when it serves the same kind (a flip between kinds is refused anyway).
        let live = self.router.peek().filter(|r| r.slot != self.slot && r.identity.kind == s.kind).map(|r| r.lease());
        let live = live.as_ref().map(|l| checks::subject_of(&l.resident().backend, &s.warmup, &s.gates, &dir));
        let report = checks::gate(&s.gates, standby.as_ref(), live.as_deref(), &|f| self.progress(f));
        self.send(Report::Gated { op: self.op.clone(), report });
        Ok(())
    }

    /// Loads the model as its kind says and starts what serves it; returns it with its format label.
    fn start_backend(&self, metrics: crate::telemetry::EngineMetrics) -> Result<(Backend, String), String> {
        let s = |e: crate::error::TealError| e.to_string();
        let p = &self.prepared;
        match p.settings.kind {
            ModelKind::TextGeneration => {
                let opts = LoadOptions { device: p.device.clone(), dtype: p.dtype, share: Some(self.registry.clone()) };
                let model = models::load(&p.path, &opts).map_err(s)?;
                let format = model.format.clone();
                let engine = Engine::start(Arc::new(model), self.engine.clone(), metrics).map_err(s)?;
                Ok((Backend::Llm(engine), format))
            }
            ModelKind::Embedding => {
                let model = Embedder::load(&model_dir(&p.path), &p.device).map_err(s)?;
                let format = model.format.clone();
                Ok((Backend::Embed(Batcher::start(Arc::new(model), self.batch, metrics).map_err(s)?), format))
            }
            ModelKind::ImageClassification => {
                let raw = p.settings.classifier.clone().ok_or(
                    "an image-classification model needs a [classifier] section in its teal.toml \
                     (architecture, weights, labels, preprocess)",
                )?;
                let spec: ClassifierSpec = raw.try_into().map_err(|e| format!("teal.toml [classifier]: {e}"))?;
                let model = Classifier::load(&model_dir(&p.path), &spec, &p.device).map_err(s)?;
                let format = model.format.clone();
                Ok((Backend::Classify(Batcher::start(Arc::new(model), self.batch, metrics).map_err(s)?), format))
            }
        }
    }
}

/// The model's directory (the path itself, or the folder of a single model file).
fn model_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// sha256 of the weight files (of the file itself when there is one; else of "name digest" lines) and their size.
/// Stops early when `cancel` is set.
fn digest_files(files: &[PathBuf], progress: &dyn Fn(f64), cancel: &CancelFlag) -> Result<(String, u64), String> {
    let total: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let mut done = 0u64;
    let mut per_file = vec![];
    for f in files {
        per_file.push((
            name_of(f),
            sha256_file(f, &mut |n| {
                done += n;
                progress(done as f64 / total.max(1) as f64);
                !cancel.load(std::sync::atomic::Ordering::Acquire)
            })?,
        ));
    }
    if let [(_, one)] = per_file.as_slice() {
        return Ok((one.clone(), total));
    }
    let mut h = Sha256::new();
    for (name, d) in &per_file {
        h.update(format!("{name} {d}\n").as_bytes());
    }
    Ok((hex::encode(h.finalize()), total))
}

fn name_of(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// sha256 of a file; `read` hears of every chunk and returns false to stop.
fn sha256_file(path: &Path, read: &mut dyn FnMut(u64) -> bool) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
        if !read(n as u64) {
            return Err("cancelled".into());
        }
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_one_file_is_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        std::fs::write(&a, b"abc").unwrap();
        let none = CancelFlag::default();
        let (d, n) = digest_files(std::slice::from_ref(&a), &|_| {}, &none).unwrap();
        assert_eq!(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(n, 3);
        let b = dir.path().join("b.bin");
        std::fs::write(&b, b"abc").unwrap();
        let (two, n) = digest_files(&[a.clone(), b], &|_| {}, &none).unwrap();
        none.store(true, std::sync::atomic::Ordering::Release);
        assert!(digest_files(&[a], &|_| {}, &none).is_err(), "a cancelled digest stops");
        assert_ne!(two, d);
        assert_eq!(n, 6);
    }
}
