//! Flags shared by the commands that read an artifact.

use tenpak::artifact::source::{self, HttpOptions};
use tenpak::artifact::Artifact;

use ed25519_dalek::VerifyingKey;

/// The public key of a `--key KEY.pub` flag, when given.
pub fn public_key(path: Option<&std::path::Path>) -> anyhow::Result<Option<VerifyingKey>> {
    Ok(path
        .map(tenpak::artifact::sign::load_public_key)
        .transpose()?)
}

/// Where the artifact is and how to fetch it.
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// A `.tnpk` file, or an http(s) URL served with Range support.
    pub location: String,
    /// The base artifact (file or URL) when LOCATION is a delta (`pack --base`): the
    /// delta is applied to it; a base with another digest than the delta names is refused.
    #[arg(long)]
    pub base: Option<String>,
    /// Parallel HTTP range requests.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}

pub use tenpak::delta::Opened;

impl SourceArgs {
    fn http(&self) -> HttpOptions {
        HttpOptions {
            parallel: self.parallel.max(1),
            ..HttpOptions::default()
        }
    }

    /// Opens the artifact (header and manifest validated); with `key`, its signature is
    /// checked first, before the manifest is parsed.
    pub fn open(&self, key: Option<&VerifyingKey>) -> anyhow::Result<Artifact> {
        let src = source::open(&self.location, self.http())?;
        Ok(match key {
            Some(k) => Artifact::open_verified(src, k)?,
            None => Artifact::open(src)?,
        })
    }

    /// Opens the artifact, with its base when it is a delta: a delta without `--base`,
    /// or with the wrong base, and a `--base` for a full model are errors.
    /// With `key`, both artifacts must be signed by it (checked before their manifests
    /// are parsed).
    pub fn open_model(&self, key: Option<&VerifyingKey>) -> anyhow::Result<Opened> {
        Ok(tenpak::delta::open_model(
            &self.location,
            self.base.as_deref(),
            self.http(),
            key,
        )?)
    }
}
