//! CUDA decode kernels for TenPak codecs, compiled at run time with NVRTC.
//!
//! A raw-buffer API: packed codes, fp16 scales and offsets in device memory in; a device
//! buffer of f32, bf16 or f16 out. It knows the stage layout of `docs/FORMAT.md` §4 but
//! nothing of the `tenpak` crate. Kernels live in `cuda/decode.cu` (named
//! `<op>_<dtype>`), are compiled once per process for the card's architecture and cached.
//!
//! Built without the `cuda` feature, [`Gpu::new`] returns [`Error::NotCompiledWithCuda`],
//! so callers need no `#[cfg]`. With it, cudarc loads the driver dynamically: the crate
//! builds on machines without CUDA, and fails at [`Gpu::new`] there, with an error.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
mod stand_in;

#[cfg(feature = "cuda")]
pub use cuda::*;
#[cfg(not(feature = "cuda"))]
pub use stand_in::*;

/// The kernel source.
pub const DECODE_CU: &str = include_str!("../cuda/decode.cu");

/// Output element type of a decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    /// f32.
    F32,
    /// bf16.
    Bf16,
    /// f16.
    F16,
}

impl OutType {
    /// Kernel name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::Bf16 => "bf16",
            OutType::F16 => "f16",
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            OutType::F32 => 4,
            OutType::Bf16 | OutType::F16 => 2,
        }
    }
}

/// Geometry of one quantization stage (see `docs/FORMAT.md` §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageGeometry {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Group size.
    pub group: usize,
    /// 4 or 2.
    pub bits: u32,
    /// Symmetric (no offsets).
    pub symmetric: bool,
}

impl StageGeometry {
    /// Whether the flat fast path applies: groups tile rows exactly, 8 weights per thread.
    pub fn is_flat(&self) -> bool {
        self.group.is_multiple_of(8) && self.cols.is_multiple_of(self.group)
    }
}

/// Errors of the GPU path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This build has no CUDA support.
    #[error("tenpak was built without CUDA support (rebuild with `--features cuda`)")]
    NotCompiledWithCuda,
    /// The CUDA driver or a call into it failed.
    #[error("CUDA: {0}")]
    Driver(String),
    /// NVRTC could not compile the kernels.
    #[error("NVRTC: {0}")]
    Compile(String),
    /// Buffer sizes disagree with the geometry.
    #[error("bad launch: {0}")]
    Launch(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_and_types() {
        let flat = StageGeometry {
            rows: 4,
            cols: 256,
            group: 128,
            bits: 4,
            symmetric: false,
        };
        assert!(flat.is_flat());
        assert!(!StageGeometry { cols: 250, ..flat }.is_flat());
        assert!(!StageGeometry {
            group: 33,
            cols: 330,
            ..flat
        }
        .is_flat());
        assert_eq!(
            (
                OutType::F32.size(),
                OutType::Bf16.size(),
                OutType::F16.suffix()
            ),
            (4, 2, "f16")
        );
        assert!(DECODE_CU.contains("extern \"C\" __global__ void int4_flat_bf16"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn stand_in_says_not_compiled() {
        assert!(matches!(Gpu::new(0), Err(Error::NotCompiledWithCuda)));
    }
}
