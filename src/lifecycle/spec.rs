//! What a load asks for, resolved against the model repository: the path (which must stay inside the model
//! root), the model's own teal.toml (version, warm-up, gates) merged with the request's overrides, the device.

#![deny(clippy::indexing_slicing)]

use super::checks::config::GatesConfig;
use super::checks::config::WarmupConfig;
use crate::models::files::{ModelDir, MAX_CONFIG_BYTES};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Component, Path, PathBuf};

/// Why a requested model path was refused (HTTP 403 / 404 / 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{0} is outside the model root")]
    OutsideRoot(String),
    #[error("no model named {0} in the model root")]
    NotFound(String),
    #[error("invalid model path: {0}")]
    Invalid(String),
}

/// `requested` (a name in `root`, or a path under it, relative or absolute) as a canonical path inside the root.
/// `..`, absolute paths elsewhere and symlinks that lead out are refused.
pub fn resolve_in_root(root: &Path, requested: &str) -> Result<PathBuf, PathError> {
    if requested.is_empty() || requested.contains('\0') || requested.len() > 4096 {
        return Err(PathError::Invalid("empty, too long or containing NUL".into()));
    }
    let root =
        root.canonicalize().map_err(|_| PathError::NotFound(format!("{requested} (the model root is missing)")))?;
    let req = Path::new(requested);
    let joined = if req.is_absolute() { req.to_path_buf() } else { root.join(req) };
    match joined.canonicalize() {
        Ok(real) if real.starts_with(&root) && real != root => Ok(real),
        Ok(_) => Err(PathError::OutsideRoot(requested.into())),
        // A path that does not exist: say "outside" if it would be, so probing cannot map the file system.
        Err(_) if !lexically_inside(&root, &joined) => Err(PathError::OutsideRoot(requested.into())),
        Err(_) => Err(PathError::NotFound(requested.into())),
    }
}

fn lexically_inside(root: &Path, p: &Path) -> bool {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return false;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.starts_with(root)
}

/// The model's own settings: a teal.toml inside its directory, or beside its .gguf file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelToml {
    /// text-generation, embedding or image-classification; absent: detected from the files.
    pub kind: Option<String>,
    pub version: Option<String>,
    /// An image classifier's architecture, weights, labels and preprocessing.
    pub classifier: Option<toml::Value>,
    pub warmup: Option<toml::Value>,
    pub gates: Option<toml::Value>,
    /// `[timeouts]`: how long each stage of a load may take.
    pub timeouts: Option<toml::Value>,
    /// `[rollout]`: defaults for rollouts to this model (steps, intervals, shadow rate, analysis).
    pub rollout: Option<toml::Value>,
}

/// How long each stage of a load (or wake) may run before the controller fails it with that reason. Generous:
/// they exist so a hung stage cannot hold a slot forever, not to police slow disks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Hashing, reading and placing the weights, starting the engine (and a wake's move back to the device).
    pub load_s: f64,
    pub warmup_s: f64,
    pub gates_s: f64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { load_s: 900.0, warmup_s: 600.0, gates_s: 600.0 }
    }
}

impl Timeouts {
    fn validate(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && (0.001..=86_400.0).contains(&v);
        if ok(self.load_s) && ok(self.warmup_s) && ok(self.gates_s) {
            Ok(())
        } else {
            Err("timeouts: each of load_s, warmup_s, gates_s must be between 0.001 and 86400 seconds".into())
        }
    }
}

pub fn model_toml_path(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join("teal.toml")
    } else {
        model.with_file_name("teal.toml")
    }
}

/// The model's teal.toml (inside its directory, at most `MAX_CONFIG_BYTES`), or the defaults when it has none.
pub fn read_model_toml(model: &Path) -> Result<ModelToml, String> {
    let dir = ModelDir::of(model).map_err(|e| e.to_string())?;
    let Some(text) = dir.read_text("teal.toml", MAX_CONFIG_BYTES).map_err(|e| e.to_string())? else {
        return Ok(ModelToml::default());
    };
    toml::from_str(&text).map_err(|e| format!("{}: {e}", model_toml_path(model).display()))
}

/// Deep merge: objects merge key by key, anything else in `over` replaces `base`.
pub fn merge_json(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Object(mut b), Value::Object(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(bv) => merge_json(bv, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (_, o) => o,
    }
}

/// The model's settings under the request's overrides, parsed and checked against their caps.
pub fn effective_settings(
    file: &ModelToml,
    warmup_over: Option<Value>,
    gates_over: Option<Value>,
    timeouts_over: Option<Value>,
) -> Result<(WarmupConfig, GatesConfig, Timeouts), String> {
    let to_json = |v: &Option<toml::Value>| -> Result<Value, String> {
        v.as_ref().map(serde_json::to_value).transpose().map(|v| v.unwrap_or(Value::Null)).map_err(|e| e.to_string())
    };
    let merge = |file_v: Value, over: Option<Value>| {
        let base = if file_v.is_null() { Value::Object(Default::default()) } else { file_v };
        merge_json(base, over.unwrap_or(Value::Object(Default::default())))
    };
    let warmup = merge(to_json(&file.warmup)?, warmup_over);
    let gates = merge(to_json(&file.gates)?, gates_over);
    let timeouts = merge(to_json(&file.timeouts)?, timeouts_over);
    let warmup: WarmupConfig = serde_json::from_value(warmup).map_err(|e| format!("warmup: {e}"))?;
    let gates: GatesConfig = serde_json::from_value(gates).map_err(|e| format!("gates: {e}"))?;
    let timeouts: Timeouts = serde_json::from_value(timeouts).map_err(|e| format!("timeouts: {e}"))?;
    warmup.validate()?;
    gates.validate()?;
    timeouts.validate()?;
    Ok((warmup, gates, timeouts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("m")).unwrap();
        std::fs::write(root.path().join("m/x.gguf"), b"").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        let r = |s: &str| resolve_in_root(root.path(), s);
        let real = root.path().canonicalize().unwrap();
        assert_eq!(r("m").unwrap(), real.join("m"));
        assert_eq!(r("m/x.gguf").unwrap(), real.join("m/x.gguf"));
        assert_eq!(r("m/../m").unwrap(), real.join("m"));
        assert_eq!(r(real.join("m").to_str().unwrap()).unwrap(), real.join("m"), "absolute inside is fine");
        assert!(matches!(r("../x"), Err(PathError::OutsideRoot(_))));
        assert!(matches!(r("m/../../etc"), Err(PathError::OutsideRoot(_))));
        assert!(matches!(r("/etc/passwd"), Err(PathError::OutsideRoot(_))));
        assert!(matches!(r("/nonexistent/x"), Err(PathError::OutsideRoot(_))));
        assert!(matches!(r("escape"), Err(PathError::OutsideRoot(_))), "symlink leading out");
        assert!(matches!(r("."), Err(PathError::OutsideRoot(_))), "the root itself is not a model");
        assert!(matches!(r("nope"), Err(PathError::NotFound(_))));
        assert!(matches!(r(""), Err(PathError::Invalid(_))));
    }

    #[test]
    fn request_overrides_merge_into_the_model_file() {
        let file: ModelToml = toml::from_str(
            "version = \"v7\"\n[gates.smoke]\nrequests = 3\n[gates.golden]\nthreshold = 0.5\n[warmup]\nmax_tokens = 4\n",
        )
        .unwrap();
        let (w, g, t) = effective_settings(
            &file,
            Some(json!({"enabled": false})),
            Some(json!({"smoke": {"concurrency": 1}})),
            Some(json!({"gates_s": 5})),
        )
        .unwrap();
        assert_eq!((t.gates_s, t.load_s), (5.0, 900.0));
        assert_eq!((w.enabled, w.max_tokens), (false, 4));
        assert_eq!((g.smoke.requests, g.smoke.concurrency, g.golden.threshold), (3, 1, 0.5));
        assert!(effective_settings(&file, None, Some(json!({"smok": {}})), None).unwrap_err().contains("gates"));
        let huge = Some(json!({"smoke": {"requests": 100_000_000}}));
        assert!(effective_settings(&file, None, huge, None).unwrap_err().contains("smoke.requests"));
        assert!(effective_settings(&file, None, None, Some(json!({"load_s": -1}))).unwrap_err().contains("timeouts"));
    }
}
