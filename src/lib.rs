//! TenPak: compressed LLM weights that stay honest about their size and quality.
//!
//! The library does everything a single machine does with a model: read it
//! ([`source`]: HF directories, GGUF), decide how to compress each tensor ([`plan`]),
//! encode and decode ([`codec`]), and run the whole pipeline ([`quantize`]).
//! The `tenpak` binary is a thin CLI over these modules.

pub mod artifact;
pub mod calib;
pub mod codec;
pub mod cpu;
pub mod delta;
pub mod dtype;
pub mod error;
pub mod export;
pub mod github;
pub mod glob;
pub mod gpu;
pub mod hub;
pub mod models;
pub mod optimize;
pub mod plan;
pub mod quantize;
pub mod rng;
pub mod runtime;
pub mod serve;
pub mod source;
pub mod synthetic;

pub use error::{Error, Result};
