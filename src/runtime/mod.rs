//! Running models: forward passes on candle (CPU, f32), tokenization, perplexity.
//! Models load from any [`crate::source::TensorSource`]: HF directories, GGUF files and
//! `.tnpk` artifacts (decoded tensor by tensor as they load).

pub mod config;
pub mod model;
pub mod perplexity;
pub mod tokenizer;

pub use config::ModelConfig;
pub use model::Model;
pub use perplexity::{perplexity, Perplexity, Windows};
pub use tokenizer::Tokenizer;
