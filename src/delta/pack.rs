//! `pack --base`: a fine-tune stored as a delta against its base artifact.
//!
//! Tensors are read one at a time from the fine-tune and from the base artifact (its
//! chunks verified as they are fetched). In `auto` mode every candidate of every tensor is
//! encoded and measured first (sizes and errors kept, bytes dropped), the budget is
//! allocated, and the chosen encodings are made again in a second pass that writes them
//! (a tensor with a single candidate keeps its first-pass encoding); the other modes
//! write in one pass. Memory holds a tensor's fine-tune and base values and its
//! candidates' encodings, plus the kept single-candidate encodings (at most the delta's
//! own size), never the model.

use std::path::Path;

use ed25519_dalek::SigningKey;
use serde::Serialize;

use super::choose::{candidates, measure, Choice, DeltaMode, DeltaOptions, Measured};
use crate::artifact::format::{Encoding, TensorEntry};
use crate::artifact::{Artifact, ArtifactWriter};
use crate::codec::BaseView;
use crate::plan::MIN_QUANT_NUMEL;
use crate::source::{TensorMeta, TensorSource};
use crate::{Error, Result};

/// Chunk alignment of delta artifacts: small, because a delta has many small tensors
/// (references cost nothing, a patch a few hundred bytes) and is applied on the CPU.
pub const DELTA_ALIGNMENT: u64 = 256;

/// Manifest bytes per tensor entry, at most (a name, a shape, an encoding, a chunk):
/// what the budget sets aside for the file's own overhead.
const MANIFEST_BYTES_PER_TENSOR: u64 = 400;

/// One tensor of the report.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaTensorReport {
    /// HF name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// What was stored.
    pub choice: Choice,
    /// Its label.
    pub label: String,
    /// Weights.
    pub numel: usize,
    /// Encoded bytes.
    pub bytes: u64,
    /// `8 · bytes / numel`.
    pub bits_per_weight: f64,
    /// ‖W_ft − Ŵ‖ / ‖W_ft‖.
    pub rel_error: f64,
    /// ‖Δ − Δ̂‖ / ‖Δ‖.
    pub rel_delta_error: f64,
}

/// What a delta pack reports.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaReport {
    /// Per tensor, in write order.
    pub tensors: Vec<DeltaTensorReport>,
    /// The mode.
    pub mode: DeltaMode,
    /// The base's digest.
    pub base: String,
    /// The delta's digest.
    pub digest: String,
    /// Encoded tensor bytes.
    pub delta_bytes: u64,
    /// The whole delta file (headers, manifest, side files that differ, padding).
    pub file_bytes: u64,
    /// Weights of the fine-tune.
    pub weights: u64,
    /// `8 · file_bytes / weights`: every byte counted.
    pub bits_per_weight: f64,
    /// The fine-tune in its own dtype (bf16/fp16), bytes.
    pub source_bytes: u64,
    /// `file_bytes / source_bytes`.
    pub ratio_vs_source: f64,
    /// Bytes the base artifact spends on the same tensors: what the fine-tune costs packed
    /// on its own with the base's codecs (same shapes, same encodings, same sizes).
    pub full_bytes: u64,
    /// `file_bytes / full_bytes`.
    pub ratio_vs_full: f64,
    /// Tensors by choice.
    pub references: usize,
    /// Side files stored (those that differ from the base's).
    pub files: Vec<String>,
    /// Seconds spent encoding (both passes).
    pub encode_seconds: f64,
    /// Key ids that signed.
    pub signers: Vec<String>,
}

/// A base tensor: the entry, its values and (for codec-stored tensors) its encoding.
pub(crate) struct BaseTensor {
    pub values: Vec<f32>,
    pub encoded: Option<bytes::Bytes>,
}

impl BaseTensor {
    pub fn view(&self) -> BaseView<'_> {
        BaseView {
            values: &self.values,
            encoded: self.encoded.as_deref(),
        }
    }
}

/// The base's tensor of `meta`'s name and shape, when it has one.
pub(crate) fn base_entry<'a>(
    base: &'a Artifact,
    name: &str,
    shape: &[usize],
) -> Option<&'a TensorEntry> {
    base.manifest().tensors.iter().find(|t| {
        t.name == name
            && t.shape.len() == shape.len()
            && t.shape.iter().zip(shape).all(|(&a, &b)| a as usize == b)
    })
}

/// Fetches (verified) and decodes a base tensor.
pub(crate) fn load_base(base: &Artifact, t: &TensorEntry) -> Result<BaseTensor> {
    let bytes = base.fetch_tensor(t)?;
    let values = base.decode(t, &bytes)?;
    let encoded = (t.encoding != Encoding::Raw).then_some(bytes);
    Ok(BaseTensor { values, encoded })
}

/// Whether `ft` equals `base` bit for bit in the fine-tune's dtype.
fn identical(meta: &TensorMeta, ft: &[f32], base: &[f32]) -> bool {
    let same = |a: f32, b: f32| match meta.dtype {
        crate::dtype::DType::F32 => a.to_bits() == b.to_bits(),
        crate::dtype::DType::F16 => {
            half::f16::from_f32(a).to_bits() == half::f16::from_f32(b).to_bits()
        }
        crate::dtype::DType::BF16 => {
            half::bf16::from_f32(a).to_bits() == half::bf16::from_f32(b).to_bits()
        }
    };
    ft.len() == base.len() && ft.iter().zip(base).all(|(&a, &b)| same(a, b))
}

/// Input-channel weights of a tensor's error, from calibration statistics.
fn channel_weights(opts: &DeltaOptions, meta: &TensorMeta) -> Result<Option<Vec<f32>>> {
    let Some(c) = &opts.calib else {
        return Ok(None);
    };
    Ok(c.tensor(&meta.name, false, false)?
        .map(|s| s.sq_mean)
        .filter(|h| meta.shape.len() == 2 && h.len() == meta.shape[1]))
}

/// What one tensor offers: its candidates, measured (or `Full`/`Reference`).
struct Offer {
    choices: Vec<Choice>,
    measured: Vec<Measured>,
    /// Several candidates applied but only `Exact` was measured ([`Narrow::ExactFirst`]).
    narrowed: bool,
}

/// Which candidates [`offer`] measures.
#[derive(Clone, Copy)]
enum Narrow {
    /// Every candidate of the mode.
    All,
    /// Only this one (the allocation's pick).
    Only(Choice),
    /// Only `Exact` where several candidates apply: if every tensor exact fits the budget,
    /// no lossy candidate can lose less (exact loses nothing), so none need be measured.
    ExactFirst,
}

fn offer(
    ft_src: &dyn TensorSource,
    base: &Artifact,
    meta: &TensorMeta,
    opts: &DeltaOptions,
    narrow: Narrow,
) -> Result<Offer> {
    let ft = ft_src.read_f32(&meta.name)?;
    let Some(entry) = base_entry(base, &meta.name, &meta.shape) else {
        let bytes = meta.dtype.encode(&ft);
        return Ok(Offer {
            choices: vec![Choice::Full],
            measured: vec![Measured {
                bytes,
                error: 0.0,
                rel_error: 0.0,
                rel_delta_error: 0.0,
            }],
            narrowed: false,
        });
    };
    let b = load_base(base, entry)?;
    if identical(meta, &ft, &b.values) {
        return Ok(Offer {
            choices: vec![Choice::Reference],
            measured: vec![Measured {
                bytes: vec![],
                error: 0.0,
                rel_error: 0.0,
                rel_delta_error: 0.0,
            }],
            narrowed: false,
        });
    }
    let matrix = meta.shape.len() == 2 && meta.numel() >= MIN_QUANT_NUMEL;
    let (rows, cols) = if meta.shape.len() == 2 {
        (meta.shape[0], meta.shape[1])
    } else {
        (1, meta.numel())
    };
    let h = channel_weights(opts, meta)?;
    let mut narrowed = false;
    let list = match narrow {
        Narrow::Only(c) => vec![c],
        Narrow::All => candidates(opts.mode, matrix, b.encoded.is_some()),
        Narrow::ExactFirst => {
            let all = candidates(opts.mode, matrix, b.encoded.is_some());
            if all.len() > 1 && all.contains(&Choice::Exact) {
                narrowed = true;
                vec![Choice::Exact]
            } else {
                all
            }
        }
    };
    let view = b.view();
    let mut choices = vec![];
    let mut measured = vec![];
    for c in list {
        let m = measure(
            c,
            &ft,
            &view,
            rows,
            cols,
            meta.dtype,
            opts.entropy,
            opts.grid_refit,
            h.as_deref(),
        )
        .map_err(|e| e.in_tensor(&meta.name))?;
        if let Some(m) = m {
            choices.push(c);
            measured.push(m);
        }
    }
    if choices.is_empty() {
        // A grid over a raw base in `--delta grid`: the exact delta instead.
        let m = measure(
            Choice::Exact,
            &ft,
            &view,
            rows,
            cols,
            meta.dtype,
            opts.entropy,
            opts.grid_refit,
            None,
        )?
        .ok_or_else(|| Error::Compute {
            message: format!("{}: no delta encoding applies", meta.name),
        })?;
        choices.push(Choice::Exact);
        measured.push(m);
    }
    Ok(Offer {
        choices,
        measured,
        narrowed,
    })
}

fn encoding_of(choice: Choice, label: &str) -> Encoding {
    match choice {
        Choice::Reference | Choice::Drop => Encoding::Base,
        Choice::Full => Encoding::Raw,
        _ => Encoding::Delta {
            description: label.to_string(),
        },
    }
}

/// Refuses a base that is itself a delta: deltas are made and read against full
/// artifacts only (no chains).
pub(crate) fn require_full_base(base: &Artifact) -> Result<()> {
    match &base.manifest().base {
        None => Ok(()),
        Some(b) => Err(Error::InvalidOption {
            option: "--base",
            reason: format!(
                "the base is itself a delta (against {}); give a full artifact",
                b.digest
            ),
        }),
    }
}

/// Refuses a base that is not this model's: fewer than half of the fine-tune's weights
/// have a base tensor of the same name and shape. (A few unmatched tensors are normal:
/// embeddings resized for added tokens are stored in full.)
pub fn check_compatible(metas: &[TensorMeta], base: &Artifact) -> Result<()> {
    let weights: u64 = metas.iter().map(|m| m.numel() as u64).sum();
    let matched: u64 = metas
        .iter()
        .filter(|m| base_entry(base, &m.name, &m.shape).is_some())
        .map(|m| m.numel() as u64)
        .sum();
    if matched * 2 >= weights {
        return Ok(());
    }
    let example = metas
        .iter()
        .find(|m| base_entry(base, &m.name, &m.shape).is_none())
        .map(|m| {
            let other = base
                .manifest()
                .tensors
                .iter()
                .find(|t| t.name == m.name)
                .map(|t| format!("{:?}", t.shape))
                .unwrap_or_else(|| "no such tensor".into());
            format!("{} {:?}, base: {other}", m.name, m.shape)
        })
        .unwrap_or_default();
    Err(Error::IncompatibleBase {
        matched,
        weights,
        example,
    })
}

/// Packs the fine-tune `ft` as a delta against the base artifact `base` into `out`
/// (written atomically), signed by `keys`. `progress` is called once per tensor and pass.
pub fn pack_delta(
    ft: &dyn TensorSource,
    base: &Artifact,
    out: &Path,
    opts: &DeltaOptions,
    keys: &[&SigningKey],
    metadata: &[(&str, &str)],
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<DeltaReport> {
    require_full_base(base)?;
    if !(opts.bits_per_weight.is_finite() && opts.bits_per_weight >= 0.0) {
        return Err(Error::InvalidOption {
            option: "--delta-bits-per-weight",
            reason: format!("{} is not a non-negative number", opts.bits_per_weight),
        });
    }
    let t0 = std::time::Instant::now();
    let metas = ft.tensors();
    check_compatible(metas, base)?;
    // Side files: only those that differ from the base's are stored.
    let base_files: std::collections::HashMap<String, Vec<u8>> = base
        .manifest()
        .files
        .iter()
        .map(|f| Ok((f.name.clone(), base.read_file(f)?)))
        .collect::<Result<_>>()?;
    let files: Vec<(String, Vec<u8>)> = crate::source::side_files(ft)?
        .into_iter()
        .filter(|(n, b)| base_files.get(n) != Some(b))
        .collect();
    let weights: u64 = metas.iter().map(|m| m.numel() as u64).sum();
    // Pass 1 (auto): every candidate measured, then the budget allocated.
    // A tensor with one candidate (a reference, a vector, a grid) has nothing to choose:
    // its pass-1 encoding is kept and written as is (at most the delta's own size).
    // Exact first: where every tensor stored exactly fits the budget, that is the choice
    // (no candidate loses less than nothing) and the lossy candidates are never measured;
    // otherwise they are, and the budget is allocated over all of them.
    let mut kept: Vec<Option<(Choice, Measured)>> = Vec::new();
    let plan: Option<Vec<Choice>> = if opts.mode.allocates() {
        let overhead: u64 = files
            .iter()
            .map(|(_, b)| b.len() as u64 + DELTA_ALIGNMENT)
            .sum::<u64>()
            + metas.len() as u64 * (DELTA_ALIGNMENT + MANIFEST_BYTES_PER_TENSOR)
            + 4096;
        let limit = opts.bits_per_weight * weights as f64 - 8.0 * overhead as f64;
        let mut first = Vec::with_capacity(metas.len());
        for m in metas {
            progress("measure", &m.name);
            first.push(offer(ft, base, m, opts, Narrow::ExactFirst)?);
        }
        let exact_bits: f64 = first
            .iter()
            .map(|o| 8.0 * o.measured.first().map_or(0, |x| x.bytes.len()) as f64)
            .sum();
        let mut costs = Vec::with_capacity(metas.len());
        let mut offers = Vec::with_capacity(metas.len());
        for (m, mut o) in metas.iter().zip(first) {
            if o.narrowed && exact_bits > limit {
                progress("measure", &m.name);
                o = offer(ft, base, m, opts, Narrow::All)?;
            }
            costs.push(
                o.measured
                    .iter()
                    .map(|x| (8.0 * x.bytes.len() as f64, x.error))
                    .collect::<Vec<_>>(),
            );
            kept.push(match (o.choices.as_slice(), o.measured.len()) {
                ([c], 1) => o.measured.pop().map(|x| (*c, x)),
                _ => None,
            });
            offers.push(o.choices);
        }
        let Some(pick) = crate::plan::allocate(&costs, limit) else {
            let cheapest: f64 = costs
                .iter()
                .map(|c| c.iter().map(|x| x.0).fold(f64::INFINITY, f64::min))
                .sum::<f64>()
                + 8.0 * overhead as f64;
            return Err(Error::BudgetTooSmall {
                requested: opts.bits_per_weight,
                cheapest: cheapest / weights.max(1) as f64,
            });
        };
        Some(offers.iter().zip(pick).map(|(o, k)| o[k]).collect())
    } else {
        None
    };
    let mode = opts.mode;
    let plan = plan.as_deref();
    write_delta(
        base,
        out,
        mode,
        keys,
        metadata,
        metas,
        files,
        t0,
        &mut |i, m| {
            progress("encode", &m.name);
            if let Some((choice, got)) = kept.get_mut(i).and_then(Option::take) {
                return Ok((choice, choice.label(), got));
            }
            let narrow = plan.map_or(Narrow::All, |p| Narrow::Only(p[i]));
            let o = offer(ft, base, m, opts, narrow)?;
            let (choice, got) = o
                .choices
                .into_iter()
                .zip(o.measured)
                .next()
                .ok_or_else(|| Error::Compute {
                    message: format!("{}: nothing to store", m.name),
                })?;
            Ok((choice, choice.label(), got))
        },
    )
}

/// One tensor of a delta: what it became, its label, and its bytes and error.
pub(crate) type Produced = (Choice, String, Measured);

/// Writes a delta artifact against `base`: every tensor of `metas` as `produce` makes
/// it, then the side `files`, signed; returns the report. Shared by fine-tune deltas and
/// adapters.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_delta(
    base: &Artifact,
    out: &Path,
    mode: DeltaMode,
    keys: &[&SigningKey],
    metadata: &[(&str, &str)],
    metas: &[TensorMeta],
    files: Vec<(String, Vec<u8>)>,
    t0: std::time::Instant,
    produce: &mut dyn FnMut(usize, &TensorMeta) -> Result<Produced>,
) -> Result<DeltaReport> {
    let mut w = ArtifactWriter::with_layout(
        out,
        DELTA_ALIGNMENT,
        crate::artifact::format::DEFAULT_CHUNK_SIZE,
    )?;
    w.set_base(base.digest());
    for (k, v) in metadata {
        w.set_metadata(k, v);
    }
    w.set_metadata("delta_mode", &format!("{mode:?}").to_lowercase());
    let mut rows = Vec::with_capacity(metas.len());
    for (i, m) in metas.iter().enumerate() {
        let (choice, label, got) = produce(i, m)?;
        w.add_tensor(
            &m.name,
            &m.shape,
            m.dtype,
            encoding_of(choice, &label),
            &got.bytes,
        )?;
        rows.push(DeltaTensorReport {
            name: m.name.clone(),
            shape: m.shape.clone(),
            choice,
            label,
            numel: m.numel(),
            bytes: got.bytes.len() as u64,
            bits_per_weight: 8.0 * got.bytes.len() as f64 / m.numel().max(1) as f64,
            rel_error: got.rel_error,
            rel_delta_error: got.rel_delta_error,
        });
    }
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    for (n, b) in &files {
        w.add_file(n, b)?;
    }
    let written = w.finish(keys)?;
    let weights: u64 = metas.iter().map(|m| m.numel() as u64).sum();
    let source_bytes: u64 = metas
        .iter()
        .map(|m| (m.numel() * m.dtype.size()) as u64)
        .sum();
    let full_bytes: u64 = metas
        .iter()
        .map(|m| match base_entry(base, &m.name, &m.shape) {
            Some(t) => t.encoded_length,
            None => (m.numel() * m.dtype.size()) as u64,
        })
        .sum();
    let delta_bytes = rows.iter().map(|r| r.bytes).sum();
    Ok(DeltaReport {
        references: rows
            .iter()
            .filter(|r| matches!(r.choice, Choice::Reference))
            .count(),
        tensors: rows,
        mode,
        base: base.digest().to_string(),
        digest: written.digest,
        delta_bytes,
        file_bytes: written.file_bytes,
        weights,
        bits_per_weight: 8.0 * written.file_bytes as f64 / weights.max(1) as f64,
        source_bytes,
        ratio_vs_source: written.file_bytes as f64 / source_bytes.max(1) as f64,
        full_bytes,
        ratio_vs_full: written.file_bytes as f64 / full_bytes.max(1) as f64,
        files: names,
        encode_seconds: t0.elapsed().as_secs_f64(),
        signers: written.signers,
    })
}
