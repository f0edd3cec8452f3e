//! GET /admin/models: what the model root holds, for the dashboard's load picker (and scripts). A model is a
//! directory (an HF checkpoint, a GGUF beside its teal.toml, a classifier) or a .gguf file, at the top of the
//! root or one folder down. Symlinks are not followed and the listing is bounded, so a huge or hostile root
//! costs little; loading still checks every path against the root.

#![deny(clippy::indexing_slicing)]

use super::super::admin_state::AdminState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::path::Path;

/// Most entries listed.
const MAX_ENTRIES: usize = 500;
/// Most directory entries read in all.
const MAX_SCANNED: usize = 10_000;

#[derive(Debug, Serialize, PartialEq)]
pub struct ModelEntry {
    /// What to put in a load request's "model": the path inside the root.
    pub name: String,
    /// "directory" or "gguf".
    pub kind: &'static str,
    /// The directory's files or the file, in bytes (top-level files only for a directory).
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub root: String,
    pub models: Vec<ModelEntry>,
    /// True when the root held more than the listing shows.
    pub truncated: bool,
}

/// Plain entries of a directory (no symlinks), sorted by name; at most `budget` read.
fn entries(dir: &Path, budget: &mut usize) -> Vec<(String, std::fs::Metadata)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let (Ok(name), Ok(meta)) = (e.file_name().into_string(), e.path().symlink_metadata()) else { continue };
        if !name.starts_with('.') && !meta.file_type().is_symlink() {
            out.push((name, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn is_gguf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gguf")
}

/// Whether a directory is a model itself (rather than a folder of models).
fn is_model_dir(files: &[(String, std::fs::Metadata)]) -> bool {
    files.iter().any(|(n, m)| {
        m.is_file()
            && (n == "config.json"
                || n == "teal.toml"
                || n.ends_with(".safetensors")
                || n.ends_with(".pth")
                || n.ends_with(".onnx"))
    })
}

/// The models under `root`.
pub fn list(root: &Path) -> Listing {
    let mut budget = MAX_SCANNED;
    let mut models = Vec::new();
    for (name, meta) in entries(root, &mut budget) {
        if meta.is_file() && is_gguf(&name) {
            models.push(ModelEntry { name, kind: "gguf", bytes: meta.len() });
        } else if meta.is_dir() {
            let files = entries(&root.join(&name), &mut budget);
            if is_model_dir(&files) {
                let bytes = files.iter().filter(|(_, m)| m.is_file()).map(|(_, m)| m.len()).sum();
                models.push(ModelEntry { name, kind: "directory", bytes });
                continue;
            }
            for (file, m) in files.iter().filter(|(f, m)| m.is_file() && is_gguf(f)) {
                models.push(ModelEntry { name: format!("{name}/{file}"), kind: "gguf", bytes: m.len() });
            }
        }
    }
    let truncated = models.len() > MAX_ENTRIES || budget == 0;
    models.truncate(MAX_ENTRIES);
    Listing { root: root.display().to_string(), models, truncated }
}

pub async fn view(State(s): State<AdminState>) -> Json<Listing> {
    let root = s.models_dir.clone();
    let listing = tokio::task::spawn_blocking(move || list(&root)).await;
    Json(listing.unwrap_or_else(|_| Listing { root: String::new(), models: Vec::new(), truncated: true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_found_at_the_top_and_one_folder_down() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("stories")).unwrap();
        std::fs::write(r.join("stories/config.json"), "{}").unwrap();
        std::fs::write(r.join("stories/model.safetensors"), [0u8; 10]).unwrap();
        std::fs::create_dir_all(r.join("gemma3")).unwrap();
        std::fs::write(r.join("gemma3/g.gguf"), [0u8; 7]).unwrap();
        std::fs::write(r.join("gemma3/g.gguf.p1"), [0u8; 7]).unwrap();
        std::fs::write(r.join("top.GGUF"), [0u8; 3]).unwrap();
        std::fs::write(r.join("notes.txt"), "x").unwrap();
        std::fs::create_dir_all(r.join(".hidden")).unwrap();
        std::fs::write(r.join(".hidden/config.json"), "{}").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc", r.join("link")).unwrap();
        let l = list(r);
        let names: Vec<(&str, &str, u64)> = l.models.iter().map(|m| (m.name.as_str(), m.kind, m.bytes)).collect();
        assert_eq!(names, [("gemma3/g.gguf", "gguf", 7), ("stories", "directory", 12), ("top.GGUF", "gguf", 3)]);
        assert!(!l.truncated);
        assert!(list(&r.join("missing")).models.is_empty());
    }
}
