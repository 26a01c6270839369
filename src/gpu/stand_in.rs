//! The GPU API for builds without the `cuda` feature.

use crate::{Error, Result};

/// Stand-in for GPU-resident tensors (never constructed without CUDA).
pub struct GpuTensors(());

/// Always fails: this build has no CUDA.
pub fn load_artifact(
    _art: &crate::artifact::Artifact,
    _sel: &crate::artifact::Selection,
    _dtype: crate::dtype::DType,
) -> Result<GpuTensors> {
    Err(Error::Gpu(
        tenpak_kernels::Error::NotCompiledWithCuda.to_string(),
    ))
}

/// Always fails: this build has no CUDA.
pub fn load_artifact_pinned(
    art: &crate::artifact::Artifact,
    sel: &crate::artifact::Selection,
    dtype: crate::dtype::DType,
) -> Result<GpuTensors> {
    load_artifact(art, sel, dtype)
}
