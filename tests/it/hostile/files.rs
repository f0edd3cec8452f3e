//! Hostile model files, built byte by byte: GGUF headers, safetensors headers, PyTorch pickles, and Hugging Face
//! directories made from stories260K with one file replaced.

use crate::common;
use std::path::Path;

/// A GGUF v3 value of type string.
pub fn gguf_str(s: &str) -> (u32, Vec<u8>) {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    (8, v)
}

pub fn gguf_u32(x: u32) -> (u32, Vec<u8>) {
    (4, x.to_le_bytes().to_vec())
}

/// A GGUF v3 file: metadata (key, (type, raw value)), tensors (name, dims innermost first, type, offset), then
/// `data` zero bytes after the 32-aligned header.
pub fn gguf(metadata: &[(&str, (u32, Vec<u8>))], tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    let mut b = vec![];
    b.extend(0x4655_4747u32.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((metadata.len() as u64).to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    for (k, (t, v)) in metadata {
        string(&mut b, k);
        b.extend(t.to_le_bytes());
        b.extend(v);
    }
    for (name, dims, t, off) in tensors {
        string(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(t.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

/// Writes `bytes` as `<dir>/model.gguf`.
pub fn write_gguf(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join("model.gguf"), bytes).unwrap();
}

/// A safetensors file from a header and `data` zero bytes.
pub fn safetensors(header: &str, data: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

/// A copy of stories260K's files in `dir` (a working model), for cases that replace one of them.
pub fn stories_copy(dir: &Path) {
    for entry in std::fs::read_dir(common::stories_dir()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    // The shared copy is read-only; the case overwrites files.
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&p, perm).unwrap();
    }
}

/// torch's legacy stream: magic, protocol and system-info pickles, then `main` (the state dict pickle), a pickle
/// of `keys`, then `storages` raw.
pub fn legacy_pth(main: &[u8], keys: &[&str], storages: &[u8]) -> Vec<u8> {
    let mut b = vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
    b.extend([0x80, 0x02, b'K', 0x03, b'.']);
    b.extend([0x80, 0x02, b'}', b'.']);
    b.extend(main);
    b.extend([0x80, 0x02, b'(']);
    for k in keys {
        b.push(b'X');
        b.extend((k.len() as u32).to_le_bytes());
        b.extend(k.as_bytes());
    }
    b.extend([b'l', b'.']);
    b.extend(storages);
    b
}

/// A state dict pickle with one float tensor `name` of `numel` elements in storage `key` (contiguous, offset 0).
pub fn state_dict_pickle(name: &str, key: &str, numel: u32) -> Vec<u8> {
    let unicode = |b: &mut Vec<u8>, s: &str| {
        b.push(b'X');
        b.extend((s.len() as u32).to_le_bytes());
        b.extend(s.as_bytes());
    };
    let mut b = vec![0x80, 0x02, b'}'];
    unicode(&mut b, name);
    b.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    // The persistent id: ("storage", torch.FloatStorage, key, "cpu", numel).
    b.push(b'(');
    unicode(&mut b, "storage");
    b.extend(b"ctorch\nFloatStorage\n");
    unicode(&mut b, key);
    unicode(&mut b, "cpu");
    b.push(b'J');
    b.extend(numel.to_le_bytes());
    b.extend([b't', b'Q']);
    b.extend([b'K', 0]); // offset
    b.extend([b'J']);
    b.extend(numel.to_le_bytes());
    b.push(0x85); // size (numel,)
    b.extend([b'K', 1, 0x85]); // stride (1,)
    b.extend([0x89, b'}']); // requires_grad, hooks
    b.extend([b't', b'R', b's', b'.']);
    b
}

/// An image-classification model directory whose teal.toml names `weights` and a two-line label file.
pub fn classifier_dir(dir: &Path, weights: &str, extra_toml: &str) {
    let toml = format!(
        "kind = \"image-classification\"\n{extra_toml}\n[classifier]\narchitecture = \"efficientnet-lite0\"\n\
         weights = \"{weights}\"\nlabels = \"labels.txt\"\n[classifier.preprocess]\nresize = 256\ncrop = 224\n\
         mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n"
    );
    std::fs::write(dir.join("teal.toml"), toml).unwrap();
    std::fs::write(dir.join("labels.txt"), "a\nb\n").unwrap();
}
