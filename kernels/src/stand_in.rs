//! The API of the CUDA module for builds without the `cuda` feature: every entry point
//! returns [`crate::Error::NotCompiledWithCuda`].

use crate::{Error, Result};

/// Stand-in for the CUDA device handle.
#[derive(Debug)]
pub struct Gpu(());

impl Gpu {
    /// Always fails: no CUDA in this build.
    pub fn new(_ordinal: usize) -> Result<Self> {
        Err(Error::NotCompiledWithCuda)
    }
}
