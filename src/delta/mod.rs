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

use crate::artifact::source::{self as art_source, HttpOptions};
use crate::artifact::Artifact;
use crate::{Error, Result};

/// An opened model artifact: a full model, or a delta with its base.
pub enum Opened {
    /// A full model.
    Full(Box<Artifact>),
    /// A delta and its base.
    Delta(Box<DeltaSource>),
}

/// Opens the artifact at `location` (a file or an http(s) URL served with Range
/// support), with its base when it is a delta: a delta without `base`, a delta with
/// the wrong base and a `base` for a full model are errors. With `key`, both artifacts
/// must be signed by it (checked before their manifests are parsed).
pub fn open_model(
    location: &str,
    base: Option<&str>,
    http: HttpOptions,
    key: Option<&ed25519_dalek::VerifyingKey>,
) -> Result<Opened> {
    let open = |loc: &str| {
        let src = art_source::open(loc, http.clone())?;
        match key {
            Some(k) => Artifact::open_verified(src, k),
            None => Artifact::open(src),
        }
    };
    let art = open(location)?;
    match (&art.manifest().base, base) {
        (None, None) => Ok(Opened::Full(Box::new(art))),
        (None, Some(_)) => Err(Error::NotADelta {
            location: location.to_string(),
        }),
        (Some(b), None) => Err(Error::DeltaNeedsBase {
            base: b.digest.clone(),
        }),
        (Some(_), Some(base)) => Ok(Opened::Delta(Box::new(DeltaSource::new(art, open(base)?)?))),
    }
}
