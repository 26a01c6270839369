//! Exports of `.tnpk` artifacts into the formats inference engines read: GGUF (llama.cpp,
//! transformers' `gguf_file=`) and compressed-tensors (vLLM, transformers), with the
//! tokenizer and architecture metadata rebuilt from the artifact's side files.
//!
//! Every export checks what it wrote: the target format's own dequantization of each
//! tensor (emulated here exactly as its reference implementation computes it) against
//! our decode, reported per tensor ([`TensorReport`]): exact where our encoding maps onto
//! the target layout, otherwise the error the re-encoding adds.

pub mod compressed_tensors;
pub mod gguf;
pub mod tokenizer;

use serde_json::Value as Json;

use crate::artifact::Artifact;
use crate::delta::DeltaSource;
use crate::source::TensorSource;
use crate::{Error, Result};

/// What is exported: a full artifact, or a delta with its base (the fine-tune it
/// reconstructs).
#[derive(Clone, Copy)]
pub enum Model<'a> {
    /// A full model artifact.
    Full(&'a Artifact),
    /// A delta artifact opened with its base. Its tensors are the fine-tune's values in
    /// their dtype (exact); fallbacks do not apply.
    Delta(&'a DeltaSource),
}

impl<'a> From<&'a crate::delta::Opened> for Model<'a> {
    fn from(o: &'a crate::delta::Opened) -> Self {
        match o {
            crate::delta::Opened::Full(a) => Model::Full(a),
            crate::delta::Opened::Delta(d) => Model::Delta(d),
        }
    }
}

impl Model<'_> {
    /// The artifact whose manifest lists the tensors (the delta's, for a delta).
    pub fn artifact(&self) -> &Artifact {
        match self {
            Model::Full(a) => a,
            Model::Delta(d) => d.delta(),
        }
    }

    /// A delta artifact passed as a full model is refused: it exports with its base.
    pub(crate) fn check_not_bare_delta(&self, format: &'static str) -> Result<()> {
        match (self, &self.artifact().manifest().base) {
            (Model::Full(_), Some(base)) => Err(Error::Export {
                format,
                reason: format!(
                    "this artifact is a delta against {}; open it with its base (`--base`)",
                    base.digest
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The artifacts whose side files count, first match wins: the delta's, then the
    /// base's.
    fn side_artifacts(&self) -> Vec<&Artifact> {
        match self {
            Model::Full(a) => vec![a],
            Model::Delta(d) => vec![d.delta(), d.base()],
        }
    }

    /// A side file that must be there, as JSON (`why`: for the error).
    pub(crate) fn required_json(&self, name: &str, why: &str) -> Result<Json> {
        self.side_json(name)?.ok_or_else(|| Error::Missing {
            path: self.artifact().digest().into(),
            what: format!("{name} ({why})"),
        })
    }

    /// A side file as JSON: the delta's, else the base's.
    pub(crate) fn side_json(&self, name: &str) -> Result<Option<Json>> {
        match self.side_file(name)? {
            Some((digest, bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::malformed(format!("{digest}#{name}"), "JSON", e.to_string())),
            None => Ok(None),
        }
    }

    /// A side file's bytes, verified (and the digest of the artifact that holds it): the
    /// delta's own, else its base's.
    pub fn side_file(&self, name: &str) -> Result<Option<(String, Vec<u8>)>> {
        for art in self.side_artifacts() {
            if let Some(f) = art.manifest().files.iter().find(|f| f.name == name) {
                return Ok(Some((art.digest().to_string(), art.read_file(f)?)));
            }
        }
        Ok(None)
    }

    /// Every side file's name (the delta's and the base's, once each).
    pub fn side_file_names(&self) -> Vec<String> {
        let mut names: Vec<String> = vec![];
        for art in self.side_artifacts() {
            for f in &art.manifest().files {
                if !names.contains(&f.name) {
                    names.push(f.name.clone());
                }
            }
        }
        names
    }

    /// The tensor's values as we decode them, one tensor at a time, in manifest order
    /// (verified chunk by chunk); `each` also gets the encoding's bytes (empty for a
    /// delta, whose values are reconstructed from two artifacts).
    pub(crate) fn for_each_decoded(
        &self,
        tensors: &[&crate::artifact::format::TensorEntry],
        mut each: impl FnMut(&crate::artifact::format::TensorEntry, Vec<f32>, &[u8]) -> Result<()>,
    ) -> Result<()> {
        match self {
            Model::Full(art) => art.for_each_encoded(tensors, |t, bytes| {
                let values = art.decode(t, &bytes)?;
                each(t, values, &bytes)
            }),
            Model::Delta(d) => {
                for t in tensors {
                    each(t, d.read_f32(&t.name)?, &[])?;
                }
                Ok(())
            }
        }
    }
}

/// What happened to one tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorReport {
    /// The transformers name.
    pub name: String,
    /// The name in the exported file (GGUF's `blk.0.attn_q.weight`; compressed-tensors'
    /// `...q_proj.weight_packed`).
    pub out_name: String,
    /// Our encoding (its label).
    pub from: String,
    /// The type written (`Q4_1`, `int4 g128 sym`, `bf16`...).
    pub ty: String,
    /// Whether every exported value, dequantized as the target's reference
    /// implementation does, equals our decode (checked, not assumed; `-0.0` equals `0.0`).
    pub exact: bool,
    /// Whether they are equal bit for bit as well.
    pub bit_identical: bool,
    /// ‖exported − ours‖ / ‖ours‖ (0 when exact).
    pub rel_rms_error: f64,
    /// Largest |exported − ours|.
    pub max_abs_error: f64,
    /// Bytes of exported data.
    pub bytes: u64,
}

/// The running comparison of exported values with ours, row by row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compare {
    diff2: f64,
    norm2: f64,
    worst: f64,
    exact: bool,
    bits: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            diff2: 0.0,
            norm2: 0.0,
            worst: 0.0,
            exact: true,
            bits: true,
        }
    }
}

impl Compare {
    /// Adds values: ours, and the target's dequantization of what was written.
    pub(crate) fn add(&mut self, ours: &[f32], back: &[f32]) {
        for (&x, &y) in ours.iter().zip(back) {
            self.exact &= x == y;
            self.bits &= x.to_bits() == y.to_bits();
            let d = f64::from(x) - f64::from(y);
            self.diff2 += d * d;
            self.norm2 += f64::from(x) * f64::from(x);
            self.worst = self.worst.max(d.abs());
        }
    }

    /// The report of a tensor so compared.
    pub(crate) fn report(
        &self,
        t: &crate::artifact::format::TensorEntry,
        out_name: String,
        ty: String,
        bytes: u64,
    ) -> TensorReport {
        TensorReport {
            name: t.name.clone(),
            out_name,
            from: t.encoding.label(t.dtype),
            ty,
            exact: self.exact,
            bit_identical: self.bits,
            rel_rms_error: if self.norm2 > 0.0 {
                (self.diff2 / self.norm2).sqrt()
            } else {
                self.diff2.sqrt()
            },
            max_abs_error: self.worst,
            bytes,
        }
    }
}

/// The result of an export.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// One entry per tensor, in file order.
    pub tensors: Vec<TensorReport>,
    /// Bytes of the written weight files (metadata and alignment included).
    pub file_bytes: u64,
    /// Weights (elements) of the model.
    pub weights: u64,
    /// GGUF: `general.file_type` written (llama.cpp's `LLAMA_FTYPE_*`); 0 otherwise.
    pub file_type: u32,
}

impl Report {
    /// Tensors whose exported values equal our decode.
    pub fn exact(&self) -> usize {
        self.tensors.iter().filter(|t| t.exact).count()
    }

    /// Bits per weight of the written weights (metadata and alignment included).
    pub fn bits_per_weight(&self) -> f64 {
        self.file_bytes as f64 * 8.0 / self.weights.max(1) as f64
    }
}

/// Writes into `dst` through a temporary sibling (`.NAME.partial`), renamed into place
/// once `write` succeeded; removed on any error, so `dst` is never a partial export.
pub(crate) fn atomically<T>(
    format: &'static str,
    dst: &std::path::Path,
    write: impl FnOnce(&std::path::Path) -> Result<T>,
) -> Result<T> {
    let name = dst.file_name().ok_or_else(|| Error::Export {
        format,
        reason: format!("{} is not a file or directory path", dst.display()),
    })?;
    let tmp = dst.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let remove = |p: &std::path::Path| {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    };
    if dst.is_dir() {
        let empty = std::fs::read_dir(dst)
            .map_err(|e| Error::io("read directory", dst, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::Export {
                format,
                reason: format!(
                    "{} exists and is not empty; remove it or choose another output",
                    dst.display()
                ),
            });
        }
    }
    remove(&tmp);
    let done = write(&tmp).and_then(|v| {
        if dst.is_dir() {
            std::fs::remove_dir(dst).map_err(|e| Error::io("remove", dst, e))?;
        }
        std::fs::rename(&tmp, dst).map_err(|e| Error::io("rename", dst, e))?;
        Ok(v)
    });
    done.inspect_err(|_| remove(&tmp))
}
