//! GPU decode: `.tnpk` tensors straight into GPU memory, and the `bench-gpu` measurements.
//!
//! Behind the `cuda` feature (kernels from the `tenpak-kernels` crate, compiled at run
//! time with NVRTC). Without it the same API exists and returns an error saying so, so
//! callers need no `#[cfg]`.

use serde::Serialize;

#[cfg(feature = "cuda")]
mod imp;
#[cfg(not(feature = "cuda"))]
mod stand_in;

#[cfg(feature = "cuda")]
pub use imp::*;
#[cfg(not(feature = "cuda"))]
pub use stand_in::*;

/// Settings of [`bench`].
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Rows × cols of the large timing matrix.
    pub rows: usize,
    /// Columns of the large timing matrix.
    pub cols: usize,
    /// Timed repetitions (median reported).
    pub reps: usize,
    /// Parameters of the synthetic model for the whole-artifact load comparison (0 = skip).
    pub model_params: usize,
    /// Scratch directory for the synthetic model.
    pub scratch: std::path::PathBuf,
}

/// One correctness check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was decoded.
    pub case: String,
    /// Output type.
    pub out: String,
    /// Max |gpu − cpu| / max |cpu|.
    pub max_rel_error: f64,
    /// Elements that differ bit-wise from the CPU decode.
    pub mismatched: usize,
    /// Elements checked (every output element).
    pub elements: usize,
}

/// One timed kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Kernel and case.
    pub case: String,
    /// Median milliseconds.
    pub ms: f64,
    /// Output bytes written / s.
    pub out_gb_s: f64,
    /// (output written + packed read) / s.
    pub moved_gb_s: f64,
    /// `moved_gb_s` / the copy bandwidth of the same run.
    pub fraction_of_copy: f64,
}

/// Whole-model load comparison.
#[derive(Debug, Clone, Serialize)]
pub struct LoadComparison {
    /// Weights in the model.
    pub params: usize,
    /// bf16 safetensors bytes.
    pub safetensors_bytes: u64,
    /// `.tnpk` bytes.
    pub tnpk_bytes: u64,
    /// Seconds: read + copy of the bf16 safetensors into GPU memory.
    pub safetensors_s: f64,
    /// Seconds: read + verify + copy + decode of the `.tnpk` into bf16 GPU buffers.
    pub tnpk_s: f64,
    /// Seconds for the `.tnpk` through pinned staging and overlapping streams.
    pub tnpk_pinned_s: f64,
    /// `safetensors_s / tnpk_s` (> 1: the artifact is faster).
    pub speedup: f64,
}

/// Everything `bench-gpu` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Card and NVRTC target.
    pub device: String,
    /// Device-to-device copy, bytes read + written per second (GB/s).
    pub copy_gb_s: f64,
    /// Kernel checks against the CPU decode.
    pub checks: Vec<Check>,
    /// Kernel timings.
    pub timings: Vec<Timing>,
    /// Whole-artifact load vs bf16 safetensors load.
    pub load: Option<LoadComparison>,
}
