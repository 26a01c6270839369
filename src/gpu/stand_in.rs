//! The GPU API for builds without the `cuda` feature.

use super::{BenchOptions, BenchReport};
use crate::{Error, Result};

/// Always fails: this build has no CUDA.
pub fn bench(_opts: &BenchOptions) -> Result<BenchReport> {
    Err(Error::Gpu(
        tenpak_kernels::Error::NotCompiledWithCuda.to_string(),
    ))
}
