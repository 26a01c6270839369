//! A `.tnpk` seen as a model source, so everything that takes a model (quantize, pack,
//! eval, calibrate) takes an artifact too: tensors are fetched, verified and decoded as
//! they are read, in the source checkpoint's dtype.

use std::path::Path;

use super::Artifact;
use crate::source::{TensorMeta, TensorSource};
use crate::{Error, Result};

/// An artifact as a [`TensorSource`].
pub struct ArtifactSource {
    art: Artifact,
    metas: Vec<TensorMeta>,
    config: serde_json::Value,
}

impl ArtifactSource {
    /// Opens a path or URL.
    pub fn open(location: &str) -> Result<Self> {
        Self::from_artifact(Artifact::open_location(location)?, location)
    }

    /// An artifact already opened (from `location`, named in errors).
    pub fn from_artifact(art: Artifact, location: &str) -> Result<Self> {
        let config = match art
            .manifest()
            .files
            .iter()
            .find(|f| f.name == "config.json")
        {
            Some(f) => serde_json::from_slice(&art.read_file(f)?).map_err(|e| Error::Json {
                path: format!("{location}#config.json").into(),
                message: e.to_string(),
            })?,
            None => serde_json::Value::Object(Default::default()),
        };
        let metas = art.manifest().tensors.iter().map(|t| t.meta()).collect();
        Ok(Self { art, metas, config })
    }

    /// The artifact.
    pub fn artifact(&self) -> &Artifact {
        &self.art
    }
}

impl TensorSource for ArtifactSource {
    fn tensors(&self) -> &[TensorMeta] {
        &self.metas
    }
    /// The decoded values rounded to the tensor's source dtype: exactly what `unpack` (and
    /// `quantize` for the same settings) write, so a model evaluated from the artifact and
    /// from its unpacked directory is the same model.
    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let mut v = self.art.load_tensor(name)?;
        let dtype = self.meta(name)?.dtype;
        if dtype != crate::dtype::DType::F32 {
            let bytes = dtype.encode(&v);
            dtype.decode_into(&bytes, &mut v);
        }
        Ok(v)
    }
    fn config(&self) -> &serde_json::Value {
        &self.config
    }
    fn write_side_files(&self, dir: &Path) -> Result<()> {
        for f in &self.art.manifest().files {
            crate::source::write_atomic(&dir.join(&f.name), &self.art.read_file(f)?)?;
        }
        Ok(())
    }
}
