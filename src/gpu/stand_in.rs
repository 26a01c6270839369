//! The GPU API for builds without the `cuda` feature.

use crate::{Error, Result};

/// Stand-in for GPU-resident tensors (never constructed without CUDA).
pub struct GpuTensors(());

impl GpuTensors {
    /// Names, in load order (none: never constructed).
    pub fn names(&self) -> Vec<&str> {
        vec![]
    }
    /// Always fails: this build has no CUDA.
    pub fn to_host(&self, _name: &str) -> Result<Vec<u8>> {
        Err(Error::Gpu(
            tenpak_kernels::Error::NotCompiledWithCuda.to_string(),
        ))
    }
}

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

/// Always fails: this build has no CUDA.
pub fn load_delta(
    _d: &crate::delta::DeltaSource,
    _sel: &crate::artifact::Selection,
    _dtype: crate::dtype::DType,
) -> Result<(GpuTensors, super::DeltaPaths)> {
    Err(Error::Gpu(
        tenpak_kernels::Error::NotCompiledWithCuda.to_string(),
    ))
}
