//! Codecs: one trait, one file per codec, exact bit accounting.
//!
//! An encoding is a self-describing byte string: a 16-byte [`Header`] (codec id, mode,
//! group sizes, shape), then the codec's arrays. `bits_per_weight` is always
//! `8 · encoded bytes / weights`, so headers, scales, offsets, codes, outlier indices and
//! values — everything — is counted. [`decode`] needs only the bytes.
//!
//! | codec | what | bits/weight (asymmetric, fp16 scale + offset) |
//! |---|---|---|
//! | `int4` | grouped 4-bit, iterative scale refinement | 4 + 32/g |
//! | `int4_residual` | `int4` then 2-bit on the residual | 6 + 32/g + 32/g₂ |
//! | `outliers` (option) | top p% weights kept as fp16 (u32 index + f16 value) | + 48·p |
//! | `int4_g8_fp16` | preset: `int4`, g = 8 | 8 |
//! | `int4_opt_llama` | preset: `int4`, g = 128 | 4.25 |

pub mod gptq;
pub mod group;
pub mod int4;
pub mod int4_residual;
pub mod outliers;

use serde::{Deserialize, Serialize};

pub use int4::Int4;
pub use int4_residual::Int4Residual;
pub use outliers::WithOutliers;

use crate::{Error, Result};

/// Smallest group size accepted.
pub const MIN_GROUP: usize = 8;
/// Largest group size accepted.
pub const MAX_GROUP: usize = 4096;
/// Default refinement iterations (the seed's "5 iterations").
pub const DEFAULT_REFINE_ITERS: u32 = 5;
/// Bytes of the header every encoding starts with.
pub const HEADER_LEN: usize = 16;

/// Codec ids in the header's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CodecId {
    /// [`Int4`].
    Int4 = 1,
    /// [`Int4Residual`].
    Int4Residual = 2,
    /// [`WithOutliers`].
    Outliers = 3,
}

/// The fixed header of an encoding.
///
/// Layout (little-endian): `id u8 | flags u8 | group u16 | rows u32 | cols u32 |
/// group2 u16 | refine u8 | reserved u8`. Flag bit 0: symmetric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Codec.
    pub id: CodecId,
    /// Symmetric mode.
    pub symmetric: bool,
    /// Group size of the first stage.
    pub group: u16,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// Group size of the second stage (residual), or a codec-specific count.
    pub group2: u16,
    /// Refinement iterations used (informational).
    pub refine: u8,
}

impl Header {
    /// Serialises to 16 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.id as u8;
        b[1] = self.symmetric as u8;
        b[2..4].copy_from_slice(&self.group.to_le_bytes());
        b[4..8].copy_from_slice(&self.rows.to_le_bytes());
        b[8..12].copy_from_slice(&self.cols.to_le_bytes());
        b[12..14].copy_from_slice(&self.group2.to_le_bytes());
        b[14] = self.refine;
        b
    }

    /// Parses and validates the first 16 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let Some(b) = bytes.get(..HEADER_LEN) else {
            return Err(Error::CorruptEncoding(format!(
                "{} bytes, shorter than the header",
                bytes.len()
            )));
        };
        let id = match b[0] {
            1 => CodecId::Int4,
            2 => CodecId::Int4Residual,
            3 => CodecId::Outliers,
            x => return Err(Error::CorruptEncoding(format!("unknown codec id {x}"))),
        };
        if b[1] > 1 || b[15] != 0 {
            return Err(Error::CorruptEncoding("reserved header bits set".into()));
        }
        Ok(Header {
            id,
            symmetric: b[1] == 1,
            group: u16::from_le_bytes([b[2], b[3]]),
            rows: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            cols: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            group2: u16::from_le_bytes([b[12], b[13]]),
            refine: b[14],
        })
    }

    /// Element count.
    pub fn numel(&self) -> usize {
        self.rows as usize * self.cols as usize
    }
}

/// A weight codec: encodes a row-major `[rows, cols]` f32 matrix to bytes and back.
pub trait Codec: Send + Sync {
    /// Name and parameters for reports (`int4 g128 asym refine5`).
    fn describe(&self) -> String;

    /// Encodes `w` (`rows * cols` values). `importance`, when given, weights each
    /// element's squared error in the fit (0 excludes it). NaN or infinity, a shape that
    /// does not match, or an importance of the wrong length is an error. The checks live
    /// here, once, for every codec; implementations provide [`Codec::encode_checked`].
    fn encode(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        check_shape(w, rows, cols)?;
        check_finite(w)?;
        if let Some(h) = importance {
            if h.len() != w.len() {
                return Err(Error::ShapeMismatch {
                    tensor: "importance".into(),
                    expected: vec![rows, cols],
                    got: vec![h.len()],
                });
            }
        }
        self.encode_checked(w, rows, cols, importance)
    }

    /// [`Codec::encode`] on inputs it has validated (shape, finiteness, importance
    /// length). Codecs that wrap others call this on the inner codec, so the checks run once.
    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>>;

    /// Exact encoded size in bytes for a `[rows, cols]` matrix.
    fn encoded_len(&self, rows: usize, cols: usize) -> usize;

    /// Bits per weight for a `[rows, cols]` matrix, everything counted.
    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        self.encoded_len(rows, cols) as f64 * 8.0 / (rows * cols).max(1) as f64
    }
}

/// Decodes any encoding produced by this module into `out`, checking its header
/// against `out.len()` and its length against the header.
pub fn decode(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let h = Header::parse(bytes)?;
    if h.numel() != out.len() {
        return Err(Error::CorruptEncoding(format!(
            "encoding holds {}x{} weights, output has {}",
            h.rows,
            h.cols,
            out.len()
        )));
    }
    match h.id {
        CodecId::Int4 => int4::decode(&h, bytes, out),
        CodecId::Int4Residual => int4_residual::decode(&h, bytes, out),
        CodecId::Outliers => outliers::decode(&h, bytes, out),
    }
}

/// Decodes into a new vector.
pub fn decode_vec(bytes: &[u8]) -> Result<Vec<f32>> {
    let h = Header::parse(bytes)?;
    // Every codec spends at least 2 bits per weight, so a header claiming more weights
    // than 4 per byte is corrupt; checked before allocating the output.
    if h.numel() / 4 > bytes.len() {
        return Err(Error::CorruptEncoding(format!(
            "header claims {}x{} weights in {} bytes",
            h.rows,
            h.cols,
            bytes.len()
        )));
    }
    let mut out = vec![0f32; h.numel()];
    decode(bytes, &mut out)?;
    Ok(out)
}

/// Fails with [`Error::NonFinite`] on the first NaN or infinity.
pub fn check_finite(w: &[f32]) -> Result<()> {
    match w.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            index,
            value: w[index].to_string(),
        }),
    }
}

/// The base codec families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodecKind {
    /// Grouped INT4.
    Int4,
    /// INT4 + INT2 residual.
    Int4Residual,
}

/// A complete, serialisable codec choice: what the planner assigns to a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodecSpec {
    /// Family.
    pub kind: CodecKind,
    /// Group size (first stage).
    pub group: usize,
    /// Residual group size (`int4_residual` only).
    pub residual_group: usize,
    /// Symmetric mode (first stage).
    pub symmetric: bool,
    /// Refinement iterations.
    pub refine_iters: u32,
    /// Fraction of weights kept as fp16 outliers (0 = none).
    pub outlier_fraction: f64,
}

/// Codec names the CLI accepts.
pub const CODEC_NAMES: &str = "int4, int4_residual, int4_g8_fp16, int4_opt_llama";

impl CodecSpec {
    /// Plain asymmetric refined INT4 with group `g`.
    pub fn int4(group: usize) -> Self {
        Self {
            kind: CodecKind::Int4,
            group,
            residual_group: 0,
            symmetric: false,
            refine_iters: DEFAULT_REFINE_ITERS,
            outlier_fraction: 0.0,
        }
    }

    /// INT4 (g) + INT2 residual (g2).
    pub fn int4_residual(group: usize, residual_group: usize) -> Self {
        Self {
            kind: CodecKind::Int4Residual,
            residual_group,
            ..Self::int4(group)
        }
    }

    /// Parses a codec name (see [`CODEC_NAMES`]); `group` overrides the default group size.
    pub fn from_name(name: &str, group: Option<usize>) -> Result<Self> {
        let spec = match name {
            "int4" => Self::int4(group.unwrap_or(128)),
            "int4_residual" => Self::int4_residual(group.unwrap_or(16), group.unwrap_or(16)),
            "int4_g8_fp16" => Self::int4(group.unwrap_or(8)),
            "int4_opt_llama" => Self::int4(group.unwrap_or(128)),
            other => {
                return Err(Error::InvalidCodec(format!(
                    "unknown codec {other:?} (known: {CODEC_NAMES})"
                )))
            }
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks parameter ranges.
    pub fn validate(&self) -> Result<()> {
        let check = |g: usize, what: &str| {
            if (MIN_GROUP..=MAX_GROUP).contains(&g) {
                Ok(())
            } else {
                Err(Error::InvalidCodec(format!(
                    "{what} {g} outside {MIN_GROUP}..={MAX_GROUP}"
                )))
            }
        };
        check(self.group, "group size")?;
        if self.kind == CodecKind::Int4Residual {
            check(self.residual_group, "residual group size")?;
        }
        if !(0.0..=0.5).contains(&self.outlier_fraction) {
            return Err(Error::InvalidCodec(format!(
                "outlier fraction {} outside 0..=0.5",
                self.outlier_fraction
            )));
        }
        if self.refine_iters > 255 {
            return Err(Error::InvalidCodec(
                "more than 255 refinement iterations".into(),
            ));
        }
        Ok(())
    }

    /// Builds the codec.
    pub fn build(&self) -> Result<Box<dyn Codec>> {
        self.validate()?;
        let base: Box<dyn Codec> = match self.kind {
            CodecKind::Int4 => Box::new(Int4::new(self.group, self.symmetric, self.refine_iters)?),
            CodecKind::Int4Residual => Box::new(Int4Residual::new(
                self.group,
                self.residual_group,
                self.refine_iters,
            )?),
        };
        Ok(if self.outlier_fraction > 0.0 {
            Box::new(WithOutliers::new(base, self.outlier_fraction)?)
        } else {
            base
        })
    }

    /// Short label for reports.
    pub fn label(&self) -> String {
        let mut s = match self.kind {
            CodecKind::Int4 => format!("int4 g{}", self.group),
            CodecKind::Int4Residual => format!("int4+int2 g{}/{}", self.group, self.residual_group),
        };
        if self.symmetric {
            s.push_str(" sym");
        }
        if self.refine_iters == 0 {
            s.push_str(" rtn");
        }
        if self.outlier_fraction > 0.0 {
            s.push_str(&format!(" +{}% fp16", self.outlier_fraction * 100.0));
        }
        s
    }
}

pub(crate) fn check_shape(w: &[f32], rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(w.len()) {
        return Err(Error::ShapeMismatch {
            tensor: String::new(),
            expected: vec![rows, cols],
            got: vec![w.len()],
        });
    }
    if rows > u32::MAX as usize || cols > u32::MAX as usize {
        return Err(Error::InvalidCodec(format!(
            "shape {rows}x{cols} exceeds u32"
        )));
    }
    Ok(())
}

pub(crate) fn f16_bytes(v: &[half::f16]) -> impl Iterator<Item = u8> + '_ {
    v.iter().flat_map(|x| x.to_bits().to_le_bytes())
}
