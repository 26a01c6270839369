//! GPU decode: `.tnpk` tensors straight into GPU memory. Kernels are chosen by the codec
//! table's [`crate::codec::table::GpuDecode`] entry of each encoding's codec id.
//!
//! Behind the `cuda` feature (kernels from the `tenpak-kernels` crate, compiled at run
//! time with NVRTC). Without it the same API exists and returns an error saying so, so
//! callers need no `#[cfg]`.

#[cfg(feature = "cuda")]
mod imp;
#[cfg(not(feature = "cuda"))]
mod stand_in;

#[cfg(feature = "cuda")]
pub use imp::{load_artifact, load_artifact_pinned, load_delta, GpuTensors};

/// The `bench-gpu` harness: kernels checked against the CPU decode and timed, and the
/// whole-model load against bf16 safetensors. Not part of the library's API: built only
/// with the `bench-gpu` feature (which implies `cuda`), for `tenpak bench-gpu`.
#[cfg(feature = "bench-gpu")]
pub mod bench;
#[cfg(not(feature = "cuda"))]
pub use stand_in::*;

/// How each tensor of a delta reached the GPU ([`load_delta`]'s report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeltaPaths {
    /// References: the base's tensor, decoded on the GPU where its codec has a kernel.
    pub reference: usize,
    /// `delta_add` of grouped INT: the base and the difference decoded and added there.
    pub gpu_add: usize,
    /// Applied on the CPU (exact, sign, grid, low rank, INT3), then uploaded as values.
    pub cpu_apply: usize,
    /// Stored in full in the delta.
    pub full: usize,
}
