//! Codecs: one trait, one file per codec, one table that lists them all ([`table`]),
//! exact bit accounting.
//!
//! An encoding is a self-describing byte string: a 16-byte [`Header`] (codec id, mode,
//! group sizes, shape), then the codec's arrays. `bits_per_weight` is always
//! `8 · encoded bytes / weights`, so headers, scales, offsets, codes, outlier indices and
//! values — everything — is counted. [`decode`] needs only the bytes.
//!
//! | codec | what | bits/weight (asymmetric, fp16 scale + offset) |
//! |---|---|---|
//! | `int4` | grouped 4-bit, iterative scale refinement | 4 + 32/g |
//! | `int4_residual` | `int4` then 2-bit on the residual | 6 + 32/g + 32/g₂ |
//! | `outliers` (option) | top p% weights kept as fp16 (u32 index + f16 value) | + 48·p |
//! | `int4_g8_fp16` | preset: `int4`, g = 8 | 8 |
//! | `int4_opt_llama` | preset: `int4`, g = 128 | 4.25 |
//! | `int3`, `int2` | the same grouped quantizer at 3 / 2 bits | 3 + 32/g, 2 + 32/g |
//! | `--awq` (`int4_awq`) | per-input-channel scales from calibration ([`awq`]) | + 16/rows |
//! | `--gptq` | error feedback through the inverse Hessian ([`gptq`]) | + 0 |
//! | `calibrated_vq` | Hessian-weighted k-means VQ ([`vq`]) | b/d + 16/g + codebook |
//! | `tenpak_x` | low rank + VQ (+ INT2) on the residuals ([`lowrank`]) | see [`lowrank`] |
//!
//! Delta encodings ([`DeltaCodec`], `docs/FORMAT.md` §6) store a fine-tuned tensor
//! against its base tensor and decode with [`apply`]: [`delta_exact`] (lossless, ordered
//! differences in byte planes, zstd), [`delta_sign`] (sign × scale per row, BitDelta),
//! [`delta_add`] (base + any encoding of the difference: INTn, low rank, sums) and
//! [`delta_grid`] (re-quantized on the base artifact's grid, an XOR patch of its codes).
//!
//! Calibrated options (`awq`, `gptq`) and the importance weighting of `calibrated_vq` and
//! `tenpak_x` take a [`TensorCalib`] (the layer's input statistics) in
//! [`CodecSpec::encode`].
//!
//! The module by concern, bottom to top (no file depends on one above it):
//! [`header`] (the header and codec ids) and [`traits`] (the [`Codec`] trait, input
//! checks); [`spec`] (the serialisable choice, the table's row types); one file per codec;
//! [`table`] (every codec: its decoder and GPU path, every family and its parameters, and
//! the decode dispatch); [`choice`] (what a [`CodecSpec`] does through the table:
//! validation, building, calibrated encoding, labels). This file only re-exports.

pub mod awq;
pub mod choice;
pub mod delta_add;
pub mod delta_exact;
pub mod delta_grid;
pub mod delta_sign;
pub mod factored;
pub mod gptq;
pub mod group;
pub mod header;
pub mod huffman;
pub mod int4;
pub mod int4_residual;
pub mod lowrank;
pub mod outliers;
pub mod spec;
pub mod table;
pub mod traits;
pub mod vq;

pub use header::{CodecId, Header, HEADER_LEN};
pub use int4::Int4;
pub use int4_residual::Int4Residual;
pub use outliers::WithOutliers;
pub use spec::{
    check_group, CodecKind, CodecSpec, Encoded, TensorCalib, DEFAULT_AWQ_OUTLIERS,
    DEFAULT_REFINE_ITERS, MAX_GROUP, MIN_GROUP,
};
pub use table::{apply, check_output, decode, decode_vec, is_delta, requantize};
pub use traits::{check_finite, BaseView, Codec, DeltaCodec};
