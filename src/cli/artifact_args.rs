//! Flags shared by the commands that read an artifact.

use tenpak::artifact::source::{self, HttpOptions};
use tenpak::artifact::Artifact;

/// Where the artifact is and how to fetch it.
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// A `.tnpk` file, or an http(s) URL served with Range support.
    pub location: String,
    /// Parallel HTTP range requests.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}

impl SourceArgs {
    /// Opens the artifact (header and manifest validated).
    pub fn open(&self) -> anyhow::Result<Artifact> {
        let http = HttpOptions {
            parallel: self.parallel.max(1),
            ..HttpOptions::default()
        };
        Ok(Artifact::open(source::open(&self.location, http)?)?)
    }
}
