//! A delta artifact opened with its base: the fine-tune as a model.
//!
//! Opening checks that the delta names the base given (digest against digest) and that
//! the base is a full model; every tensor read fetches only that tensor's chunks of the
//! delta and of the base (so a streamed load of one layer over HTTP fetches that layer
//! of each), verifies them against their manifests' sha256, and applies the delta.

use std::path::Path;

use super::pack::{base_entry, load_base, require_full_base};
use crate::artifact::format::Encoding;
use crate::artifact::{Artifact, Selection};
use crate::dtype::DType;
use crate::source::{HfDirWriter, TensorMeta, TensorSource, DEFAULT_MAX_SHARD_BYTES};
use crate::{codec, Error, Result};

/// A delta and its base, presented as the fine-tune.
pub struct DeltaSource {
    delta: Artifact,
    base: Artifact,
    metas: Vec<TensorMeta>,
    config: serde_json::Value,
}

/// The digest a delta names, or the typed error for a full artifact.
pub fn base_digest(delta: &Artifact, location: &str) -> Result<String> {
    delta
        .manifest()
        .base
        .as_ref()
        .map(|b| b.digest.clone())
        .ok_or_else(|| Error::NotADelta {
            location: location.to_string(),
        })
}

impl DeltaSource {
    /// Pairs an opened delta with its opened base; fails with [`Error::WrongBase`] when
    /// the delta was made against another artifact.
    pub fn new(delta: Artifact, base: Artifact) -> Result<Self> {
        let expected = match &delta.manifest().base {
            Some(b) => b.digest.clone(),
            None => {
                return Err(Error::NotADelta {
                    location: "the artifact".into(),
                })
            }
        };
        if base.digest() != expected {
            return Err(Error::WrongBase {
                expected,
                found: base.digest().to_string(),
            });
        }
        require_full_base(&base)?;
        // Side files: the delta's, then the base's it does not override.
        let file = |name: &str| -> Result<Option<Vec<u8>>> {
            for a in [&delta, &base] {
                if let Some(f) = a.manifest().files.iter().find(|f| f.name == name) {
                    return Ok(Some(a.read_file(f)?));
                }
            }
            Ok(None)
        };
        let config = match file("config.json")? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| Error::Json {
                path: "config.json".into(),
                message: e.to_string(),
            })?,
            None => serde_json::Value::Object(Default::default()),
        };
        let metas = delta.manifest().tensors.iter().map(|t| t.meta()).collect();
        Ok(Self {
            delta,
            base,
            metas,
            config,
        })
    }

    /// Opens a delta and its base by path or URL.
    pub fn open(delta: &str, base: &str) -> Result<Self> {
        Self::new(
            Artifact::open_location(delta)?,
            Artifact::open_location(base)?,
        )
    }

    /// The delta artifact.
    pub fn delta(&self) -> &Artifact {
        &self.delta
    }

    /// The base artifact.
    pub fn base(&self) -> &Artifact {
        &self.base
    }

    /// The delta and the base.
    pub fn into_parts(self) -> (Artifact, Artifact) {
        (self.delta, self.base)
    }

    /// Checks that `key` signed both the delta and the base.
    pub fn verify_signatures(&self, key: &ed25519_dalek::VerifyingKey) -> Result<()> {
        self.delta.verify_signature(key)?;
        self.base.verify_signature(key)
    }

    /// Key ids of the delta's and the base's signers.
    pub fn signers(&self) -> (Vec<String>, Vec<String>) {
        (self.delta.signers(), self.base.signers())
    }

    /// The fine-tune's values of one tensor (f32, exactly what its dtype holds for the
    /// lossless encodings).
    pub fn tensor(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.delta.entry(name)?;
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let against_base = || -> Result<_> {
            let b = base_entry(&self.base, name, &shape).ok_or_else(|| Error::BaseMismatch {
                tensor: name.to_string(),
                shape: shape.clone(),
            })?;
            load_base(&self.base, b)
        };
        match &t.encoding {
            Encoding::Base => Ok(against_base()?.values),
            Encoding::Delta { .. } => {
                let bytes = self.delta.fetch_tensor(t)?;
                let b = against_base()?;
                let mut out = vec![0f32; b.values.len()];
                codec::apply(&bytes, &b.view(), &mut out).map_err(|e| e.in_tensor(name))?;
                Ok(out)
            }
            _ => {
                let bytes = self.delta.fetch_tensor(t)?;
                self.delta.decode(t, &bytes)
            }
        }
    }

    /// Reads every chunk of the delta and of the base and checks its sha256.
    pub fn verify_chunks(&self, progress: &dyn Fn(u64)) -> Result<()> {
        self.delta.verify_chunks(progress)?;
        self.base.verify_chunks(progress)
    }

    /// Writes the selected tensors of the fine-tune as an HF directory (config and
    /// tokenizer included), in `dtype` or each tensor's dtype.
    pub fn unpack(
        &self,
        out: &Path,
        sel: &Selection,
        dtype: Option<DType>,
        progress: &dyn Fn(&str),
    ) -> Result<Vec<String>> {
        let chosen: Vec<&TensorMeta> = self.metas.iter().filter(|m| sel.matches(&m.name)).collect();
        if chosen.is_empty() {
            return Err(Error::NothingSelected);
        }
        let metas: Vec<TensorMeta> = chosen
            .iter()
            .map(|m| TensorMeta {
                dtype: dtype.unwrap_or(m.dtype),
                ..(*m).clone()
            })
            .collect();
        let mut writer = HfDirWriter::new(out, metas, DEFAULT_MAX_SHARD_BYTES)?;
        for m in &chosen {
            let v = self.tensor(&m.name)?;
            writer.write(&m.name, &v)?;
            progress(&m.name);
        }
        let files = writer.finish()?;
        self.write_side_files(out)?;
        Ok(files)
    }
}

impl TensorSource for DeltaSource {
    fn tensors(&self) -> &[TensorMeta] {
        &self.metas
    }
    /// The fine-tune's values rounded to the tensor's dtype (what `unpack` writes).
    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let mut v = self.tensor(name)?;
        let dtype = self.meta(name)?.dtype;
        if dtype != DType::F32 {
            let bytes = dtype.encode(&v);
            dtype.decode_into(&bytes, &mut v);
        }
        Ok(v)
    }
    fn config(&self) -> &serde_json::Value {
        &self.config
    }
    fn write_side_files(&self, dir: &Path) -> Result<()> {
        let mut written = std::collections::HashSet::new();
        for a in [&self.delta, &self.base] {
            for f in &a.manifest().files {
                if written.insert(f.name.clone()) {
                    crate::source::write_atomic(&dir.join(&f.name), &a.read_file(f)?)?;
                }
            }
        }
        Ok(())
    }
}
