//! The files of one model directory, as untrusted input: every file a model names (shards, tokenizer, configs,
//! the classifier's weights and labels, golden images) must resolve inside the model's own directory once
//! symlinks are followed, and every small file is read under a size cap checked before anything is allocated.
//! The caps are far above what real models ship (Gemma 3's tokenizer.json is 33 MB) and far below what would
//! hurt the process.

#![deny(clippy::indexing_slicing)]

use crate::error::{Result, TealError};
use serde_json::Value;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// config.json, generation_config.json, modules.json, pooling configs, teal.toml.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// tokenizer.json (large vocabularies with merges run to tens of megabytes).
pub const MAX_TOKENIZER_BYTES: u64 = 128 << 20;
/// tokenizer_config.json (it may carry several chat templates) and chat_template.jinja.
pub const MAX_TOKENIZER_CONFIG_BYTES: u64 = 16 << 20;
/// A classifier's label file.
pub const MAX_LABELS_BYTES: u64 = 16 << 20;
/// A golden image named by a gate.
pub const MAX_GOLDEN_IMAGE_BYTES: u64 = 64 << 20;

/// A model's directory, canonicalized once: the root every file it names must stay inside.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
}

impl ModelDir {
    /// The directory of the model at `path` (the path itself, or the folder holding a single model file).
    pub fn of(path: &Path) -> Result<Self> {
        let dir =
            if path.is_dir() { path.to_path_buf() } else { path.parent().map(Path::to_path_buf).unwrap_or_default() };
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        let root = dir.canonicalize().map_err(|e| TealError::io(&dir, e))?;
        Ok(ModelDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `name` (relative to the directory) as a real path inside it, or None when it does not exist. Absolute
    /// names, `..` and symlinks that lead out of the directory are refused.
    pub fn find(&self, name: &str) -> Result<Option<PathBuf>> {
        let rel = Path::new(name);
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if name.is_empty() || name.contains('\0') || name.len() > 1024 || !plain {
            return Err(TealError::InvalidModel(format!(
                "{name:?}: must be a relative path inside the model directory"
            )));
        }
        let joined = self.root.join(rel);
        if std::fs::symlink_metadata(&joined).is_err() {
            return Ok(None);
        }
        let real = joined.canonicalize().map_err(|e| TealError::io(&joined, e))?;
        if !real.starts_with(&self.root) {
            return Err(TealError::InvalidModel(format!(
                "{name}: resolves to {} outside the model directory {}",
                real.display(),
                self.root.display()
            )));
        }
        Ok(Some(real))
    }

    /// `find`, but a missing file is an error naming it.
    pub fn require(&self, name: &str) -> Result<PathBuf> {
        self.find(name)?.ok_or_else(|| TealError::InvalidModel(format!("{}: missing", self.root.join(name).display())))
    }

    /// A regular file's bytes, refused before reading when it is larger than `cap`.
    pub fn read(&self, name: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        self.find(name)?.map(|p| read_capped(&p, cap)).transpose()
    }

    /// A text file (UTF-8), under `cap`.
    pub fn read_text(&self, name: &str, cap: u64) -> Result<Option<String>> {
        let Some(path) = self.find(name)? else { return Ok(None) };
        let bytes = read_capped(&path, cap)?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| TealError::InvalidModel(format!("{}: not UTF-8 text", path.display())))
    }

    /// A JSON file, under `cap`.
    pub fn read_json(&self, name: &str, cap: u64) -> Result<Option<Value>> {
        let Some(path) = self.find(name)? else { return Ok(None) };
        let bytes = read_capped(&path, cap)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TealError::InvalidModel(format!("{}: {e}", path.display())))
    }
}

/// Reads a regular file, refusing it before allocating when its size exceeds `cap` (and reading at most `cap`
/// bytes even if it grows meanwhile).
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| TealError::io(path, e))?;
    let meta = f.metadata().map_err(|e| TealError::io(path, e))?;
    if !meta.is_file() {
        return Err(TealError::InvalidModel(format!("{}: not a regular file", path.display())));
    }
    if meta.len() > cap {
        return Err(TealError::InvalidModel(format!(
            "{}: {} bytes, over the limit of {cap} bytes for this kind of file",
            path.display(),
            meta.len()
        )));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(cap + 1).read_to_end(&mut buf).map_err(|e| TealError::io(path, e))?;
    if buf.len() as u64 > cap {
        return Err(TealError::InvalidModel(format!("{}: grew past the limit of {cap} bytes", path.display())));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_and_reads_are_capped() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/a.json"), b"{\"k\": 1}").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink(root.path().join("sub/a.json"), root.path().join("inner")).unwrap();
        let dir = ModelDir::of(root.path()).unwrap();
        assert!(dir.find("sub/a.json").unwrap().is_some());
        assert!(dir.find("inner").unwrap().is_some(), "a symlink that stays inside is fine");
        assert!(dir.find("nope").unwrap().is_none());
        for bad in ["link", "../x", "/etc/passwd", "sub/../../x", ""] {
            assert!(dir.find(bad).is_err(), "{bad}");
        }
        assert_eq!(dir.read_json("sub/a.json", 100).unwrap().unwrap()["k"], 1);
        let err = dir.read("sub/a.json", 4).unwrap_err().to_string();
        assert!(err.contains("over the limit of 4 bytes"), "{err}");
        assert!(dir.read("sub", 100).is_err(), "a directory is not a file");
    }
}
