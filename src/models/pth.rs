//! PyTorch checkpoints (.pth / .pt state dicts) as named tensors. Two on-disk formats exist: the zip archive
//! torch has written since 1.6 (candle reads it), and the legacy stream that older checkpoints such as
//! EfficientNet-Lite0's still use: a magic-number pickle, a protocol pickle, a system-info pickle, the state
//! dict pickle (tensors refer to storages by key), a pickle listing the storage keys, then each storage as
//! an u64 element count followed by its raw little-endian bytes. Pickles are parsed by candle's reader; every
//! size read from the file is checked against the file before anything is allocated.

use crate::error::{Result, TealError};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

/// The legacy format's first pickle: protocol 2, LONG1 of 10 bytes holding torch's magic number, STOP.
const LEGACY_MAGIC: [u8; 15] =
    [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];

fn invalid(path: &Path, what: impl std::fmt::Display) -> TealError {
    TealError::InvalidModel(format!("{}: {what}", path.display()))
}

/// Every tensor of the checkpoint's state dict, on the CPU, by name.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| TealError::io(path, e))?;
    if bytes.starts_with(b"PK") {
        let all = candle_core::pickle::read_all(path)
            .map_err(|e| invalid(path, format!("not a readable checkpoint: {e}")))?;
        return Ok(all.into_iter().collect());
    }
    if !bytes.starts_with(&LEGACY_MAGIC) {
        return Err(invalid(path, "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save stream)"));
    }
    read_legacy(&bytes).map_err(|e| invalid(path, e))
}

fn one_pickle(cur: &mut Cursor<&[u8]>) -> std::result::Result<Object, String> {
    let mut stack = Stack::empty();
    stack.read_loop(cur).map_err(|e| format!("bad pickle: {e}"))?;
    stack.finalize().map_err(|e| format!("bad pickle: {e}"))
}

fn read_legacy(bytes: &[u8]) -> std::result::Result<HashMap<String, Tensor>, String> {
    let mut cur = Cursor::new(bytes);
    cur.set_position(LEGACY_MAGIC.len() as u64);
    let _protocol = one_pickle(&mut cur)?;
    let _sys_info = one_pickle(&mut cur)?;
    let dict = match one_pickle(&mut cur)? {
        Object::Dict(kv) => kv,
        _ => return Err("the checkpoint is not a state dict".into()),
    };
    let keys = match one_pickle(&mut cur)? {
        Object::List(keys) => keys,
        _ => return Err("storage key list missing".into()),
    };
    let mut infos = vec![];
    for (name, value) in dict {
        match value.into_tensor_info(name, Path::new("")) {
            Ok(Some(info)) => infos.push(info),
            Ok(None) => {}
            Err(e) => return Err(format!("unreadable tensor entry: {e}")),
        }
    }
    let key_of = |p: &str| p.trim_start_matches('/').to_string();
    let elem_size: HashMap<String, usize> = infos.iter().map(|i| (key_of(&i.path), i.dtype.size_in_bytes())).collect();
    let storages = storage_spans(bytes, cur.position() as usize, keys, &elem_size)?;
    let mut out = HashMap::new();
    for info in infos {
        let key = key_of(&info.path);
        let &(start, len) = storages.get(&key).ok_or_else(|| format!("{}: storage {key} missing", info.name))?;
        let t = tensor_at(bytes, start, len, &info).map_err(|e| format!("{}: {e}", info.name))?;
        out.insert(info.name, t);
    }
    Ok(out)
}

/// A tensor from its storage bytes. Contiguous tensors and permutations of contiguous ones (a transposed
/// matrix, as some checkpoints store their linear layers) are read; other strided views are refused.
fn tensor_at(bytes: &[u8], start: usize, len: usize, info: &TensorInfo) -> std::result::Result<Tensor, String> {
    let dims = info.layout.dims();
    let strides = info.layout.stride();
    let mut perm: Vec<usize> = (0..dims.len()).collect();
    perm.sort_by(|&a, &b| strides[b].cmp(&strides[a]).then(a.cmp(&b)));
    let physical: Vec<usize> = perm.iter().map(|&d| dims[d]).collect();
    let contiguous = candle_core::Layout::contiguous(physical.as_slice());
    let ok = perm.iter().zip(contiguous.stride()).all(|(&d, &s)| dims[d] <= 1 || strides[d] == s);
    if !ok {
        return Err("strided tensor views are not supported".into());
    }
    let elem = info.dtype.size_in_bytes();
    let from = info.layout.start_offset();
    let n = info.layout.shape().elem_count() * elem;
    if from.checked_add(n).is_none_or(|end| end > len) {
        return Err("tensor extends past its storage".into());
    }
    let data = &bytes[start + from..start + from + n];
    let t = Tensor::from_raw_buffer(data, info.dtype, &physical, &Device::Cpu).map_err(|e| e.to_string())?;
    let mut inverse = vec![0; perm.len()];
    for (i, &d) in perm.iter().enumerate() {
        inverse[d] = i;
    }
    t.permute(inverse).and_then(|t| t.contiguous()).map_err(|e| e.to_string())
}

/// Storage key -> (byte offset, byte length) of the raw storages after the pickles: each is an u64 element
/// count and then count x element-size bytes, the element size being that of the tensors using it.
fn storage_spans(
    bytes: &[u8],
    mut pos: usize,
    keys: Vec<Object>,
    elem_size: &HashMap<String, usize>,
) -> std::result::Result<HashMap<String, (usize, usize)>, String> {
    let mut spans = HashMap::new();
    for key in keys {
        let Object::Unicode(key) = key else { return Err("storage key is not a string".into()) };
        let size = *elem_size.get(&key).ok_or_else(|| format!("storage {key} is used by no tensor"))?;
        let b = bytes.get(pos..pos + 8).ok_or("checkpoint truncated")?;
        let count = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        pos += 8;
        let len = usize::try_from(count).ok().and_then(|c| c.checked_mul(size));
        let end = len.and_then(|l| l.checked_add(pos)).filter(|&e| e <= bytes.len());
        let (Some(len), Some(end)) = (len, end) else {
            return Err(format!("storage {key} ({count} elements) extends past the end of the file (truncated?)"));
        };
        spans.insert(key, (pos, len));
        pos = end;
    }
    Ok(spans)
}
