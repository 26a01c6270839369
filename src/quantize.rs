//! The quantize pipeline: source → plan → encode → decode → dense HF directory, with a
//! report of what every tensor cost and how far it moved.
//!
//! One tensor is in memory at a time (its f32 weights, its encoding and its decode);
//! the codecs parallelise inside a tensor, so memory stays bounded by the largest tensor
//! while both cores work.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::calib::Calib;
use crate::codec;
use crate::plan::{self, Action, Role, Selection};
use crate::source::{HfDirWriter, TensorMeta, TensorSource, DEFAULT_MAX_SHARD_BYTES};
use crate::Result;

/// Options of [`quantize`].
#[derive(Debug, Clone)]
pub struct Options {
    /// How codecs are chosen.
    pub selection: Selection,
    /// Quantize token embeddings and the LM head too.
    pub quantize_embeddings: bool,
    /// Outliers, refinement, AWQ and GPTQ, applied to every codec.
    pub tuning: plan::Tuning,
    /// Shard size for the written directory.
    pub max_shard_bytes: u64,
    /// Calibration statistics (`tenpak calibrate`): needed by AWQ and GPTQ, weighting
    /// `calibrated_vq` and `tenpak_x`, and the bit budget's sensitivity.
    pub calib: Option<Arc<Calib>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            selection: Selection::Target(plan::Target::Balanced),
            quantize_embeddings: false,
            tuning: plan::Tuning::default(),
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            calib: None,
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    /// HF name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Role.
    pub role: Role,
    /// What the source stored (`bf16`, `Q4_1`, ...).
    pub source: String,
    /// Codec label, or `keep (<dtype>)`.
    pub codec: String,
    /// Kept as the source stored it (not quantized).
    pub kept: bool,
    /// Weights.
    pub numel: usize,
    /// Bits this tensor costs in compressed form (encoded bytes × 8, or dtype bits).
    pub bits: u64,
    /// `bits / numel`.
    pub bits_per_weight: f64,
    /// ‖W − Ŵ‖ / ‖W‖ (0 for kept tensors).
    pub rel_error: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per-tensor rows, in write order.
    pub tensors: Vec<TensorReport>,
    /// Bits per weight over the blocks' linear layers, all overhead counted.
    pub bits_per_weight_quantized: f64,
    /// Bits per weight over every tensor of the model.
    pub bits_per_weight_file: f64,
    /// Bits per weight of the source checkpoint's dtype (16 for bf16/f16).
    pub source_bits_per_weight: f64,
    /// Source bytes / compressed bytes, whole model.
    pub ratio_vs_source: f64,
    /// Mean of `rel_error` over the quantized tensors.
    pub mean_rel_error: f64,
    /// Total weights.
    pub total_weights: usize,
    /// Quantized weights.
    pub quantized_weights: usize,
    /// Compressed size in bytes.
    pub compressed_bytes: u64,
    /// Source size in bytes.
    pub source_bytes: u64,
    /// Weight files written.
    pub files: Vec<String>,
}

/// Relative Frobenius error ‖a − b‖ / ‖a‖ (0 when `a` is all zeros and `b` equals it).
pub fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*x as f64).powi(2);
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// Encodes one tensor with `spec` (with its input statistics from `calib` where the codec
/// uses them), returning its encoding, its decode and the label of what was done.
///
/// A tensor the statistics do not cover (the LM head under `--quantize-embeddings`) is
/// encoded without AWQ/GPTQ, and the label says so.
pub fn encode_decode(
    spec: &codec::CodecSpec,
    meta: &TensorMeta,
    w: &[f32],
    calib: Option<&Calib>,
) -> Result<Coded> {
    let (rows, cols) = (meta.shape[0], meta.numel() / meta.shape[0].max(1));
    let stats = match calib {
        Some(c) if spec.uses_calibration() => {
            c.tensor(&meta.name, spec.awq || spec.gptq, spec.gptq)?
        }
        _ => None,
    };
    let mut note = "";
    let fallback;
    let spec = if spec.needs_calibration() && stats.is_none() {
        fallback = codec::CodecSpec {
            awq: false,
            gptq: false,
            ..spec.clone()
        };
        note = " (no statistics)";
        &fallback
    } else {
        spec
    };
    let enc = spec
        .encode(w, rows, cols, stats.as_ref())
        .map_err(|e| match e {
            crate::Error::ShapeMismatch { expected, got, .. } => crate::Error::ShapeMismatch {
                tensor: meta.name.clone(),
                expected,
                got,
            },
            e => e,
        })?;
    let decoded = codec::decode_vec(&enc.bytes)?;
    Ok(Coded {
        bytes: enc.bytes,
        decoded,
        label: enc.label + note,
        spec: spec.clone(),
    })
}

/// What [`encode_decode`] produced.
pub struct Coded {
    /// The encoding.
    pub bytes: Vec<u8>,
    /// Its decode.
    pub decoded: Vec<f32>,
    /// What was done, for reports.
    pub label: String,
    /// The spec as applied (AWQ/GPTQ dropped where the statistics lack the layer).
    pub spec: codec::CodecSpec,
}

/// What the pipeline produced for one tensor.
pub enum Processed<'a> {
    /// Kept in its source dtype.
    Kept {
        /// The values.
        values: &'a [f32],
    },
    /// Encoded.
    Quantized {
        /// The codec used.
        spec: &'a codec::CodecSpec,
        /// The encoding.
        encoded: &'a [u8],
        /// What it decodes to.
        decoded: &'a [f32],
    },
}

/// Where the pipeline sends each tensor, in source order.
pub trait Sink {
    /// Receives one tensor.
    fn tensor(&mut self, meta: &TensorMeta, out: Processed<'_>) -> Result<()>;
}

/// Plans, encodes and measures every tensor of `src`, handing each to `sink`; returns the
/// per-tensor report rows. One tensor is materialised at a time.
pub fn run(
    src: &dyn TensorSource,
    opts: &Options,
    sink: &mut dyn Sink,
    progress: &(dyn Fn(&TensorReport) + Sync),
) -> Result<Vec<TensorReport>> {
    let plans = plan::plan(
        src,
        &opts.selection,
        opts.quantize_embeddings,
        opts.tuning,
        opts.calib.as_deref(),
    )?;
    let mut rows = Vec::with_capacity(plans.len());
    for (meta, p) in src.tensors().iter().zip(&plans) {
        let w = src.read_f32(&meta.name)?;
        let (codec, bits, err) = match &p.action {
            Action::Keep => {
                sink.tensor(meta, Processed::Kept { values: &w })?;
                let bits = (meta.numel() * meta.dtype.size() * 8) as u64;
                (format!("keep ({})", meta.dtype), bits, 0.0)
            }
            Action::Quantize(spec) => {
                let Coded {
                    bytes: enc,
                    decoded: dec,
                    label,
                    spec,
                } = encode_decode(spec, meta, &w, opts.calib.as_deref())?;
                let err = rel_error(&w, &dec);
                drop(w);
                sink.tensor(
                    meta,
                    Processed::Quantized {
                        spec: &spec,
                        encoded: &enc,
                        decoded: &dec,
                    },
                )?;
                (label, enc.len() as u64 * 8, err)
            }
        };
        let row = TensorReport {
            name: meta.name.clone(),
            shape: meta.shape.clone(),
            role: p.role,
            source: meta.stored_as.clone(),
            codec,
            kept: matches!(p.action, Action::Keep),
            numel: meta.numel(),
            bits,
            bits_per_weight: bits as f64 / meta.numel().max(1) as f64,
            rel_error: err,
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

struct DirSink(HfDirWriter);

impl Sink for DirSink {
    fn tensor(&mut self, meta: &TensorMeta, out: Processed<'_>) -> Result<()> {
        match out {
            Processed::Kept { values } => self.0.write(&meta.name, values),
            Processed::Quantized { decoded, .. } => self.0.write(&meta.name, decoded),
        }
    }
}

/// Quantizes `src` into a dense HF directory at `out` (the decoded weights, in the
/// source dtype), calling `progress` after each tensor.
pub fn quantize(
    src: &dyn TensorSource,
    out: &Path,
    opts: &Options,
    progress: &(dyn Fn(&TensorReport) + Sync),
) -> Result<Report> {
    let metas: Vec<TensorMeta> = src.tensors().to_vec();
    let mut sink = DirSink(HfDirWriter::new(out, metas.clone(), opts.max_shard_bytes)?);
    let rows = run(src, opts, &mut sink, progress)?;
    let files = sink.0.finish()?;
    src.write_side_files(out)?;
    Ok(summarize(rows, &metas, files))
}

/// Totals over the report rows.
pub fn summarize(tensors: Vec<TensorReport>, metas: &[TensorMeta], files: Vec<String>) -> Report {
    let total_weights: usize = tensors.iter().map(|t| t.numel).sum();
    let total_bits: u64 = tensors.iter().map(|t| t.bits).sum();
    let source_bits: u64 = metas
        .iter()
        .map(|m| (m.numel() * m.dtype.size() * 8) as u64)
        .sum();
    let (qb, qn) = tensors
        .iter()
        .filter(|t| t.role.in_budget() && !t.kept)
        .fold((0u64, 0usize), |(b, n), t| (b + t.bits, n + t.numel));
    let quantized: Vec<&TensorReport> = tensors.iter().filter(|t| !t.kept).collect();
    let mean_rel_error = if quantized.is_empty() {
        0.0
    } else {
        quantized.iter().map(|t| t.rel_error).sum::<f64>() / quantized.len() as f64
    };
    Report {
        bits_per_weight_quantized: if qn == 0 { 0.0 } else { qb as f64 / qn as f64 },
        bits_per_weight_file: total_bits as f64 / total_weights.max(1) as f64,
        source_bits_per_weight: source_bits as f64 / total_weights.max(1) as f64,
        ratio_vs_source: source_bits as f64 / total_bits.max(1) as f64,
        mean_rel_error,
        total_weights,
        quantized_weights: quantized.iter().map(|t| t.numel).sum(),
        compressed_bytes: total_bits.div_ceil(8),
        source_bytes: source_bits / 8,
        files,
        tensors,
    }
}
