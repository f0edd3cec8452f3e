//! The safetensors header of an untrusted file, checked before anything else reads it: an 8-byte length (at most
//! 100 MiB, and inside the file), a JSON object of tensors, each with a known dtype, at most 8 dimensions whose
//! product does not overflow, and data offsets that match the shape and lie inside the file. The loader (candle
//! over the safetensors crate) and the memory estimate both run it first, so a header claiming 2^60 bytes or a
//! tensor past the end of the file fails with its reason.

#![deny(clippy::indexing_slicing)]

use crate::error::{Result, TealError};
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// The safetensors crate's own header limit.
pub const MAX_HEADER_BYTES: u64 = 100 << 20;
/// Most tensors in one file.
const MAX_TENSORS: usize = 1 << 20;

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Checks one header entry against the data area (`data_len` bytes after the header); returns its element count.
fn entry(name: &str, v: &Value, data_len: u64) -> std::result::Result<u64, String> {
    let dtype = v.get("dtype").and_then(Value::as_str).ok_or("no dtype")?;
    let size = dtype_size(dtype).ok_or_else(|| format!("unknown dtype {dtype}"))?;
    let shape = v.get("shape").and_then(Value::as_array).ok_or("no shape")?;
    if shape.len() > 8 {
        return Err(format!("{} dimensions", shape.len()));
    }
    let mut elems: u64 = 1;
    for d in shape {
        let d = d.as_u64().ok_or("a dimension that is not a non-negative integer")?;
        elems = elems.checked_mul(d).ok_or("a shape whose element count overflows")?;
    }
    let offsets = v.get("data_offsets").and_then(Value::as_array).ok_or("no data_offsets")?;
    let (start, end) = match offsets.as_slice() {
        [a, b] => (a.as_u64().ok_or("bad data_offsets")?, b.as_u64().ok_or("bad data_offsets")?),
        _ => return Err("data_offsets must be [start, end]".into()),
    };
    if start > end || end > data_len {
        return Err(format!("data_offsets [{start}, {end}] lie outside the {data_len} data bytes of the file"));
    }
    let bytes = elems.checked_mul(size).ok_or("a byte size that overflows")?;
    if end - start != bytes {
        return Err(format!("data_offsets span {} bytes but the shape needs {bytes} ({name})", end - start));
    }
    Ok(elems)
}

/// The tensors of a safetensors file (name, element count), the header checked as the module says.
pub fn header(path: &Path) -> Result<Vec<(String, u64)>> {
    let mut f = std::fs::File::open(path).map_err(|e| TealError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| TealError::io(path, e))?.len();
    let mut prefix = [0u8; 8];
    let read = f.read_exact(&mut prefix);
    let declared = u64::from_le_bytes(prefix);
    // Read the header only once its length is known to be sane, then check it against the file's size.
    let header = if read.is_ok() && declared <= MAX_HEADER_BYTES && declared <= file_len.saturating_sub(8) {
        let mut buf = vec![0u8; declared as usize];
        f.read_exact(&mut buf).map_err(|e| TealError::io(path, e))?;
        buf
    } else {
        vec![]
    };
    let mut head = prefix.to_vec();
    head.extend(header);
    check(&head, file_len)
        .map_err(|e| TealError::InvalidModel(format!("{}: not a valid safetensors file: {e}", path.display())))
}

/// Checks the start of a safetensors file (`head`: the 8-byte length and the header) against the whole file's
/// length; returns its tensors.
pub fn check(head: &[u8], file_len: u64) -> std::result::Result<Vec<(String, u64)>, String> {
    let len =
        head.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes).ok_or("no header length")?;
    if len > MAX_HEADER_BYTES || len > file_len.saturating_sub(8) {
        return Err(format!(
            "a header of {len} bytes (the file has {file_len} bytes; the limit is {MAX_HEADER_BYTES})"
        ));
    }
    let json = head.get(8..8 + len as usize).ok_or("the header is truncated")?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(json).map_err(|e| format!("header: {e}"))?;
    if header.len() > MAX_TENSORS {
        return Err(format!("{} header entries (the limit is {MAX_TENSORS})", header.len()));
    }
    let data_len = file_len - 8 - len;
    header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(k, v)| entry(k, v, data_len).map(|n| (k.clone(), n)).map_err(|e| format!("tensor {k}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> tempfile::NamedTempFile {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b).unwrap();
        f
    }

    fn err(header: &str, data: usize) -> String {
        header_of(file(header, data).path())
    }

    fn header_of(p: &Path) -> String {
        header(p).map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn good_and_hostile_headers() {
        let ok = file(r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"a":"b"}}"#, 24);
        assert_eq!(header(ok.path()).unwrap(), vec![("w".to_string(), 6)]);
        assert!(err(r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#, 10).contains("outside"));
        assert!(err(r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#, 24).contains("needs 24"));
        assert!(err(r#"{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#, 1).contains("unknown dtype"));
        let huge = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#;
        assert!(err(huge, 4).contains("overflows"), "{}", err(huge, 4));
        // A header length of 2^60.
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = (1u64 << 60).to_le_bytes().to_vec();
        b.extend(b"{}");
        std::fs::write(f.path(), b).unwrap();
        assert!(header_of(f.path()).contains("a header of 1152921504606846976 bytes"), "{}", header_of(f.path()));
        assert!(err("not json", 0).contains("header"));
    }
}
