//! The integration test binary of the `tenpak` package: shared helpers here, one module
//! per area.

mod artifact;
mod cli;
mod codecs;
mod fixtures;
mod runtime;
mod util;
