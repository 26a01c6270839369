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
//! | `int3`, `int2` | the same grouped quantizer at 3 / 2 bits | 3 + 32/g, 2 + 32/g |
//! | `--awq` (`int4_awq`) | per-input-channel scales from calibration ([`awq`]) | + 16/rows |
//! | `--gptq` | error feedback through the inverse Hessian ([`gptq`]) | + 0 |
//! | `calibrated_vq` | Hessian-weighted k-means VQ ([`vq`]) | b/d + 16/g + codebook |
//! | `tenpak_x` | low rank + VQ (+ INT2) on the residuals ([`lowrank`]) | see [`lowrank`] |
//!
//! Calibrated options (`awq`, `gptq`) and the importance weighting of `calibrated_vq` and
//! `tenpak_x` take a [`TensorCalib`] (the layer's input statistics) in
//! [`CodecSpec::encode`].

pub mod awq;
pub mod gptq;
pub mod group;
pub mod int4;
pub mod int4_residual;
pub mod lowrank;
pub mod outliers;
pub mod vq;

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
    /// [`Int4`] at 2 or 3 bits (`group2` = bits).
    IntN = 4,
    /// Per-input-channel multipliers around an inner encoding ([`awq`]).
    Scaled = 5,
    /// [`vq::Vq`].
    Vq = 6,
    /// [`lowrank::LowRank`].
    LowRank = 7,
    /// Same-shape encodings that add up ([`lowrank::sum`]).
    Sum = 8,
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
    /// A header for `id` over `[rows, cols]` with every other field zero (wrappers and
    /// codecs that set a field or two with struct update syntax).
    pub fn new(id: CodecId, rows: usize, cols: usize) -> Self {
        Header {
            id,
            symmetric: false,
            group: 0,
            rows: rows as u32,
            cols: cols as u32,
            group2: 0,
            refine: 0,
        }
    }

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
            4 => CodecId::IntN,
            5 => CodecId::Scaled,
            6 => CodecId::Vq,
            7 => CodecId::LowRank,
            8 => CodecId::Sum,
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
        CodecId::Int4 | CodecId::IntN => int4::decode(&h, bytes, out),
        CodecId::Scaled => awq::decode(&h, bytes, out),
        CodecId::Vq => vq::decode(&h, bytes, out),
        CodecId::LowRank => lowrank::decode(&h, bytes, out),
        CodecId::Sum => lowrank::decode_sum(&h, bytes, out),
        CodecId::Int4Residual => int4_residual::decode(&h, bytes, out),
        CodecId::Outliers => outliers::decode(&h, bytes, out),
    }
}

/// Decodes into a new vector.
pub fn decode_vec(bytes: &[u8]) -> Result<Vec<f32>> {
    let h = Header::parse(bytes)?;
    // No encoding here holds more than 4096 weights per byte (a rank-1 factor of a
    // 4096-wide square matrix is 2048); a header claiming more is corrupt. Checked before
    // allocating the output.
    if h.numel() / 4096 > bytes.len() {
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
    /// Grouped INT3.
    Int3,
    /// Grouped INT2.
    Int2,
    /// Importance-weighted vector quantization ([`vq`]).
    CalibratedVq,
    /// Low rank + VQ (+ INT2) ([`lowrank`]).
    TenpakX,
}

impl CodecKind {
    /// Bits per code of the grouped scalar kinds.
    pub fn scalar_bits(self) -> Option<u32> {
        match self {
            CodecKind::Int4 => Some(4),
            CodecKind::Int3 => Some(3),
            CodecKind::Int2 => Some(2),
            _ => None,
        }
    }
}

/// A complete, serialisable codec choice: what the planner assigns to a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodecSpec {
    /// Family.
    pub kind: CodecKind,
    /// Group size (first stage; the scale group of `calibrated_vq` and `tenpak_x`).
    pub group: usize,
    /// Residual group size (`int4_residual`; `tenpak_x`'s INT2 stage, 0 = none).
    pub residual_group: usize,
    /// Symmetric mode (first stage).
    pub symmetric: bool,
    /// Refinement iterations.
    pub refine_iters: u32,
    /// Fraction of weights kept as fp16 outliers (0 = none).
    pub outlier_fraction: f64,
    /// AWQ activation-aware scaling (scalar kinds; needs calibration).
    #[serde(default)]
    pub awq: bool,
    /// GPTQ error feedback (scalar kinds; needs calibration with XᵀX).
    #[serde(default)]
    pub gptq: bool,
    /// Vector length (`calibrated_vq`, `tenpak_x`).
    #[serde(default)]
    pub vq_dim: usize,
    /// Bits per codebook index (`calibrated_vq`, `tenpak_x`).
    #[serde(default)]
    pub vq_bits: u32,
    /// Rank of the low-rank term (`tenpak_x`).
    #[serde(default)]
    pub rank: usize,
}

/// Codec names the CLI accepts.
pub const CODEC_NAMES: &str = "int4, int3, int2, int4_residual, int4_awq, calibrated_vq, tenpak_x, int4_g8_fp16, int4_opt_llama";

/// A layer's input statistics, as `tenpak calibrate` records them.
#[derive(Debug, Clone)]
pub struct TensorCalib {
    /// `E|x_j|` per input channel (AWQ's activation scale).
    pub abs_mean: Vec<f32>,
    /// `E[x_j²]` per input channel (the Hessian diagonal).
    pub sq_mean: Vec<f32>,
    /// `E[x xᵀ]`, when recorded.
    pub xtx: Option<std::sync::Arc<Vec<f32>>>,
    /// GPTQ's inverse-Hessian factor, when recorded and asked for.
    pub hessian: Option<std::sync::Arc<gptq::Hessian>>,
}

impl TensorCalib {
    /// Fails unless the statistics are for an input of `cols` channels.
    pub fn check(&self, cols: usize) -> Result<()> {
        if self.sq_mean.len() != cols || self.abs_mean.len() != cols {
            return Err(Error::ShapeMismatch {
                tensor: "calibration statistics".into(),
                expected: vec![cols],
                got: vec![self.sq_mean.len()],
            });
        }
        Ok(())
    }

    /// Per-weight importance of a `[rows, cols]` matrix: the Hessian diagonal broadcast
    /// over rows.
    pub fn importance(&self, rows: usize, cols: usize) -> Result<Vec<f32>> {
        self.check(cols)?;
        let mut out = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            out.extend_from_slice(&self.sq_mean);
        }
        Ok(out)
    }
}

/// An encoding and what was actually done to produce it.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Label for reports (the spec's label, plus AWQ's α, or why GPTQ was skipped).
    pub label: String,
}

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
            awq: false,
            gptq: false,
            vq_dim: 0,
            vq_bits: 0,
            rank: 0,
        }
    }

    /// The grouped scalar quantizer at `bits` (2, 3 or 4) with group `g`.
    pub fn int(bits: u32, group: usize) -> Self {
        Self {
            kind: match bits {
                2 => CodecKind::Int2,
                3 => CodecKind::Int3,
                _ => CodecKind::Int4,
            },
            ..Self::int4(group)
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

    /// `calibrated_vq`: vectors of `dim`, `bits`-bit indices, one scale per `group`.
    pub fn vq(dim: usize, bits: u32, group: usize) -> Self {
        Self {
            kind: CodecKind::CalibratedVq,
            vq_dim: dim,
            vq_bits: bits,
            ..Self::int4(group)
        }
    }

    /// `tenpak_x`: rank `rank`, then VQ (`dim`, `bits`, `group`), then INT2 with
    /// `residual_group` (0 = none).
    pub fn tenpak_x(
        rank: usize,
        dim: usize,
        bits: u32,
        group: usize,
        residual_group: usize,
    ) -> Self {
        Self {
            kind: CodecKind::TenpakX,
            rank,
            residual_group,
            ..Self::vq(dim, bits, group)
        }
    }

    /// Parses a codec name (see [`CODEC_NAMES`]); `group` overrides the default group size.
    pub fn from_name(name: &str, group: Option<usize>) -> Result<Self> {
        let spec = match name {
            "int4" => Self::int4(group.unwrap_or(128)),
            "int3" => Self::int(3, group.unwrap_or(128)),
            "int2" => Self::int(2, group.unwrap_or(64)),
            "int4_residual" => Self::int4_residual(group.unwrap_or(16), group.unwrap_or(16)),
            "int4_g8_fp16" => Self::int4(group.unwrap_or(8)),
            "int4_opt_llama" => Self::int4(group.unwrap_or(128)),
            "int4_awq" => Self {
                awq: true,
                outlier_fraction: DEFAULT_AWQ_OUTLIERS,
                ..Self::int4(group.unwrap_or(128))
            },
            "calibrated_vq" => Self::vq(2, 8, group.unwrap_or(64)),
            "tenpak_x" => Self::tenpak_x(8, 2, 7, group.unwrap_or(64), 0),
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
        if self.kind == CodecKind::Int4Residual
            || (self.kind == CodecKind::TenpakX && self.residual_group > 0)
        {
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
        let scalar = self.kind.scalar_bits().is_some();
        if self.awq && !scalar {
            return Err(Error::InvalidCodec(
                "AWQ scaling applies to int4/int3/int2".into(),
            ));
        }
        if self.gptq && self.kind == CodecKind::Int4Residual {
            return Err(Error::InvalidCodec(
                "GPTQ error feedback applies to int4/int3/int2, calibrated_vq and tenpak_x".into(),
            ));
        }
        if self.gptq && self.outlier_fraction > 0.0 {
            return Err(Error::InvalidCodec(
                "GPTQ error feedback does not combine with fp16 outliers; drop --outliers".into(),
            ));
        }
        self.build().map(|_| ())
    }

    /// Builds the codec (without the calibrated options: AWQ and GPTQ need
    /// [`CodecSpec::encode`] with statistics).
    pub fn build(&self) -> Result<Box<dyn Codec>> {
        let base: Box<dyn Codec> = match self.kind {
            CodecKind::Int4 | CodecKind::Int3 | CodecKind::Int2 => Box::new(Int4::with_bits(
                self.kind.scalar_bits().unwrap_or(4),
                self.group,
                self.symmetric,
                self.refine_iters,
            )?),
            CodecKind::Int4Residual => Box::new(Int4Residual::new(
                self.group,
                self.residual_group,
                self.refine_iters,
            )?),
            CodecKind::CalibratedVq => Box::new(self.vq_codec()?),
            CodecKind::TenpakX => {
                let (lr, v, i2) = self.tenpak_x_parts()?;
                let mut st: Vec<Box<dyn Codec>> = vec![Box::new(lr), Box::new(v)];
                st.extend(i2.map(|c| Box::new(c) as Box<dyn Codec>));
                Box::new(lowrank::Stages(st))
            }
        };
        Ok(if self.outlier_fraction > 0.0 {
            Box::new(WithOutliers::new(base, self.outlier_fraction)?)
        } else {
            base
        })
    }

    /// The VQ codec of `calibrated_vq` (and of `tenpak_x`'s second stage).
    fn vq_codec(&self) -> Result<vq::Vq> {
        vq::Vq::new(self.vq_dim, self.vq_bits, self.group, vq::DEFAULT_ITERS)
    }

    /// `tenpak_x`'s stages: low rank, VQ, and the INT2 stage when `residual_group > 0`.
    fn tenpak_x_parts(&self) -> Result<(lowrank::LowRank, vq::Vq, Option<Int4>)> {
        let i2 = (self.residual_group > 0)
            .then(|| Int4::with_bits(2, self.residual_group, false, self.refine_iters))
            .transpose()?;
        Ok((lowrank::LowRank::new(self.rank)?, self.vq_codec()?, i2))
    }

    /// Whether encoding needs calibration statistics.
    pub fn needs_calibration(&self) -> bool {
        self.awq || self.gptq
    }

    /// Whether statistics, when present, change the encoding.
    pub fn uses_calibration(&self) -> bool {
        self.needs_calibration()
            || matches!(self.kind, CodecKind::CalibratedVq | CodecKind::TenpakX)
    }

    /// Exact encoded bytes for a `[rows, cols]` matrix.
    pub fn encoded_len(&self, rows: usize, cols: usize) -> Result<usize> {
        let vq_kind = matches!(self.kind, CodecKind::CalibratedVq | CodecKind::TenpakX);
        if vq_kind && cols % self.vq_dim.max(1) != 0 {
            return Err(Error::InvalidCodec(format!(
                "{cols} columns are not a multiple of the vector length {}",
                self.vq_dim
            )));
        }
        let inner = self.build()?.encoded_len(rows, cols);
        Ok(inner + if self.awq { awq::overhead(cols) } else { 0 })
    }

    /// Encodes `w` (`rows × cols`) with this spec. `calib`, the layer's input statistics,
    /// is required for AWQ and GPTQ and weights the fit of `calibrated_vq` and `tenpak_x`
    /// (without it they weigh every weight alike). GPTQ falls back to the plain encode for
    /// a layer whose statistics lack XᵀX, and says so in the label.
    pub fn encode(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        calib: Option<&TensorCalib>,
    ) -> Result<Encoded> {
        check_shape(w, rows, cols)?;
        check_finite(w)?;
        let codec = self.build()?;
        let mut label = self.label();
        if self.needs_calibration() && calib.is_none() {
            return Err(Error::InvalidCodec(format!(
                "{label} needs calibration statistics (tenpak calibrate, then --stats; or --calibrate TEXT)"
            )));
        }
        let bytes = match (self.kind.scalar_bits(), calib) {
            (Some(bits), Some(c)) if self.needs_calibration() => {
                let base = Int4::with_bits(bits, self.group, self.symmetric, self.refine_iters)?;
                let hessian = if self.gptq {
                    if c.hessian.as_ref().is_some_and(|h| h.cols() == cols) {
                        c.hessian.clone()
                    } else {
                        label = label.replace(" gptq", " (gptq skipped: no XᵀX)");
                        None
                    }
                } else {
                    None
                };
                if self.awq {
                    c.check(cols)?;
                    let act = awq::Activations {
                        abs_mean: &c.abs_mean,
                        sq_mean: &c.sq_mean,
                        xtx: c.xtx.as_deref().map(|v| &v[..]),
                    };
                    let feedback = |ws: &[f32], s: &[f32]| -> Result<Vec<u8>> {
                        let h = hessian.as_ref().expect("only passed with a Hessian");
                        base.encode_gptq(ws, rows, cols, &h.scale_inputs(s))
                    };
                    let (alpha, bytes) = awq::encode(
                        codec.as_ref(),
                        w,
                        rows,
                        cols,
                        &act,
                        hessian.is_some().then_some(&feedback as awq::Feedback<'_>),
                    )?;
                    label = label.replace(" awq", &format!(" awq α{alpha:.2}"));
                    bytes
                } else if let Some(h) = &hessian {
                    base.encode_gptq(w, rows, cols, h)?
                } else {
                    codec.encode_checked(w, rows, cols, None)?
                }
            }
            (None, Some(c)) if self.uses_calibration() => {
                let imp = c.importance(rows, cols)?;
                match &c.hessian {
                    Some(h) if self.gptq && h.cols() == cols => {
                        if self.kind == CodecKind::CalibratedVq {
                            self.vq_codec()?.encode_gptq(w, rows, cols, Some(&imp), h)?
                        } else {
                            // tenpak_x: the same stages as `build`, the VQ stage with
                            // error feedback on the low-rank residual.
                            let (lr, v, i2) = self.tenpak_x_parts()?;
                            let lr_f = |r: &[f32]| lr.encode_checked(r, rows, cols, Some(&imp));
                            let vq_f = |r: &[f32]| v.encode_gptq(r, rows, cols, Some(&imp), h);
                            let i2_f;
                            let mut st: Vec<lowrank::StageFn<'_>> = vec![&lr_f, &vq_f];
                            if let Some(c) = &i2 {
                                i2_f = |r: &[f32]| c.encode_checked(r, rows, cols, Some(&imp));
                                st.push(&i2_f);
                            }
                            lowrank::encode_stages(&st, w, rows, cols)?
                        }
                    }
                    _ => {
                        if self.gptq {
                            label = label.replace(" gptq", " (gptq skipped: no XᵀX)");
                        }
                        codec.encode_checked(w, rows, cols, Some(&imp))?
                    }
                }
            }
            _ => codec.encode_checked(w, rows, cols, None)?,
        };
        Ok(Encoded { bytes, label })
    }

    /// Short label for reports.
    pub fn label(&self) -> String {
        let mut s = match self.kind {
            CodecKind::Int4 | CodecKind::Int3 | CodecKind::Int2 => format!(
                "int{} g{}",
                self.kind.scalar_bits().unwrap_or(4),
                self.group
            ),
            CodecKind::Int4Residual => format!("int4+int2 g{}/{}", self.group, self.residual_group),
            CodecKind::CalibratedVq => {
                format!("vq d{} {}b g{}", self.vq_dim, self.vq_bits, self.group)
            }
            CodecKind::TenpakX => format!(
                "x r{} vq d{} {}b g{}{}",
                self.rank,
                self.vq_dim,
                self.vq_bits,
                self.group,
                if self.residual_group > 0 {
                    format!(" +int2 g{}", self.residual_group)
                } else {
                    String::new()
                }
            ),
        };
        if self.symmetric {
            s.push_str(" sym");
        }
        if self.refine_iters == 0 {
            s.push_str(" rtn");
        }
        if self.awq {
            s.push_str(" awq");
        }
        if self.gptq {
            s.push_str(" gptq");
        }
        if self.outlier_fraction > 0.0 {
            s.push_str(&format!(" +{}% fp16", self.outlier_fraction * 100.0));
        }
        s
    }
}

/// Default fp16 outlier fraction of `int4_awq` (AWQ's salient weights): 0.1 %.
pub const DEFAULT_AWQ_OUTLIERS: f64 = 0.001;

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
