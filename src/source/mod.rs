//! Where weights come from, and where dense weights go back to.
//!
//! Every source implements [`TensorSource`]: a table of tensors (HF names, row-major
//! shapes, source dtype) and a way to read *one* tensor as f32. Readers are built on
//! memory maps, so holding a source costs address space, not RAM; the pipeline keeps
//! at most a few tensors materialised at a time.

pub mod gguf;
pub mod hf;
pub mod mmap;
pub mod writer;

use std::path::Path;

pub use hf::HfModelDir;
pub use writer::{HfDirWriter, RawDecl, DEFAULT_MAX_SHARD_BYTES};

use crate::dtype::DType;
use crate::{Error, Result};

/// Description of one tensor in a source, under its Hugging Face name.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    /// HF tensor name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Row-major shape (PyTorch order).
    pub shape: Vec<usize>,
    /// The dtype the weights are kept in when written back densely. For safetensors
    /// sources this is the stored dtype; for GGUF imports, the import dtype.
    pub dtype: DType,
    /// What the source stores, for reports (`bf16`, `Q4_1`, ...).
    pub stored_as: String,
}

impl TensorMeta {
    /// Element count.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A model whose tensors can be listed and read one at a time.
pub trait TensorSource: Send + Sync {
    /// All tensors, in a stable order.
    fn tensors(&self) -> &[TensorMeta];
    /// Reads one tensor as f32 (row-major).
    fn read_f32(&self, name: &str) -> Result<Vec<f32>>;
    /// The HF `config.json` of the model, as JSON.
    fn config(&self) -> &serde_json::Value;
    /// Writes the files besides weights that make an HF directory loadable
    /// (config, tokenizer, generation config) into `dir`.
    fn write_side_files(&self, dir: &Path) -> Result<()>;

    /// Looks a tensor up by name.
    fn meta(&self, name: &str) -> Result<&TensorMeta> {
        self.tensors()
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::TensorNotFound {
                name: name.to_string(),
            })
    }
}

/// The side files of a model (config, tokenizer, ...) as (name, bytes), sorted by name.
/// Each source writes them its own way; a scratch directory gives one way to collect them.
pub fn side_files(src: &dyn TensorSource) -> Result<Vec<(String, Vec<u8>)>> {
    let scratch = tempfile::tempdir()
        .map_err(|e| Error::io("create temporary directory", std::env::temp_dir(), e))?;
    src.write_side_files(scratch.path())?;
    let mut out = vec![];
    for e in std::fs::read_dir(scratch.path())
        .map_err(|e| Error::io("list", scratch.path(), e))?
        .flatten()
    {
        let p = e.path();
        let bytes = std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
        out.push((e.file_name().to_string_lossy().into_owned(), bytes));
    }
    out.sort();
    Ok(out)
}

/// Atomically writes `bytes` to `path` (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

/// Writes a JSON value, pretty-printed, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}
