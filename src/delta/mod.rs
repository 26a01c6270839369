//! Fine-tunes as deltas against a base artifact (`docs/FORMAT.md` §6).
//!
//! A delta artifact is a `.tnpk` whose manifest names its base by digest. Each of its
//! tensors is one of: a reference to the base's tensor of the same name (no bytes, when
//! the fine-tune left it bit-identical, or when the budget says the change is not worth
//! its bytes), a delta encoding applied to the base's tensor (the `delta_*` rows of the
//! codec table: exact, sign × scale, base + INTn/low rank of the difference, or the
//! fine-tune re-quantized on the base artifact's own grid), or a full tensor (one the base
//! does not have). Side files equal to the base's are not repeated.
//!
//! - [`choose`]: the modes (`exact`, `auto` under a bit budget, `sign`, `grid`), the
//!   candidates per tensor, and how they are measured and allocated;
//! - [`pack`]: fine-tune + base artifact → signed delta `.tnpk`, with its report;
//! - [`adapter`]: a PEFT LoRA adapter → delta `.tnpk` whose adapted matrices are the
//!   adapter's own factors (merged on load);
//! - [`source`]: a delta opened with its base as a model ([`crate::source::TensorSource`]):
//!   digests matched, both artifacts' chunks verified, tensors applied as read.

pub mod adapter;
pub mod choose;
pub mod pack;
pub mod source;

pub use adapter::pack_adapter;
pub use choose::{Choice, DeltaMode, DeltaOptions, Entropy};
pub use pack::{check_compatible, pack_delta, DeltaReport, DeltaTensorReport};
pub use source::DeltaSource;
