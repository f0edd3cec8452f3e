//! A bounded GGUF header reader. A GGUF file is untrusted input: every count, length, dimension, offset and the
//! alignment are checked against the file's real size and against caps before anything is allocated, and
//! nesting is limited, so a hostile header fails with a precise reason instead of panicking (candle's reader
//! divides by a zero `general.alignment`) or allocating gigabytes. It produces candle's `gguf_file::Content`, so
//! the tensor data is then read by candle (`Content::tensor`), into the spans checked here.

#![deny(clippy::indexing_slicing)]

use crate::error::{Result, TealError};
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// Most tensors in one file (the largest real models have a few thousand).
pub const MAX_TENSORS: u64 = 1 << 16;
/// Most metadata entries.
pub const MAX_METADATA: u64 = 1 << 16;
/// Longest string (chat templates are the longest real ones, tens of kilobytes).
pub const MAX_STRING: u64 = 16 << 20;
/// Most array elements in the whole header (vocabularies with merges and scores are ~1M).
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 23;
/// Arrays may hold arrays, which may not.
const MAX_DEPTH: usize = 2;
/// Largest tensor, in elements.
const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
const MAX_ALIGNMENT: u64 = 1 << 20;
const DEFAULT_ALIGNMENT: u64 = 32;

fn bad(what: impl std::fmt::Display) -> TealError {
    TealError::InvalidModel(format!("not a valid GGUF file: {what}"))
}

/// A reader that knows how many bytes are left and refuses to read past the end.
struct Source<R> {
    r: R,
    pos: u64,
    len: u64,
    /// Array elements read so far (against MAX_ARRAY_ELEMENTS).
    elements: u64,
}

impl<R: Read> Source<R> {
    fn need(&self, n: u64, what: &str) -> Result<()> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(bad(format!(
                "{what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos, self.len
            )));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| bad(format!("{what}: {e}")))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.bytes::<1>(what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A length prefix: u32 in version 1, u64 after.
    fn length(&mut self, v1: bool, what: &str) -> Result<u64> {
        if v1 {
            Ok(u64::from(self.u32(what)?))
        } else {
            self.u64(what)
        }
    }

    fn string(&mut self, v1: bool, what: &str) -> Result<String> {
        let len = self.length(v1, what)?;
        if len > MAX_STRING {
            return Err(bad(format!("{what}: a string of {len} bytes (the limit is {MAX_STRING})")));
        }
        self.need(len, what)?;
        let mut v = vec![0u8; len as usize];
        self.r.read_exact(&mut v).map_err(|e| bad(format!("{what}: {e}")))?;
        self.pos += len;
        // Strings should not be NUL-terminated, but some writers do it.
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }
}

/// On-disk size of the smallest value of each GGUF type (to refuse counts the file cannot hold).
fn min_size(t: u32, v1: bool) -> u64 {
    match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => {
            if v1 {
                4
            } else {
                8
            }
        }
        _ => {
            if v1 {
                8
            } else {
                12
            }
        }
    }
}

fn value<R: Read>(s: &mut Source<R>, t: u32, v1: bool, depth: usize, key: &str) -> Result<Value> {
    Ok(match t {
        0 => Value::U8(s.u8(key)?),
        1 => Value::I8(s.u8(key)? as i8),
        2 => Value::U16(u16::from_le_bytes(s.bytes(key)?)),
        3 => Value::I16(i16::from_le_bytes(s.bytes(key)?)),
        4 => Value::U32(s.u32(key)?),
        5 => Value::I32(s.u32(key)? as i32),
        6 => Value::F32(f32::from_le_bytes(s.bytes(key)?)),
        7 => match s.u8(key)? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(bad(format!("{key}: bool value {b}"))),
        },
        8 => Value::String(s.string(v1, key)?),
        9 => {
            if depth >= MAX_DEPTH {
                return Err(bad(format!("{key}: arrays nested deeper than {MAX_DEPTH}")));
            }
            let inner = s.u32(key)?;
            let len = s.length(v1, key)?;
            s.elements = s.elements.saturating_add(len);
            if s.elements > MAX_ARRAY_ELEMENTS {
                return Err(bad(format!("{key}: more than {MAX_ARRAY_ELEMENTS} array elements in the header")));
            }
            s.need(len.saturating_mul(min_size(inner, v1)), key)?;
            let mut out = Vec::with_capacity(len as usize);
            for _ in 0..len {
                out.push(value(s, inner, v1, depth + 1, key)?);
            }
            Value::Array(out)
        }
        10 => Value::U64(s.u64(key)?),
        11 => Value::I64(s.u64(key)? as i64),
        12 => Value::F64(f64::from_le_bytes(s.bytes(key)?)),
        other => return Err(bad(format!("{key}: unknown value type {other}"))),
    })
}

/// GGML's tensor type numbers.
fn ggml_dtype(v: u32) -> Option<GgmlDType> {
    Some(match v {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

fn alignment(metadata: &HashMap<String, Value>) -> Result<u64> {
    let Some(v) = metadata.get("general.alignment") else { return Ok(DEFAULT_ALIGNMENT) };
    let a = match v {
        Value::U8(x) => u64::from(*x),
        Value::U16(x) => u64::from(*x),
        Value::U32(x) => u64::from(*x),
        Value::U64(x) => *x,
        Value::I8(x) => u64::try_from(*x).unwrap_or(0),
        Value::I16(x) => u64::try_from(*x).unwrap_or(0),
        Value::I32(x) => u64::try_from(*x).unwrap_or(0),
        Value::I64(x) => u64::try_from(*x).unwrap_or(0),
        other => return Err(bad(format!("general.alignment is not an integer ({other:?})"))),
    };
    if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
        return Err(bad(format!("general.alignment {a} is not a power of two between 1 and {MAX_ALIGNMENT}")));
    }
    Ok(a)
}

/// One tensor's name, shape (candle's order: outermost first), type and offset, checked on its own.
fn tensor_info<R: Read>(s: &mut Source<R>, v1: bool) -> Result<(String, TensorInfo, u64)> {
    let name = s.string(v1, "tensor name")?;
    let n_dims = s.u32(&name)?;
    if !(1..=4).contains(&n_dims) {
        return Err(bad(format!("tensor {name}: {n_dims} dimensions (1 to 4 are allowed)")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut elems: u64 = 1;
    for _ in 0..n_dims {
        let d = s.length(v1, &name)?;
        elems = elems
            .checked_mul(d)
            .filter(|&e| e <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| bad(format!("tensor {name}: more than {MAX_TENSOR_ELEMENTS} elements")))?;
        dims.push(usize::try_from(d).map_err(|_| bad(format!("tensor {name}: dimension {d}")))?);
    }
    if elems == 0 {
        return Err(bad(format!("tensor {name}: a zero dimension")));
    }
    dims.reverse();
    let code = s.u32(&name)?;
    let dtype = ggml_dtype(code).ok_or_else(|| bad(format!("tensor {name}: unknown type {code}")))?;
    let block = dtype.block_size() as u64;
    if !elems.is_multiple_of(block) {
        return Err(bad(format!("tensor {name}: {elems} elements are not a whole number of {block}-blocks")));
    }
    let bytes = elems / block * dtype.type_size() as u64;
    let offset = s.u64(&name)?;
    let info = TensorInfo { ggml_dtype: dtype, shape: candle_core::Shape::from(dims), offset };
    Ok((name, info, bytes))
}

/// Parses a GGUF header from `r`, a stream of `len` bytes (the whole file).
pub fn parse(r: impl Read, len: u64) -> Result<Content> {
    let mut s = Source { r, pos: 0, len, elements: 0 };
    let magic = s.u32("magic")?;
    if magic != 0x4655_4747 {
        return Err(bad(format!("magic {magic:#010x} (expected \"GGUF\")")));
    }
    let (versioned, v1) = match s.u32("version")? {
        1 => (VersionedMagic::GgufV1, true),
        2 => (VersionedMagic::GgufV2, false),
        3 => (VersionedMagic::GgufV3, false),
        v => return Err(bad(format!("version {v} (1 to 3 are known)"))),
    };
    let n_tensors = s.length(v1, "tensor count")?;
    let n_kv = s.length(v1, "metadata count")?;
    if n_tensors > MAX_TENSORS || n_kv > MAX_METADATA {
        return Err(bad(format!(
            "{n_tensors} tensors and {n_kv} metadata entries (the limits are {MAX_TENSORS} and {MAX_METADATA})"
        )));
    }
    let prefix = if v1 { 4 } else { 8 };
    s.need(n_kv * (prefix + 5) + n_tensors * (prefix + 16), "the declared header entries")?;
    let mut metadata = HashMap::new();
    for _ in 0..n_kv {
        let key = s.string(v1, "metadata key")?;
        let t = s.u32(&key)?;
        let v = value(&mut s, t, v1, 0, &key)?;
        if metadata.insert(key.clone(), v).is_some() {
            return Err(bad(format!("metadata key {key} appears twice")));
        }
    }
    let mut tensors = HashMap::new();
    let mut sizes = vec![];
    for _ in 0..n_tensors {
        let (name, info, bytes) = tensor_info(&mut s, v1)?;
        sizes.push((name.clone(), info.offset, bytes));
        if tensors.insert(name.clone(), info).is_some() {
            return Err(bad(format!("tensor {name} appears twice")));
        }
    }
    let align = alignment(&metadata)?;
    let data_offset = s.pos.div_ceil(align) * align;
    for (name, offset, bytes) in sizes {
        if offset % align != 0 {
            return Err(bad(format!("tensor {name}: offset {offset} is not a multiple of the alignment {align}")));
        }
        let end = data_offset.checked_add(offset).and_then(|o| o.checked_add(bytes));
        if end.is_none_or(|e| e > len) {
            return Err(bad(format!(
                "tensor {name}: {bytes} bytes at data offset {offset} run past the end of the file ({len} bytes)"
            )));
        }
    }
    Ok(Content { magic: versioned, metadata, tensor_infos: tensors, tensor_data_offset: data_offset })
}

/// Reads and checks the header of the GGUF file at `path`.
pub fn read(path: &Path) -> Result<Content> {
    let f = std::fs::File::open(path).map_err(|e| TealError::io(path, e))?;
    let len = f.metadata().map_err(|e| TealError::io(path, e))?.len();
    parse(BufReader::new(f), len).map_err(|e| match e {
        TealError::InvalidModel(m) => TealError::InvalidModel(format!("{}: {m}", path.display())),
        other => other,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small GGUF v3 file: the given metadata (raw typed values) and tensors (name, dims innermost first,
    /// type, offset), with `data` bytes of tensor data after the aligned header.
    pub fn build(metadata: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
        let mut b = vec![];
        b.extend(0x4655_4747u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((metadata.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        for (k, t, v) in metadata {
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

    fn parse_bytes(b: &[u8]) -> Result<Content> {
        parse(b, b.len() as u64)
    }

    fn err(b: &[u8]) -> String {
        parse_bytes(b).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn a_well_formed_file_parses() {
        let arch = {
            let mut v = (5u64).to_le_bytes().to_vec();
            v.extend(b"llama");
            v
        };
        let b = build(&[("general.architecture", 8, arch)], &[("w", &[32, 2], 0, 0)], 256);
        let c = parse_bytes(&b).unwrap();
        assert_eq!(c.tensor_infos["w"].shape.dims(), &[2, 32]);
        assert_eq!(c.tensor_data_offset % 32, 0);
        assert!(matches!(&c.metadata["general.architecture"], Value::String(s) if s == "llama"));
    }

    #[test]
    fn hostile_headers_are_refused_with_their_reason() {
        // general.alignment = 0 (candle divides by it).
        let b = build(&[("general.alignment", 4, 0u32.to_le_bytes().to_vec())], &[], 0);
        assert!(err(&b).contains("alignment 0"), "{}", err(&b));
        let b = build(&[("general.alignment", 4, 3u32.to_le_bytes().to_vec())], &[], 0);
        assert!(err(&b).contains("power of two"));
        // Counts of 2^40.
        let mut b = build(&[], &[], 0);
        b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(err(&b).contains("limits"), "{}", err(&b));
        let mut b = build(&[], &[], 0);
        b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(err(&b).contains("limits"));
        // Counts that fit the caps but not the file.
        let mut b = build(&[], &[], 0);
        b[16..24].copy_from_slice(&1000u64.to_le_bytes());
        assert!(err(&b).contains("needs"), "{}", err(&b));
        // A string length of 2^60, an array of 2^40 u8.
        let mut s = (1u64 << 60).to_le_bytes().to_vec();
        s.extend(b"xx");
        assert!(err(&build(&[("k", 8, s)], &[], 0)).contains("limit"));
        let mut a = 0u32.to_le_bytes().to_vec();
        a.extend((1u64 << 40).to_le_bytes());
        assert!(err(&build(&[("k", 9, a)], &[], 0)).contains("array elements"));
        // Arrays of arrays of arrays.
        let mut a = 9u32.to_le_bytes().to_vec();
        a.extend(1u64.to_le_bytes());
        a.extend(9u32.to_le_bytes());
        a.extend(1u64.to_le_bytes());
        a.extend(0u32.to_le_bytes());
        a.extend(1u64.to_le_bytes());
        a.push(7);
        assert!(err(&build(&[("k", 9, a)], &[], 0)).contains("nested"));
        // A tensor past the end of the file, dimensions that overflow, a zero dimension, a misaligned offset.
        assert!(err(&build(&[], &[("w", &[32, 4], 0, 0)], 100)).contains("past the end"));
        assert!(err(&build(&[], &[("w", &[1 << 32, 1 << 32], 0, 0)], 0)).contains("elements"));
        assert!(err(&build(&[], &[("w", &[0, 4], 0, 0)], 0)).contains("zero"));
        assert!(err(&build(&[], &[("w", &[8], 0, 4)], 64)).contains("alignment"));
        assert!(err(&build(&[], &[("w", &[8], 99, 0)], 64)).contains("unknown type"));
        assert!(err(&build(&[], &[("w", &[5], 2, 0)], 64)).contains("blocks"));
        assert!(err(&build(&[], &[("w", &[8], 0, 0), ("w", &[8], 0, 0)], 64)).contains("twice"));
        assert!(err(&b"GGUF"[..]).contains("magic") || err(&b"GGUF"[..]).contains("needs"));
        assert!(err(b"NOPE\x03\0\0\0").contains("magic"));
    }
}
