//! The `.tnpk` wire format: the fixed header, the canonical JSON manifest, and their
//! validation. `docs/FORMAT.md` is the normative description; this file follows it.
//!
//! Parsing goes wire struct → validated type: [`Header::parse`] checks magic, version,
//! flags and that the regions lie inside the file; [`Manifest::parse`] checks the
//! manifest is canonical JSON, that chunks are aligned, in bounds, sorted and disjoint,
//! and that every tensor and file references existing chunks whose lengths add up.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{CodecKind, CodecSpec};
use crate::dtype::DType;

/// File magic: `\x89TNPK\r\n\x1a` (a non-ASCII first byte and a CR-LF pair catch
/// text-mode transfers, as PNG's magic does).
pub const MAGIC: [u8; 8] = *b"\x89TNPK\r\n\x1a";
/// Header size in bytes.
pub const HEADER_LEN: usize = 128;
/// Major version this code reads and writes.
pub const MAJOR: u16 = 1;
/// Minor version this code writes (1.2: delta artifacts, `docs/FORMAT.md` §6; 1.3: codec ids
/// 13 `factored` and 14 `delta_exact_coded`).
pub const MINOR: u16 = 3;
/// Default chunk alignment (direct I/O and GPU copies).
pub const DEFAULT_ALIGNMENT: u64 = 4096;
/// Default largest chunk.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Largest manifest a reader accepts.
pub const MAX_MANIFEST_LEN: u64 = 256 << 20;
/// Largest signature block a reader accepts.
pub const MAX_SIGNATURE_LEN: u64 = 1 << 16;
/// Largest chunk a reader accepts (writers use [`DEFAULT_CHUNK_SIZE`]; a reader buffers a
/// chunk whole to verify it before decoding).
pub const MAX_CHUNK_LEN: u64 = 1 << 30;
/// Deduplication lets many owners reference one chunk, so the bytes a reader may be asked
/// to assemble exceed the file's. A manifest whose references add up to more than this
/// many times its distinct chunk bytes, plus [`DEDUP_SLACK`], is refused: otherwise a
/// small file could ask for hundreds of GB (every real artifact measured here is < 1.2x).
pub const MAX_DEDUP_FACTOR: u64 = 64;
/// Referenced bytes allowed beyond [`MAX_DEDUP_FACTOR`] (small artifacts of repeated
/// tensors, such as norms of ones).
pub const DEDUP_SLACK: u64 = 256 << 20;

pub use crate::error::FormatError;

/// The validated 128-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Minor version of the writer.
    pub minor: u16,
    /// Manifest region.
    pub manifest_offset: u64,
    /// Manifest length.
    pub manifest_len: u64,
    /// Signature block region (immediately after the manifest).
    pub signature_offset: u64,
    /// Signature block length (0 = unsigned).
    pub signature_len: u64,
    /// sha256 of the manifest bytes.
    pub manifest_sha256: [u8; 32],
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    /// Serialises the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&MAJOR.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[16..24].copy_from_slice(&self.manifest_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.signature_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.signature_len.to_le_bytes());
        b[48..80].copy_from_slice(&self.manifest_sha256);
        b
    }

    /// Parses and validates a header against the total file length.
    pub fn parse(b: &[u8], file_len: u64) -> Result<Self, FormatError> {
        if b.len() < HEADER_LEN {
            return Err(FormatError::Layout(format!(
                "{} bytes, shorter than the 128-byte header",
                b.len()
            )));
        }
        if b[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let major = u16::from_le_bytes([b[8], b[9]]);
        if major != MAJOR {
            return Err(FormatError::UnsupportedVersion {
                found: major,
                supported: MAJOR,
            });
        }
        let flags = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if flags != 0 {
            return Err(FormatError::UnknownFlags(flags));
        }
        if b[80..HEADER_LEN].iter().any(|&x| x != 0) {
            return Err(FormatError::ReservedNotZero);
        }
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&b[48..80]);
        let h = Header {
            minor: u16::from_le_bytes([b[10], b[11]]),
            manifest_offset: u64_at(b, 16),
            manifest_len: u64_at(b, 24),
            signature_offset: u64_at(b, 32),
            signature_len: u64_at(b, 40),
            manifest_sha256: sha,
        };
        if h.manifest_offset < HEADER_LEN as u64 {
            return Err(FormatError::Layout("manifest overlaps the header".into()));
        }
        if h.manifest_len == 0 || h.manifest_len > MAX_MANIFEST_LEN {
            return Err(FormatError::Layout(format!(
                "manifest length {}",
                h.manifest_len
            )));
        }
        if h.signature_len > MAX_SIGNATURE_LEN {
            return Err(FormatError::Layout(format!(
                "signature block length {}",
                h.signature_len
            )));
        }
        if h.manifest_offset.checked_add(h.manifest_len) != Some(h.signature_offset) {
            return Err(FormatError::Layout(
                "the signature block must follow the manifest".into(),
            ));
        }
        match h.signature_offset.checked_add(h.signature_len) {
            Some(end) if end == file_len => Ok(h),
            Some(end) if end > file_len => Err(FormatError::Layout(format!(
                "file is truncated: header needs {end} bytes, file has {file_len}"
            ))),
            _ => Err(FormatError::Layout(format!(
                "{} bytes after the signature block",
                file_len.saturating_sub(h.signature_offset.saturating_add(h.signature_len))
            ))),
        }
    }
}

/// One chunk: a byte range of the file named by its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// Absolute file offset (multiple of the alignment).
    pub offset: u64,
    /// Byte length (> 0).
    pub length: u64,
    /// Lowercase hex sha256 of the bytes.
    pub sha256: String,
}

/// How a tensor's bytes decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "codec", rename_all = "snake_case")]
pub enum Encoding {
    /// Little-endian values in the tensor's `dtype`.
    Raw,
    /// [`crate::codec::Int4`] (the bytes start with the codec header).
    Int4 {
        /// Group size.
        group: u32,
        /// Symmetric mode.
        symmetric: bool,
        /// Refinement iterations.
        refine_iters: u32,
        /// fp16 outliers, parts per million of the weights.
        outliers_ppm: u32,
    },
    /// [`crate::codec::Int4Residual`].
    Int4Residual {
        /// INT4 group size.
        group: u32,
        /// INT2 group size.
        residual_group: u32,
        /// Refinement iterations.
        refine_iters: u32,
        /// fp16 outliers, parts per million of the weights.
        outliers_ppm: u32,
    },
    /// Any other encoding of [`crate::codec`]: `int3`/`int2`, AWQ-scaled, `calibrated_vq`,
    /// `tenpak_x` (the bytes start with the codec header, which says how they decode).
    Composite {
        /// The codec and its parameters, for people (`int4 g128 awq +0.1% fp16`).
        description: String,
    },
    /// (1.2, deltas only) The base's tensor of the same name, unchanged: no bytes.
    Base,
    /// (1.2, deltas only) A delta encoding of `docs/FORMAT.md` §4 applied to the base's
    /// tensor of the same name (`delta_exact`, `delta_sign`, `delta_add`, `delta_grid`).
    Delta {
        /// The codec and its parameters, for people (`delta + int2 g64 sym`).
        description: String,
    },
    /// A codec this reader does not know (from a newer minor version); the tensor can be
    /// listed but not decoded.
    #[serde(other)]
    Unknown,
}

impl Encoding {
    /// The encoding of a codec spec.
    pub fn from_spec(s: &CodecSpec) -> Self {
        let outliers_ppm = (s.outlier_fraction * 1e6).round() as u32;
        if s.awq {
            return Encoding::Composite {
                description: s.label(),
            };
        }
        match s.kind {
            CodecKind::Int4 => Encoding::Int4 {
                group: s.group as u32,
                symmetric: s.symmetric,
                refine_iters: s.refine_iters,
                outliers_ppm,
            },
            CodecKind::Int4Residual => Encoding::Int4Residual {
                group: s.group as u32,
                residual_group: s.residual_group as u32,
                refine_iters: s.refine_iters,
                outliers_ppm,
            },
            _ => Encoding::Composite {
                description: s.label(),
            },
        }
    }

    /// Short label for tables.
    pub fn label(&self, dtype: DType) -> String {
        match self {
            Encoding::Raw => format!("raw {dtype}"),
            Encoding::Composite { description } | Encoding::Delta { description } => {
                description.clone()
            }
            Encoding::Base => "= base".into(),
            Encoding::Unknown => "unknown codec".into(),
            // The spec's own label: one labelling for reports and artifacts.
            _ => self.spec().map(|s| s.label()).unwrap_or_default(),
        }
    }

    /// The codec spec an `int4`/`int4_residual` entry describes (`None` for the others,
    /// whose description is stored as written).
    pub fn spec(&self) -> Option<CodecSpec> {
        let ppm = |p: u32| p as f64 / 1e6;
        match *self {
            Encoding::Int4 {
                group,
                symmetric,
                refine_iters,
                outliers_ppm,
            } => Some(CodecSpec {
                symmetric,
                refine_iters,
                outlier_fraction: ppm(outliers_ppm),
                ..CodecSpec::int4(group as usize)
            }),
            Encoding::Int4Residual {
                group,
                residual_group,
                refine_iters,
                outliers_ppm,
            } => Some(CodecSpec {
                refine_iters,
                outlier_fraction: ppm(outliers_ppm),
                ..CodecSpec::int4_residual(group as usize, residual_group as usize)
            }),
            _ => None,
        }
    }
}

/// One tensor in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// HF name.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<u64>,
    /// The source checkpoint's dtype (what `raw` stores and what unpack writes by default).
    pub dtype: DType,
    /// How the bytes decode.
    pub encoding: Encoding,
    /// Total bytes of the encoding (sum of its chunks).
    pub encoded_length: u64,
    /// Indices into the chunk table, in order.
    pub chunks: Vec<u32>,
}

impl TensorEntry {
    /// Element count.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The tensor as a model source lists it (its own dtype, its encoding's label).
    pub fn meta(&self) -> crate::source::TensorMeta {
        crate::source::TensorMeta {
            name: self.name.clone(),
            shape: self.shape.iter().map(|&d| d as usize).collect(),
            dtype: self.dtype,
            stored_as: self.encoding.label(self.dtype),
        }
    }
}

/// A non-tensor file (config, tokenizer) carried by the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Plain file name (no directories).
    pub name: String,
    /// Byte length.
    pub length: u64,
    /// Chunk indices.
    pub chunks: Vec<u32>,
}

/// The base a delta artifact applies to (`docs/FORMAT.md` §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// `sha256:<hex>` digest of the base artifact's manifest.
    pub digest: String,
}

/// The manifest: everything about an artifact except the chunk bytes.
///
/// Deserializing validates it: a `Manifest` read from JSON has
/// its chunk table sorted, aligned and non-overlapping, every reference in range, every
/// length consistent and every file name plain. [`Manifest::parse`] adds the checks that
/// need the file (canonical bytes, chunks inside the data region).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct Manifest {
    /// Always `"tnpk"`.
    pub format: String,
    /// Chunk alignment in bytes.
    pub alignment: u64,
    /// Largest chunk the writer produced.
    pub chunk_size: u64,
    /// Writer name and version.
    pub created_by: String,
    /// Free-form string metadata (source, target, ...).
    pub metadata: BTreeMap<String, String>,
    /// The base of a delta artifact; `None` for a full model.
    pub base: Option<BaseRef>,
    /// Chunk table, sorted by offset.
    pub chunks: Vec<Chunk>,
    /// Tensors, in write order.
    pub tensors: Vec<TensorEntry>,
    /// Side files.
    pub files: Vec<FileEntry>,
}

// `remote = "Self"` makes the derives inherent functions (`Manifest::deserialize`: no
// validation); the trait impls below add validation to deserialization.
impl Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Manifest::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = Manifest::deserialize(d)?;
        m.validate().map_err(serde::de::Error::custom)?;
        Ok(m)
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Manifest {
    /// Weights over every tensor.
    pub fn weights(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel()).sum()
    }

    /// What the tensors weigh in their source dtype (bf16/fp16/f32): the bytes ratios are
    /// taken against.
    pub fn source_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.numel() * t.dtype.size() as u64)
            .sum()
    }

    /// Canonical bytes: compact JSON with object keys sorted (serde_json's map is a
    /// BTreeMap), integers only.
    pub fn to_canonical(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Parses manifest bytes, requiring canonical form, then validates it against the
    /// chunk region `[data_start, data_end)`.
    pub fn parse(bytes: &[u8], data_start: u64, data_end: u64) -> Result<Self, FormatError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Manifest(e.to_string()))?;
        // Canonical: re-serialising the parsed value (keys sorted, compact) must give
        // the same bytes, so one content has one digest. Unknown fields survive this.
        if serde_json::to_vec(&value).map_err(|e| FormatError::Manifest(e.to_string()))? != bytes {
            return Err(FormatError::Manifest(
                "not in canonical form (sorted keys, no whitespace)".into(),
            ));
        }
        if contains_float(&value) {
            return Err(FormatError::Manifest(
                "floating-point numbers are not allowed".into(),
            ));
        }
        // Unvalidated first (the inherent derive), so validation errors stay typed
        // (through serde they would be stringified).
        let m = Manifest::deserialize(value).map_err(|e| FormatError::Manifest(e.to_string()))?;
        m.validate()?;
        m.check_region(data_start, data_end)?;
        Ok(m)
    }

    /// Fails unless every chunk lies in the data region `[data_start, data_end)` (the
    /// table is sorted and non-overlapping already, so the first and last decide).
    fn check_region(&self, data_start: u64, data_end: u64) -> Result<(), FormatError> {
        if let Some(first) = self.chunks.first() {
            if first.offset < data_start {
                return Err(FormatError::Manifest(
                    "chunk 0 precedes the data region".into(),
                ));
            }
        }
        if let Some(last) = self.chunks.last() {
            if last.offset + last.length > data_end {
                return Err(FormatError::Manifest(format!(
                    "chunk {} ends past the data region",
                    self.chunks.len() - 1
                )));
            }
        }
        Ok(())
    }

    /// The checks that need nothing but the manifest (run by deserialization).
    fn validate(&self) -> Result<(), FormatError> {
        let bad = |s: String| Err(FormatError::Manifest(s));
        if self.format != "tnpk" {
            return bad(format!("format is {:?}, not \"tnpk\"", self.format));
        }
        if !self.alignment.is_power_of_two() || self.alignment < 64 {
            return bad(format!(
                "alignment {} is not a power of two >= 64",
                self.alignment
            ));
        }
        let mut prev_end = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            if c.length > MAX_CHUNK_LEN {
                return bad(format!(
                    "chunk {i}: {} bytes, more than the {MAX_CHUNK_LEN} a reader accepts",
                    c.length
                ));
            }
            if c.length == 0 || c.offset % self.alignment != 0 {
                return bad(format!(
                    "chunk {i}: empty or unaligned (offset {})",
                    c.offset
                ));
            }
            if c.offset < prev_end {
                return bad(format!(
                    "chunk {i} overlaps the previous chunk or precedes the data region"
                ));
            }
            let Some(end) = c.offset.checked_add(c.length) else {
                return bad(format!("chunk {i} ends past the end of any file"));
            };
            if c.sha256.len() != 64
                || !c
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return bad(format!("chunk {i}: sha256 is not 64 lowercase hex digits"));
            }
            prev_end = end;
        }
        let n = self.chunks.len();
        let distinct: u64 = self.chunks.iter().map(|c| c.length).sum();
        let referenced = std::cell::Cell::new(0u64);
        let check_refs = |owner: &str, refs: &[u32], length: u64| -> Result<(), FormatError> {
            let mut total = 0u64;
            for &r in refs {
                let Some(c) = self.chunks.get(r as usize) else {
                    return Err(FormatError::Manifest(format!(
                        "{owner}: chunk {r} does not exist ({n} chunks)"
                    )));
                };
                total = total.saturating_add(c.length);
            }
            if total != length {
                return Err(FormatError::Manifest(format!(
                    "{owner}: chunks hold {total} bytes, entry says {length}"
                )));
            }
            referenced.set(referenced.get().saturating_add(total));
            let cap = distinct
                .saturating_mul(MAX_DEDUP_FACTOR)
                .saturating_add(DEDUP_SLACK);
            if referenced.get() > cap {
                return Err(FormatError::Manifest(format!(
                    "{owner}: references add up to {} bytes, more than {MAX_DEDUP_FACTOR}x the \
                     {distinct} bytes of distinct chunks (+{DEDUP_SLACK}): refused as a \
                     decompression bomb",
                    referenced.get()
                )));
            }
            Ok(())
        };
        let mut names = HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return bad(format!("duplicate tensor {}", t.name));
            }
            if t.shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .is_none()
            {
                return bad(format!("tensor {}: shape overflows", t.name));
            }
            if t.encoding == Encoding::Raw
                && t.numel().checked_mul(t.dtype.size() as u64) != Some(t.encoded_length)
            {
                return bad(format!(
                    "tensor {}: raw length {} does not match its shape",
                    t.name, t.encoded_length
                ));
            }
            let against_base = matches!(t.encoding, Encoding::Base | Encoding::Delta { .. });
            if against_base && self.base.is_none() {
                return bad(format!(
                    "tensor {}: a delta encoding in an artifact without a base",
                    t.name
                ));
            }
            if t.encoding == Encoding::Base && t.encoded_length != 0 {
                return bad(format!("tensor {}: a base reference holds bytes", t.name));
            }
            check_refs(&t.name, &t.chunks, t.encoded_length)?;
        }
        if let Some(b) = &self.base {
            let hex = b.digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return bad(format!("base digest {:?} is not sha256:<64 hex>", b.digest));
            }
        }
        let mut fnames = HashSet::new();
        for f in &self.files {
            let plain = !f.name.is_empty()
                && !f.name.contains(['/', '\\', '\0'])
                && f.name != "."
                && f.name != ".."
                && !f.name.starts_with('.');
            if !plain {
                return bad(format!("file name {:?} is not a plain file name", f.name));
            }
            if !fnames.insert(f.name.as_str()) {
                return bad(format!("duplicate file {}", f.name));
            }
            check_refs(&f.name, &f.chunks, f.length)?;
        }
        Ok(())
    }

    /// `sha256:<hex>` of canonical manifest bytes: the artifact's name.
    pub fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", sha256_hex(bytes))
    }
}

/// A whole file around the given regions: header, `data` at offset [`HEADER_LEN`], then the
/// manifest and the signature block, with the manifest digest computed. No check is made:
/// this is for tests and fuzzers that build hostile files which still reach validation
/// and decoding (a random manifest never matches a random digest).
pub fn assemble(data: &[u8], manifest: &[u8], signature: &[u8]) -> Vec<u8> {
    let manifest_offset = (HEADER_LEN + data.len()) as u64;
    let header = Header {
        minor: MINOR,
        manifest_offset,
        manifest_len: manifest.len() as u64,
        signature_offset: manifest_offset + manifest.len() as u64,
        signature_len: signature.len() as u64,
        manifest_sha256: Sha256::digest(manifest).into(),
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(data);
    out.extend_from_slice(manifest);
    out.extend_from_slice(signature);
    out
}

fn contains_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => !(n.is_u64() || n.is_i64()),
        serde_json::Value::Array(a) => a.iter().any(contains_float),
        serde_json::Value::Object(o) => o.values().any(contains_float),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            minor: 0,
            manifest_offset: 4096,
            manifest_len: 100,
            signature_offset: 4196,
            signature_len: 0,
            manifest_sha256: [7; 32],
        }
    }

    #[test]
    fn header_round_trip_and_rejections() {
        let h = header();
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b, 4196), Ok(h));
        assert!(matches!(
            Header::parse(&b, 4000),
            Err(FormatError::Layout(_))
        ));
        assert!(matches!(
            Header::parse(&b, 5000),
            Err(FormatError::Layout(_))
        ));
        let mut x = b;
        x[0] = 0;
        assert_eq!(Header::parse(&x, 4196), Err(FormatError::BadMagic));
        let mut x = b;
        x[8] = 2;
        assert_eq!(
            Header::parse(&x, 4196),
            Err(FormatError::UnsupportedVersion {
                found: 2,
                supported: MAJOR
            })
        );
        let mut x = b;
        x[12] = 1;
        assert_eq!(Header::parse(&x, 4196), Err(FormatError::UnknownFlags(1)));
        let mut x = b;
        x[100] = 1;
        assert_eq!(Header::parse(&x, 4196), Err(FormatError::ReservedNotZero));
        let mut x = h;
        x.manifest_len = u64::MAX;
        assert!(matches!(
            Header::parse(&x.to_bytes(), 4196),
            Err(FormatError::Layout(_))
        ));
    }

    fn manifest() -> Manifest {
        Manifest {
            format: "tnpk".into(),
            alignment: 4096,
            chunk_size: DEFAULT_CHUNK_SIZE,
            created_by: "test".into(),
            metadata: BTreeMap::new(),
            base: None,
            chunks: vec![Chunk {
                offset: 4096,
                length: 8,
                sha256: "0".repeat(64),
            }],
            tensors: vec![TensorEntry {
                name: "a".into(),
                shape: vec![2, 2],
                dtype: DType::BF16,
                encoding: Encoding::Raw,
                encoded_length: 8,
                chunks: vec![0],
            }],
            files: vec![],
        }
    }

    #[test]
    fn manifest_must_be_canonical_and_consistent() {
        let m = manifest();
        let bytes = m.to_canonical();
        assert_eq!(Manifest::parse(&bytes, 4096, 8192).expect("valid"), m);
        // Whitespace or reordered keys: same content, different bytes: rejected.
        let pretty = serde_json::to_vec_pretty(&serde_json::to_value(&m).expect("v")).expect("p");
        assert!(matches!(
            Manifest::parse(&pretty, 4096, 8192),
            Err(FormatError::Manifest(_))
        ));
        let mut bad = m.clone();
        bad.chunks[0].offset = 4097;
        assert!(matches!(
            Manifest::parse(&bad.to_canonical(), 4096, 8192),
            Err(FormatError::Manifest(_))
        ));
        let mut bad = m.clone();
        bad.tensors[0].chunks = vec![3];
        assert!(matches!(
            Manifest::parse(&bad.to_canonical(), 4096, 8192),
            Err(FormatError::Manifest(_))
        ));
        let mut bad = m.clone();
        bad.tensors[0].shape = vec![3, 3];
        assert!(matches!(
            Manifest::parse(&bad.to_canonical(), 4096, 8192),
            Err(FormatError::Manifest(_))
        ));
        let mut bad = m.clone();
        bad.files.push(FileEntry {
            name: "../evil".into(),
            length: 8,
            chunks: vec![0],
        });
        assert!(matches!(
            Manifest::parse(&bad.to_canonical(), 4096, 8192),
            Err(FormatError::Manifest(_))
        ));
        assert!(
            matches!(
                Manifest::parse(&m.to_canonical(), 4096, 4100),
                Err(FormatError::Manifest(_))
            ),
            "chunk past the data region"
        );
        // Deserializing validates too: an inconsistent manifest cannot be read back.
        let mut bad = m.clone();
        bad.tensors[0].chunks = vec![3];
        let json = serde_json::to_string(&bad).expect("json");
        assert!(serde_json::from_str::<Manifest>(&json)
            .is_err_and(|e| e.to_string().contains("chunk 3 does not exist")));
        let with_float = String::from_utf8(bytes.clone())
            .expect("utf8")
            .replace("\"alignment\":4096", "\"alignment\":4096.0");
        assert!(matches!(
            Manifest::parse(with_float.as_bytes(), 4096, 8192),
            Err(FormatError::Manifest(_))
        ));
    }

    #[test]
    fn decompression_bombs_are_refused_before_any_chunk_is_read() {
        // One 4 KiB chunk referenced by a tensor 2^20 times: 4 GiB asked of a 4 KiB file
        // (a Vec of that size would be allocated to assemble the tensor).
        let mut m = manifest();
        m.chunks[0].length = 4096;
        let refs = 1u32 << 20;
        m.tensors[0] = TensorEntry {
            name: "bomb".into(),
            shape: vec![1u64 << 31],
            dtype: DType::BF16,
            encoding: Encoding::Raw,
            encoded_length: 4096 * refs as u64,
            chunks: vec![0; refs as usize],
        };
        match Manifest::parse(&m.to_canonical(), 4096, 8192) {
            Err(FormatError::Manifest(e)) => assert!(e.contains("decompression bomb"), "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Legitimate sharing (norms of ones in every layer) stays well inside the cap.
        let mut m = manifest();
        for i in 0..100 {
            let mut t = m.tensors[0].clone();
            t.name = format!("norm{i}");
            m.tensors.push(t);
        }
        Manifest::parse(&m.to_canonical(), 4096, 8192).expect("shared chunks are fine");
        // A chunk larger than a reader buffers.
        let mut m = manifest();
        m.chunks[0].length = MAX_CHUNK_LEN + 4096;
        m.tensors[0].shape = vec![(MAX_CHUNK_LEN + 4096) / 2];
        m.tensors[0].encoded_length = MAX_CHUNK_LEN + 4096;
        assert!(matches!(
            Manifest::parse(&m.to_canonical(), 4096, 1 << 40),
            Err(FormatError::Manifest(e)) if e.contains("more than")
        ));
    }

    #[test]
    fn unknown_fields_and_codecs_are_tolerated() {
        let mut v = serde_json::to_value(manifest()).expect("v");
        v["zz_future"] = serde_json::json!(1);
        v["tensors"][0]["encoding"] = serde_json::json!({"codec": "future_codec", "x": 1});
        let bytes = serde_json::to_vec(&v).expect("b");
        let m = Manifest::parse(&bytes, 4096, 8192).expect("tolerated");
        assert_eq!(m.tensors[0].encoding, Encoding::Unknown);
    }
}
