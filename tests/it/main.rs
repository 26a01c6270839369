//! The integration test binary of the `tenpak` package: shared helpers here, one module
//! per area.

mod architecture;
mod artifact;
mod cli;
mod codecs;
mod delta;
mod export;
mod fixtures;
mod github;
mod github_standin;
mod hub;
mod hub_standin;
mod optimize;
mod runtime;
mod util;
