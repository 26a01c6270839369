//! `pack`: the quantize pipeline with a `.tnpk` as its sink. Quantized tensors are stored
//! as their encodings, kept tensors as raw bytes of their source dtype, side files
//! (config, tokenizer) as files; the result is signed when keys are given.

use std::path::Path;

use ed25519_dalek::SigningKey;
use serde::Serialize;

use super::format::Encoding;
use super::writer::{ArtifactWriter, Written};
use crate::quantize::{self, Options, Processed, Report, Sink, TensorReport};
use crate::source::{TensorMeta, TensorSource};
use crate::Result;

/// What `pack` reports: the quantize report plus the artifact's facts.
#[derive(Debug, Clone, Serialize)]
pub struct PackReport {
    /// Per-tensor and total figures (bits counted from the encodings).
    #[serde(flatten)]
    pub report: Report,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Artifact file size in bytes (headers, manifest, alignment padding included).
    pub file_bytes: u64,
    /// Bits per weight of the whole file.
    pub bits_per_weight_artifact: f64,
    /// Bytes saved by storing identical chunks once.
    pub deduplicated_bytes: u64,
    /// Key ids that signed.
    pub signers: Vec<String>,
}

struct ArtifactSink(ArtifactWriter);

impl Sink for ArtifactSink {
    fn tensor(&mut self, meta: &TensorMeta, out: Processed<'_>) -> Result<()> {
        match out {
            Processed::Kept { values } => {
                let raw = meta.dtype.encode(values);
                self.0
                    .add_tensor(&meta.name, &meta.shape, meta.dtype, Encoding::Raw, &raw)
            }
            Processed::Quantized { spec, encoded, .. } => self.0.add_tensor(
                &meta.name,
                &meta.shape,
                meta.dtype,
                Encoding::from_spec(spec),
                encoded,
            ),
        }
    }
}

/// Packs `src` losslessly: every tensor raw in its dtype (a base that deltas are made
/// against exactly), side files included; written atomically, signed by `keys`.
pub fn pack_raw(
    src: &dyn TensorSource,
    out: &Path,
    keys: &[&SigningKey],
    metadata: &[(&str, &str)],
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Written> {
    let mut w = ArtifactWriter::create(out)?;
    for (k, v) in metadata {
        w.set_metadata(k, v);
    }
    w.set_metadata("selection", "lossless (every tensor raw)");
    for m in src.tensors() {
        let values = src.read_f32(&m.name)?;
        w.add_tensor(
            &m.name,
            &m.shape,
            m.dtype,
            Encoding::Raw,
            &m.dtype.encode(&values),
        )?;
        progress(&m.name);
    }
    for (name, bytes) in crate::source::side_files(src)? {
        w.add_file(&name, &bytes)?;
    }
    w.finish(keys)
}

/// Packs `src` into `out` (written atomically), signed by `keys`.
pub fn pack(
    src: &dyn TensorSource,
    out: &Path,
    opts: &Options,
    keys: &[&SigningKey],
    metadata: &[(&str, &str)],
    progress: &(dyn Fn(&TensorReport) + Sync),
) -> Result<PackReport> {
    let mut sink = ArtifactSink(ArtifactWriter::create(out)?);
    for (k, v) in metadata {
        sink.0.set_metadata(k, v);
    }
    let rows = quantize::run(src, opts, &mut sink, progress)?;
    let mut writer = sink.0;
    for (name, bytes) in crate::source::side_files(src)? {
        writer.add_file(&name, &bytes)?;
    }
    let Written {
        digest,
        file_bytes,
        deduplicated_bytes,
        signers,
        ..
    } = writer.finish(keys)?;
    let metas = src.tensors();
    let report = quantize::summarize(rows, metas, vec![out.display().to_string()]);
    Ok(PackReport {
        bits_per_weight_artifact: file_bytes as f64 * 8.0 / report.total_weights.max(1) as f64,
        report,
        digest,
        file_bytes,
        deduplicated_bytes,
        signers,
    })
}
