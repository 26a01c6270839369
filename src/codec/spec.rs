//! [`CodecSpec`]: a complete, serialisable codec choice (what the planner assigns to a
//! tensor), and the types of the codec table's rows ([`EncodingRow`], [`Family`]) that
//! each codec file fills in. What a spec *does* (validate, build, encode) is in
//! [`super::choice`], through the table.

use serde::{Deserialize, Serialize};

use super::header::{CodecId, Header};
use super::traits::{BaseView, Codec, Decoder, Requantizer};
use crate::error::CodecProblem;
use crate::{Error, Result};

/// Smallest group size accepted.
pub const MIN_GROUP: usize = 8;
/// Largest group size accepted.
pub const MAX_GROUP: usize = 4096;
/// Default refinement iterations (the seed's "5 iterations").
pub const DEFAULT_REFINE_ITERS: u32 = 5;
/// Default fp16 outlier fraction of `int4_awq` (AWQ's salient weights): 0.1 %.
pub const DEFAULT_AWQ_OUTLIERS: f64 = 0.001;

/// A group size check shared by every grouped codec.
pub fn check_group(codec: &str, parameter: &'static str, g: usize) -> Result<()> {
    if (MIN_GROUP..=MAX_GROUP).contains(&g) {
        Ok(())
    } else {
        Err(Error::invalid_codec(
            codec,
            CodecProblem::OutOfRange {
                parameter,
                value: g as f64,
                min: MIN_GROUP as f64,
                max: MAX_GROUP as f64,
            },
        ))
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
    pub hessian: Option<std::sync::Arc<super::gptq::Hessian>>,
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
}

/// How the GPU path (`tenpak::gpu`) decodes an encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuDecode {
    /// The grouped-INT kernels of `tenpak-kernels` (one or two stages, any geometry).
    GroupedInt,
    /// A wrapper: its inner encoding's path, then a scatter of the kept values.
    Outliers,
    /// No kernel: decoded on the CPU, then uploaded as values in the output dtype.
    CpuThenUpload,
}

/// One encoding: a codec id and what reads it.
#[derive(Debug, Clone, Copy)]
pub struct EncodingRow {
    /// The header's first byte.
    pub id: CodecId,
    /// Name in reports and errors (`docs/FORMAT.md` §5 uses the same).
    pub name: &'static str,
    /// CPU decoder: the header (parsed, checked against the output length), the bytes,
    /// and the table's dispatcher for encodings nested inside (wrappers, sums).
    pub decode: fn(&Header, &[u8], &mut [f32], Decoder) -> Result<()>,
    /// The GPU path.
    pub gpu: GpuDecode,
    /// Delta encodings (`docs/FORMAT.md` §6): the fine-tune's values from the base
    /// tensor and the bytes; their `decode` refuses (a delta needs its base).
    pub apply: Option<ApplyDelta>,
    /// Whether and how new values are put on this encoding's grid (a fine-tune quantized
    /// on its base's scales, for `delta_grid`); nested encodings through the dispatcher.
    pub regrid: Option<Regrid>,
}

/// The `decode` of delta rows: a delta encoding alone is not a tensor.
pub(crate) fn delta_needs_base(_: &Header, _: &[u8], _: &mut [f32], _: Decoder) -> Result<()> {
    Err(Error::corrupt("delta", crate::error::Corruption::NeedsBase))
}

/// A delta decoder: header, bytes, the base tensor, the output, the dispatcher.
pub type ApplyDelta = fn(&Header, &[u8], &BaseView<'_>, &mut [f32], Decoder) -> Result<()>;

/// A re-quantizer on an encoding's own grid: header, base encoding, new values, the
/// dispatcher for nested encodings.
pub type Regrid = fn(&Header, &[u8], &[f32], f32, Requantizer) -> Result<Vec<u8>>;

/// A codec family: what [`CodecSpec`] builds for its [`CodecKind`].
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The kind (serialised as `name`).
    pub kind: CodecKind,
    /// Family name (`int4`, `calibrated_vq`, ...), as the CLI and reports spell it.
    pub name: &'static str,
    /// The spec of `--codec NAME` with an optional `--group-size`.
    pub preset: fn(Option<usize>) -> CodecSpec,
    /// Checks the family's own parameters (the common ones are checked by
    /// [`CodecSpec::validate`]) and builds the encoder (without calibrated options); the
    /// dispatcher decodes stages that later stages are fitted to.
    pub build: fn(&CodecSpec, Decoder) -> Result<Box<dyn Codec>>,
    /// The family part of a label (`int4 g128`, `vq d2 8b g64`).
    pub label: fn(&CodecSpec) -> String,
    /// Bits per code of a grouped scalar family (AWQ and GPTQ on the int codes apply).
    pub scalar_bits: Option<u32>,
    /// Whether the family takes `--vq-dim`/`--vq-bits` (and fails on widths that are no
    /// multiple of the vector length).
    pub vq: bool,
    /// Whether the family uses a residual group (`residual_group` > 0 is checked).
    pub residual_group: ResidualGroup,
    /// Statistics weight the fit (the Hessian diagonal as importance).
    pub weighted: bool,
    /// GPTQ-style encode with importance and the inverse-Hessian factor, for non-scalar
    /// families that support it (scalar families use the int path).
    pub gptq: Option<GptqEncode>,
}

/// A family's GPTQ encoder: spec, weights, rows, cols, importance, factor, dispatcher.
pub type GptqEncode =
    fn(&CodecSpec, &[f32], usize, usize, &[f32], &super::gptq::Hessian, Decoder) -> Result<Vec<u8>>;

/// Whether a family's `residual_group` must be a valid group size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResidualGroup {
    /// Unused.
    No,
    /// Always.
    Required,
    /// When non-zero (0 = no such stage).
    Optional,
}

/// The codec families; each variant has one row in [`super::table::FAMILIES`].
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
    /// Importance-weighted vector quantization ([`super::vq`]).
    CalibratedVq,
    /// Low rank + VQ (+ INT2) ([`super::lowrank`]).
    TenpakX,
}

/// A name `--codec` accepts: every family by its name, and presets.
#[derive(Debug, Clone, Copy)]
pub struct Name {
    /// The name.
    pub name: &'static str,
    /// The spec, given `--group-size`.
    pub spec: fn(Option<usize>) -> CodecSpec,
}
