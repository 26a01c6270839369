//! Exports of `.tnpk` artifacts into the formats inference engines read: GGUF (llama.cpp,
//! transformers' `gguf_file=`), with the tokenizer and architecture metadata rebuilt from
//! the artifact's side files.

pub mod gguf;
pub mod tokenizer;
