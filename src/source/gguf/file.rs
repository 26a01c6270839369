//! GGUF container parsing: header, metadata key/values, tensor infos.
//!
//! Follows the GGUF spec (ggml `docs/gguf.md`, versions 2 and 3, little-endian).
//! Every count and length read from the file is checked against the bytes that remain
//! *before* anything is allocated, so a hostile file yields an error, not an OOM.

use std::collections::BTreeMap;
use std::path::Path;

use super::types::GgmlType;
use crate::source::mmap::MappedFile;
use crate::{Error, Result};

/// Longest string accepted (keys, tokens, chat templates).
pub const MAX_STRING_LEN: u64 = 64 << 20;
/// Most tensor dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Most elements in one metadata array.
pub const MAX_ARRAY_LEN: u64 = 1 << 28;
/// Deepest nesting of arrays in arrays.
pub const MAX_ARRAY_DEPTH: u32 = 2;

const MAGIC: &[u8; 4] = b"GGUF";

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Unsigned integer (u8, u16, u32, u64 on disk).
    U64(u64),
    /// Signed integer (i8, i16, i32, i64 on disk).
    I64(i64),
    /// Floating point (f32, f64 on disk).
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// As a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// As a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the GGUF tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// GGUF tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the fastest-varying (row length).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Shape in row-major (PyTorch) order: the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    file: MappedFile,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(Error::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                len: self.bytes.len() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > MAX_STRING_LEN {
            return Err(Error::LimitExceeded {
                path: self.path.to_path_buf(),
                what: "string length",
                value: len,
                limit: MAX_STRING_LEN,
            });
        }
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::malformed(self.path, "GGUF", format!("{what} is not valid UTF-8")))
    }
    fn malformed(&self, reason: String) -> Error {
        Error::malformed(self.path, "GGUF", reason)
    }

    /// Minimum on-disk size of one value of `ty`, used to bound array lengths.
    fn min_size(ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => 1,
        }
    }

    fn value(&mut self, ty: u32, depth: u32, key: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.u8(key)? as u64),
            1 => Value::I64(self.u8(key)? as i8 as i64),
            2 => Value::U64(self.u16(key)? as u64),
            3 => Value::I64(self.u16(key)? as i16 as i64),
            4 => Value::U64(self.u32(key)? as u64),
            5 => Value::I64(self.u32(key)? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(key)?) as f64),
            7 => match self.u8(key)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.malformed(format!("{key}: bool byte {b}"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed(format!("{key}: arrays nested too deep")));
                }
                let elem_ty = self.u32(key)?;
                let n = self.u64(key)?;
                let fits = self.remaining() / Self::min_size(elem_ty);
                if n > MAX_ARRAY_LEN || n > fits {
                    return Err(Error::LimitExceeded {
                        path: self.path.to_path_buf(),
                        what: "metadata array length",
                        value: n,
                        limit: MAX_ARRAY_LEN.min(fits),
                    });
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem_ty, depth + 1, key)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            t => return Err(self.malformed(format!("{key}: unknown value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Opens, maps and parses a GGUF file; tensor data stays on disk until read.
    pub fn open(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let (version, metadata, tensors) = Self::parse(file.bytes(), path)?;
        Ok(Self {
            file,
            version,
            metadata,
            tensors,
        })
    }

    /// Parses a GGUF image held in memory (header, metadata and tensor table; tensor data
    /// is only bounds-checked). For fuzzing and for callers that already hold the bytes.
    pub fn check_bytes(bytes: &[u8]) -> Result<(usize, usize)> {
        let (_, md, ts) = Self::parse(bytes, Path::new("<memory>"))?;
        Ok((md.len(), ts.len()))
    }

    #[allow(clippy::type_complexity)]
    fn parse(bytes: &[u8], path: &Path) -> Result<(u32, BTreeMap<String, Value>, Vec<TensorInfo>)> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            path,
        };
        if c.take(4, "magic")? != MAGIC {
            return Err(c.malformed("not a GGUF file (bad magic)".into()));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.malformed(format!(
                "unsupported GGUF version {version} (supported: 2, 3)"
            )));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // A key/value needs at least 8 (key len) + 4 (type) + 1 bytes; a tensor info 8+4+8+4+8.
        if n_kv > c.remaining() / 13 {
            return Err(Error::LimitExceeded {
                path: path.to_path_buf(),
                what: "metadata count",
                value: n_kv,
                limit: c.remaining() / 13,
            });
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, 0, &key)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(c.malformed(format!("duplicate metadata key {key}")));
            }
        }
        if n_tensors > c.remaining() / 32 {
            return Err(Error::LimitExceeded {
                path: path.to_path_buf(),
                what: "tensor count",
                value: n_tensors,
                limit: c.remaining() / 32,
            });
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.malformed(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty_id = c.u32(&name)?;
            let offset = c.u64(&name)?;
            raw.push((name, dims, ty_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 16 => a,
                _ => {
                    return Err(
                        c.malformed(format!("general.alignment {v:?} is not a power of two"))
                    )
                }
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = std::collections::HashSet::new();
        for (name, dims, ty_id, rel) in raw {
            if !seen.insert(name.clone()) {
                return Err(c.malformed(format!("duplicate tensor {name}")));
            }
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| Error::UnsupportedDtype {
                tensor: name.clone(),
                dtype: format!("ggml type {ty_id}"),
            })?;
            let numel = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| c.malformed(format!("tensor {name}: element count overflows")))?;
            if dims[0] % ty.block_elems() != 0 {
                return Err(c.malformed(format!(
                    "tensor {name}: row length {} is not a multiple of the {ty} block size {}",
                    dims[0],
                    ty.block_elems()
                )));
            }
            let size = (numel / ty.block_elems())
                .checked_mul(ty.block_bytes())
                .ok_or_else(|| c.malformed(format!("tensor {name}: size overflows")))?;
            if rel % alignment != 0 {
                return Err(c.malformed(format!(
                    "tensor {name}: offset {rel} not aligned to {alignment}"
                )));
            }
            let offset = data_start
                .checked_add(rel)
                .ok_or_else(|| c.malformed(format!("tensor {name}: offset overflows")))?;
            match offset.checked_add(size) {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(Error::Truncated {
                        path: path.to_path_buf(),
                        what: format!("tensor {name} data"),
                        offset,
                        needed: size,
                        len: file_len,
                    })
                }
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }
        // Reject overlapping tensor data: two names must never alias the same bytes.
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].size > w[1].offset {
                return Err(c.malformed(format!("tensors {} and {} overlap", w[0].name, w[1].name)));
            }
        }
        Ok((version, metadata, tensors))
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// All metadata.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }
    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    /// A required metadata value, or [`Error::Missing`].
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::Missing {
            path: self.path().to_path_buf(),
            what: format!("metadata key {key}"),
        })
    }
    /// Tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// Looks a tensor up by GGUF name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// The raw (still quantized) bytes of a tensor.
    pub fn raw(&self, t: &TensorInfo) -> Result<&[u8]> {
        self.file.range(t.offset, t.size, &t.name)
    }
    /// Dequantizes a tensor to f32, in GGUF element order.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let raw = self.raw(t)?;
        let mut out = vec![0f32; t.numel() as usize];
        super::dequant::dequantize(t.ty, raw, &mut out);
        self.file.release(t.offset, t.size);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b
    }

    fn parse(bytes: &[u8]) -> Result<(u32, BTreeMap<String, Value>, Vec<TensorInfo>)> {
        GgufFile::parse(bytes, Path::new("test.gguf"))
    }

    fn push_str(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        assert!(matches!(
            parse(b"GGUX\x03\0\0\0"),
            Err(Error::Malformed { .. })
        ));
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&9u32.to_le_bytes());
        assert!(matches!(parse(&b), Err(Error::Malformed { .. })));
        assert!(matches!(parse(b"GG"), Err(Error::Truncated { .. })));
    }

    #[test]
    fn huge_counts_fail_before_allocating() {
        assert!(matches!(
            parse(&header(0, u64::MAX)),
            Err(Error::LimitExceeded { .. })
        ));
        assert!(matches!(
            parse(&header(u64::MAX, 0)),
            Err(Error::LimitExceeded { .. })
        ));
        let mut b = header(0, 1);
        push_str(&mut b, "k");
        b.extend_from_slice(&9u32.to_le_bytes()); // array
        b.extend_from_slice(&4u32.to_le_bytes()); // of u32
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(parse(&b), Err(Error::LimitExceeded { .. })));
        let mut b = header(0, 1);
        b.extend_from_slice(&u64::MAX.to_le_bytes()); // key length
        assert!(matches!(parse(&b), Err(Error::LimitExceeded { .. })));
    }

    #[test]
    fn parses_metadata_and_tensor_and_checks_bounds() {
        let mut b = header(1, 2);
        push_str(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        push_str(&mut b, "llama");
        push_str(&mut b, "n");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        push_str(&mut b, "t");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        let data_start = b.len();
        for i in 0..8 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        let (v, md, ts) = parse(&b).expect("valid file");
        assert_eq!(v, 3);
        assert_eq!(md["general.architecture"].as_str(), Some("llama"));
        assert_eq!(md["n"].as_u64(), Some(7));
        assert_eq!(ts[0].shape(), vec![2, 4]);
        assert_eq!(ts[0].offset, data_start as u64);
        // Drop the last byte: the tensor no longer fits.
        assert!(matches!(
            parse(&b[..b.len() - 1]),
            Err(Error::Truncated { .. })
        ));
        // Every prefix errors cleanly (never panics).
        for n in 0..b.len() {
            assert!(parse(&b[..n]).is_err());
        }
    }
}
