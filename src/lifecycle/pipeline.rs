//! The blocking half of a load: digest the weight files, load the model, start its engine, warm it, run its
//! gates. It writes no slot state; it reports each stage to the controller, which decides what the slot becomes.
//! A panic anywhere in here fails the load with a reason instead of touching the live slot.

use super::gates::{self, GateReport};
use super::warmup::{self, WarmupConfig, WarmupReport};
use super::{spec, Command};
use crate::engine::{Engine, EngineConfig};
use crate::models::{self, LoadOptions};
use crate::router::{LiveRouter, ModelIdentity, Resident, SlotName};
use crate::telemetry::Metrics;
use candle_core::{DType, Device};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

pub(crate) enum Report {
    Progress {
        op: String,
        progress: f64,
    },
    Loaded {
        op: String,
        resident: Arc<Resident>,
        seconds: f64,
        weights_bytes: u64,
        warm: WarmupConfig,
    },
    Warmed {
        op: String,
        report: WarmupReport,
    },
    Gated {
        op: String,
        report: GateReport,
    },
    Failed {
        op: String,
        reason: String,
    },
    /// A standby's engine stopped and its weights are in host memory.
    Parked {
        op: String,
        model: Arc<crate::models::Model>,
        seconds: f64,
        moved_bytes: u64,
    },
    /// A parked standby is back on its device, warmed.
    Woken {
        op: String,
        resident: Arc<Resident>,
        warmup: WarmupReport,
        timings: super::park::WakeTimings,
    },
}

pub(crate) struct Job {
    pub op: String,
    pub slot: SlotName,
    pub load_id: u64,
    pub path: PathBuf,
    pub version: Option<String>,
    pub device_label: String,
    pub device: Device,
    pub dtype: Option<DType>,
    pub engine: EngineConfig,
    pub metrics: Metrics,
    pub warmup_over: Option<Value>,
    pub gates_over: Option<Value>,
    pub router: Arc<LiveRouter>,
    pub registry: crate::models::shared::TensorRegistry,
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
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stages()));
        let reason = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(reason)) => reason,
            Err(_) => "internal error while loading (panic)".to_string(),
        };
        self.send(Report::Failed { op: self.op.clone(), reason });
    }

    fn stages(&self) -> Result<(), String> {
        let t0 = Instant::now();
        let settings = spec::read_model_toml(&self.path)?;
        let (warm_cfg, gate_cfg) =
            spec::effective_settings(&settings, self.warmup_over.clone(), self.gates_over.clone())?;
        let files = models::weight_files(&self.path).map_err(|e| e.to_string())?;
        let (digest, weights_bytes) = digest_files(&files, &|p| self.progress(p * 0.5))?;
        let model = models::load(
            &self.path,
            &LoadOptions { device: self.device.clone(), dtype: self.dtype, share: Some(self.registry.clone()) },
        )
        .map_err(|e| e.to_string())?;
        let version = self.version.clone().or(settings.version).unwrap_or_else(|| digest[..12].to_string());
        let identity = ModelIdentity {
            name: model.name.clone(),
            version: version.clone(),
            source: self.path.clone(),
            digest: format!("sha256:{digest}"),
            device: self.device_label.clone(),
            format: model.format.clone(),
        };
        let metrics = self.metrics.for_slot(&model.name, self.slot.as_str(), &version);
        let engine = Engine::start(Arc::new(model), self.engine.clone(), metrics).map_err(|e| e.to_string())?;
        let resident = Arc::new(Resident::new(self.load_id, self.slot, identity, engine));
        let seconds = t0.elapsed().as_secs_f64();
        let warm = warm_cfg.clone();
        self.send(Report::Loaded { op: self.op.clone(), resident: resident.clone(), seconds, weights_bytes, warm });

        let report = warmup::run(&resident.engine, &warm_cfg, &|p| self.progress(p))
            .map_err(|e| format!("warm-up failed: {e}"))?;
        self.send(Report::Warmed { op: self.op.clone(), report });

        let live = self.router.peek().filter(|r| r.slot != self.slot).map(|r| r.lease());
        let report =
            gates::run_all(&gate_cfg, &resident.engine, live.as_ref().map(|l| l.engine()), &|p| self.progress(p));
        self.send(Report::Gated { op: self.op.clone(), report });
        Ok(())
    }
}

/// sha256 of the weight files (of the file itself when there is one; else of "name digest" lines) and their size.
fn digest_files(files: &[PathBuf], progress: &dyn Fn(f64)) -> Result<(String, u64), String> {
    let total: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let mut done = 0u64;
    let mut per_file = vec![];
    for f in files {
        per_file.push((
            name_of(f),
            sha256_file(f, &mut |n| {
                done += n;
                progress(done as f64 / total.max(1) as f64);
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

fn sha256_file(path: &Path, read: &mut dyn FnMut(u64)) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        read(n as u64);
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
        let (d, n) = digest_files(std::slice::from_ref(&a), &|_| {}).unwrap();
        assert_eq!(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(n, 3);
        let b = dir.path().join("b.bin");
        std::fs::write(&b, b"abc").unwrap();
        let (two, n) = digest_files(&[a, b], &|_| {}).unwrap();
        assert_ne!(two, d);
        assert_eq!(n, 6);
    }
}
