//! Everything a load needs to know before the controller may admit it, worked out off the controller: the model
//! path (inside the model root for admin requests), the model's teal.toml merged with the request's overrides
//! (warm-up, gates, stage timeouts), the device and dtype, the memory estimate from the files' headers and the
//! weight files' signature. Model files are untrusted, so this runs on its own thread with a known stack under a
//! panic guard (`guard::run`): a hostile header fails the request with its reason and never reaches the
//! controller task, which only does the admission arithmetic on the result.

#![deny(clippy::indexing_slicing)]

use super::checks::config::GatesConfig;
use super::checks::config::WarmupConfig;
use super::spec::{self, Timeouts};
use super::{guard, AdminError, LoadRequest};
use crate::engine::EngineConfig;
use crate::memory::budget::Need;
use crate::slot::ModelKind;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The weight files (path, size, mtime) and dtype of a load: the same files in the other slot on the same device
/// share their weights, which admission credits.
pub type FileSignature = (Vec<(PathBuf, u64, Option<SystemTime>)>, Option<DType>);

/// The server-wide settings a load falls back on.
#[derive(Debug, Clone)]
pub struct LoadDefaults {
    pub models_dir: PathBuf,
    /// Default device per slot (blue, green).
    pub devices: [String; 2],
    pub dtype: String,
    pub engine: EngineConfig,
}

/// The model's own settings with the request's overrides applied.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub kind: ModelKind,
    pub version: Option<String>,
    /// An image classifier's `[classifier]` section.
    pub classifier: Option<toml::Value>,
    pub warmup: WarmupConfig,
    pub gates: GatesConfig,
    pub timeouts: Timeouts,
}

/// A load request, resolved and estimated.
pub struct Prepared {
    pub path: PathBuf,
    pub device_label: String,
    pub device: Device,
    pub dtype: Option<DType>,
    pub settings: LoadSettings,
    /// None when the headers could not be read: the loader then fails on the same files with its reason.
    pub estimate: Option<Need>,
    pub files: FileSignature,
}

fn signature(path: &Path, dtype: Option<DType>) -> FileSignature {
    let files = crate::models::weight_files(path).unwrap_or_default();
    let sig = files
        .into_iter()
        .map(|f| {
            let meta = f.metadata().ok();
            let (len, mtime) = (meta.as_ref().map(|m| m.len()).unwrap_or(0), meta.and_then(|m| m.modified().ok()));
            (f, len, mtime)
        })
        .collect();
    (sig, dtype)
}

/// Resolves, reads and estimates a load request (blocking; runs under `guard::run`).
fn prepare_blocking(
    defaults: &LoadDefaults,
    slot: usize,
    req: &LoadRequest,
    trusted: bool,
) -> Result<Prepared, AdminError> {
    let path =
        if trusted { PathBuf::from(&req.model) } else { spec::resolve_in_root(&defaults.models_dir, &req.model)? };
    if !path.exists() {
        return Err(AdminError::NotFound(format!("model not found: {}", path.display())));
    }
    let bad = |e: String| AdminError::BadRequest(e);
    let file = spec::read_model_toml(&path).map_err(bad)?;
    let (warmup, gates, timeouts) =
        spec::effective_settings(&file, req.warmup.clone(), req.gates.clone(), req.timeouts.clone()).map_err(bad)?;
    let kind = crate::models::detect_kind(&path, file.kind.as_deref()).map_err(|e| match e {
        crate::error::TealError::ModelNotFound(m) => AdminError::NotFound(format!("model not found: {m}")),
        other => AdminError::BadRequest(other.to_string()),
    })?;
    let default_device = defaults.devices.get(slot).or(defaults.devices.first()).cloned().unwrap_or_default();
    let label = req.device.clone().unwrap_or(default_device);
    let device = crate::device::parse_device(&label).map_err(|e| bad(e.to_string()))?;
    let dtype =
        crate::device::parse_dtype(req.dtype.as_deref().unwrap_or(&defaults.dtype)).map_err(|e| bad(e.to_string()))?;
    let estimate = crate::memory::estimate_load(&path, dtype, device.is_cpu(), &defaults.engine).ok();
    let files = signature(&path, dtype);
    let settings = LoadSettings {
        kind,
        version: req.version.clone().or(file.version),
        classifier: file.classifier,
        warmup,
        gates,
        timeouts,
    };
    Ok(Prepared { device_label: crate::device::label(&device), path, device, dtype, settings, estimate, files })
}

/// `prepare_blocking` on a guarded thread.
pub async fn prepare(
    defaults: std::sync::Arc<LoadDefaults>,
    slot: usize,
    req: LoadRequest,
    trusted: bool,
) -> Result<Prepared, AdminError> {
    guard::run("teal-prepare", move || prepare_blocking(&defaults, slot, &req, trusted))
        .await
        .map_err(|e| AdminError::BadRequest(format!("the model could not be read: {e}")))?
}
