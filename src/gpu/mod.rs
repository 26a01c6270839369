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
pub use imp::{load_artifact, load_artifact_pinned, load_delta, DeltaPaths, GpuTensors};

/// The `bench-gpu` harness: kernels checked against the CPU decode and timed, and the
/// whole-model load against bf16 safetensors. Not part of the library's API: built only
/// with the `bench-gpu` feature (which implies `cuda`), for `tenpak bench-gpu`.
#[cfg(feature = "bench-gpu")]
pub mod bench;
#[cfg(not(feature = "cuda"))]
pub use stand_in::*;
