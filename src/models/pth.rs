//! PyTorch checkpoints (.pth / .pt state dicts) as named tensors. Two on-disk formats exist: the zip archive
//! torch has written since 1.6 (`<name>/data.pkl` plus one stored entry per storage under `<name>/data/`), and
//! the legacy stream that older checkpoints such as EfficientNet-Lite0's still use: a magic-number pickle, a
//! protocol pickle, a system-info pickle, the state dict pickle (tensors refer to storages by key), a pickle
//! listing the storage keys, then each storage as an u64 element count followed by its raw little-endian bytes.
//! Pickles are run by teal's own bounded reader (pickle.rs), which never calls anything; every size, offset,
//! shape and stride read from the file is checked against the file before anything is allocated.

#![deny(clippy::indexing_slicing)]

use super::pickle::{self, Id, Object, Pickle};
use crate::error::{Result, TealError};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The legacy format's first pickle: protocol 2, LONG1 of 10 bytes holding torch's magic number, STOP.
const LEGACY_MAGIC: [u8; 15] =
    [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
/// Most tensors in one checkpoint and most dimensions of one tensor.
const MAX_TENSORS: usize = 1 << 16;
const MAX_DIMS: usize = 8;
/// Largest data.pkl inside a zip checkpoint.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

fn invalid(path: &Path, what: impl std::fmt::Display) -> TealError {
    TealError::InvalidModel(format!("{}: {what}", path.display()))
}

/// Every tensor of the checkpoint's state dict, on the CPU, by name.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| TealError::io(path, e))?;
    read_bytes(&bytes).map_err(|e| invalid(path, e))
}

/// `read` over a checkpoint already in memory.
pub fn read_bytes(bytes: &[u8]) -> std::result::Result<HashMap<String, Tensor>, String> {
    if bytes.starts_with(b"PK") {
        return read_zip(bytes);
    }
    if !bytes.starts_with(&LEGACY_MAGIC) {
        return Err("not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save stream)".into());
    }
    read_legacy(bytes)
}

/// Where a tensor's data is: its storage, element offset, shape and strides (in elements).
#[derive(Debug)]
struct TensorRef {
    name: String,
    storage: String,
    dtype: DType,
    offset: usize,
    dims: Vec<usize>,
    strides: Vec<usize>,
}

fn storage_dtype(class: &str) -> Option<DType> {
    Some(match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        _ => return None,
    })
}

fn usizes(p: &Pickle, id: Id, what: &str) -> std::result::Result<Vec<usize>, String> {
    let t = p.tuple(id).ok_or_else(|| format!("{what} is not a tuple"))?;
    if t.len() > MAX_DIMS {
        return Err(format!("{what} has {} dimensions (at most {MAX_DIMS})", t.len()));
    }
    t.iter()
        .map(|&x| p.int(x).and_then(|v| usize::try_from(v).ok()).ok_or_else(|| format!("{what}: not a size")))
        .collect()
}

/// The arguments of `_rebuild_tensor_v2` behind a state-dict value, through the wrappers torch uses
/// (`_rebuild_parameter`, `_rebuild_from_type_v2`); None for values that are not tensors.
fn rebuild_args(p: &Pickle, mut id: Id) -> Option<&[Id]> {
    for _ in 0..3 {
        let Some(Object::Reduce { callable, args }) = p.get(id) else { return None };
        let args = p.tuple(*args)?;
        match p.global(*callable)? {
            ("torch._utils", "_rebuild_tensor_v2") => return Some(args),
            ("torch._utils", "_rebuild_parameter") => id = *args.first()?,
            ("torch._tensor", "_rebuild_from_type_v2") => {
                let (func, inner) = (*args.first()?, *args.get(2)?);
                if p.global(func)? != ("torch._utils", "_rebuild_tensor_v2") {
                    return None;
                }
                return p.tuple(inner);
            }
            _ => return None,
        }
    }
    None
}

fn tensor_ref(p: &Pickle, name: String, args: &[Id]) -> std::result::Result<TensorRef, String> {
    let [storage, offset, size, stride, ..] = args else { return Err(format!("{name}: too few rebuild arguments")) };
    let Some(Object::PersistentId(pid)) = p.get(*storage) else { return Err(format!("{name}: no storage")) };
    let pid = p.tuple(*pid).ok_or_else(|| format!("{name}: bad storage id"))?;
    let [_, class, key, ..] = pid else { return Err(format!("{name}: bad storage id")) };
    let (_, class) = p.global(*class).ok_or_else(|| format!("{name}: bad storage type"))?;
    let dtype = storage_dtype(class).ok_or_else(|| format!("{name}: unsupported storage type {class}"))?;
    let storage = p.str(*key).ok_or_else(|| format!("{name}: bad storage key"))?.to_string();
    let offset = p.int(*offset).and_then(|o| usize::try_from(o).ok()).ok_or_else(|| format!("{name}: bad offset"))?;
    let dims = usizes(p, *size, "size")?;
    let strides = usizes(p, *stride, "stride")?;
    if dims.len() != strides.len() {
        return Err(format!("{name}: {} sizes but {} strides", dims.len(), strides.len()));
    }
    Ok(TensorRef { name, storage, dtype, offset, dims, strides })
}

/// The tensors a state-dict pickle names. The dict may be wrapped in BUILD (an OrderedDict with `_metadata`) or
/// sit under a `state_dict` key.
fn tensor_refs(p: &Pickle) -> std::result::Result<Vec<TensorRef>, String> {
    let mut root = p.root;
    let mut entries: &[(Id, Id)] = &[];
    for _ in 0..3 {
        match p.get(root) {
            Some(Object::Build { obj, .. }) => root = *obj,
            Some(Object::Dict(d)) => {
                entries = d;
                match d.iter().find(|(k, _)| p.str(*k) == Some("state_dict")) {
                    Some((_, v)) => root = *v,
                    None => break,
                }
            }
            _ => return Err("the checkpoint is not a state dict".into()),
        }
    }
    if entries.len() > MAX_TENSORS {
        return Err(format!("{} entries (at most {MAX_TENSORS})", entries.len()));
    }
    let mut out = vec![];
    for &(k, v) in entries {
        let (Some(name), Some(args)) = (p.str(k), rebuild_args(p, v)) else { continue };
        out.push(tensor_ref(p, name.to_string(), args)?);
    }
    Ok(out)
}

fn read_legacy(bytes: &[u8]) -> std::result::Result<HashMap<String, Tensor>, String> {
    let limits = pickle::Limits::default();
    let (_protocol, at) = pickle::parse(bytes, LEGACY_MAGIC.len(), limits)?;
    let (_sys_info, at) = pickle::parse(bytes, at, limits)?;
    let (dict, at) = pickle::parse(bytes, at, limits)?;
    let (keys, at) = pickle::parse(bytes, at, limits)?;
    let refs = tensor_refs(&dict)?;
    let Some(Object::List(key_ids)) = keys.get(keys.root) else { return Err("storage key list missing".into()) };
    let elem_size: HashMap<&str, usize> = refs.iter().map(|r| (r.storage.as_str(), r.dtype.size_in_bytes())).collect();
    let mut spans: HashMap<String, &[u8]> = HashMap::new();
    let mut pos = at;
    for &k in key_ids {
        let key = keys.str(k).ok_or("a storage key is not a string")?;
        let size = *elem_size.get(key).ok_or_else(|| format!("storage {key} is used by no tensor"))?;
        let count = bytes.get(pos..pos + 8).ok_or("checkpoint truncated")?;
        let count = u64::from_le_bytes(count.try_into().map_err(|_| "checkpoint truncated")?);
        pos += 8;
        let len = usize::try_from(count).ok().and_then(|c| c.checked_mul(size));
        let span = len.and_then(|l| bytes.get(pos..pos.checked_add(l)?));
        let span = span.ok_or_else(|| format!("storage {key} ({count} elements) runs past the end of the file"))?;
        pos += span.len();
        spans.insert(key.to_string(), span);
    }
    build(refs, |key| spans.get(key).copied().ok_or_else(|| format!("storage {key} missing")))
}

fn read_zip(bytes: &[u8]) -> std::result::Result<HashMap<String, Tensor>, String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("not a readable zip: {e}"))?;
    if zip.len() > MAX_TENSORS + 16 {
        return Err(format!("{} zip entries", zip.len()));
    }
    let pkl = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .map(|n| n.into_owned())
        .ok_or("no data.pkl in the archive")?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
    let data = entry(&mut zip, &pkl, MAX_PICKLE_BYTES)?;
    let (dict, _) = pickle::parse(&data, 0, pickle::Limits::default())?;
    let refs = tensor_refs(&dict)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for r in &refs {
        if !storages.contains_key(&r.storage) {
            let raw = entry(&mut zip, &format!("{prefix}data/{}", r.storage), bytes.len() as u64)?;
            storages.insert(r.storage.clone(), raw);
        }
    }
    build(refs, |key| storages.get(key).map(Vec::as_slice).ok_or_else(|| format!("storage {key} missing")))
}

/// One zip entry's bytes: stored (torch never compresses), at most `cap`.
fn entry(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    cap: u64,
) -> std::result::Result<Vec<u8>, String> {
    let f = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    if f.compression() != zip::CompressionMethod::Stored {
        return Err(format!("{name}: compressed entries are not supported (torch.save stores them)"));
    }
    if f.size() > cap {
        return Err(format!("{name}: {} bytes (at most {cap})", f.size()));
    }
    let mut out = Vec::with_capacity(f.size() as usize);
    f.take(cap).read_to_end(&mut out).map_err(|e| format!("{name}: {e}"))?;
    Ok(out)
}

fn build<'a>(
    refs: Vec<TensorRef>,
    storage: impl Fn(&str) -> std::result::Result<&'a [u8], String>,
) -> std::result::Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::new();
    for r in refs {
        let t = tensor_at(storage(&r.storage)?, &r).map_err(|e| format!("{}: {e}", r.name))?;
        out.insert(r.name, t);
    }
    Ok(out)
}

/// A tensor from its storage bytes. Contiguous tensors and permutations of contiguous ones (a transposed
/// matrix, as some checkpoints store their linear layers) are read; other strided views are refused.
fn tensor_at(storage: &[u8], r: &TensorRef) -> std::result::Result<Tensor, String> {
    // The axes in memory order (largest stride first): (logical index, size, stride).
    let mut axes: Vec<(usize, usize, usize)> =
        r.dims.iter().zip(&r.strides).enumerate().map(|(i, (&d, &s))| (i, d, s)).collect();
    axes.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let physical: Vec<usize> = axes.iter().map(|a| a.1).collect();
    let elems = physical.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("a shape that overflows")?;
    let contiguous = candle_core::Layout::contiguous(physical.as_slice());
    let ok = axes.iter().zip(contiguous.stride()).all(|(a, &s)| a.1 <= 1 || a.2 == s);
    if !ok {
        return Err("strided tensor views are not supported".into());
    }
    let elem = r.dtype.size_in_bytes();
    let from = r.offset.checked_mul(elem);
    let n = elems.checked_mul(elem);
    let data = from
        .zip(n)
        .and_then(|(from, n)| storage.get(from..from.checked_add(n)?))
        .ok_or("the tensor extends past its storage")?;
    let t = Tensor::from_raw_buffer(data, r.dtype, &physical, &Device::Cpu).map_err(|e| e.to_string())?;
    // Back to the logical order: the memory position of each logical axis.
    let mut back: Vec<(usize, usize)> = axes.iter().enumerate().map(|(pos, a)| (a.0, pos)).collect();
    back.sort_unstable();
    let inverse: Vec<usize> = back.into_iter().map(|(_, pos)| pos).collect();
    t.permute(inverse).and_then(|t| t.contiguous()).map_err(|e| e.to_string())
}
