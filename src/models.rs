//! Opening any model by path or URL: the one place that knows every kind of source
//! (HF directories and GGUF files from [`crate::source`], `.tnpk` artifacts from
//! [`crate::artifact`]), so that neither of those modules needs the other's readers.

use std::path::Path;

use crate::dtype::DType;
use crate::source::{self, TensorSource};
use crate::{Error, Result};

/// Opens a model: an HF directory, a `.gguf` file (imported on the fly), or a `.tnpk`
/// artifact (a path or an http(s) URL; tensors decoded as they are read).
pub fn open(path: &Path, gguf_dtype: DType) -> Result<Box<dyn TensorSource>> {
    let text = path.to_string_lossy();
    let is_url = text.starts_with("http://") || text.starts_with("https://");
    if is_url
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("tnpk"))
    {
        return Ok(Box::new(crate::artifact::ArtifactSource::open(&text)?));
    }
    if path.is_dir() {
        Ok(Box::new(source::HfModelDir::open(path)?))
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        Ok(Box::new(source::gguf::GgufSource::open(path, gguf_dtype)?))
    } else if !path.exists() {
        Err(Error::Missing {
            path: path.to_path_buf(),
            what: "model (no such file or directory)".into(),
        })
    } else {
        Err(Error::malformed(
            path,
            "model",
            "expected an HF model directory (config.json + safetensors), a .gguf or a .tnpk file",
        ))
    }
}
