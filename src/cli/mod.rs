//! Subcommands, one file each, each with its `Args` and `run`.

mod import;
mod progress;
mod quantize;

use clap::{Parser, Subcommand};

/// TenPak: compress LLM weights, honestly measured.
///
/// Import a GGUF model into a Hugging Face directory, or quantize an HF directory (or
/// a GGUF file directly) with TenPak's INT4 codec family, writing the dequantized model
/// back as a loadable HF directory with a per-tensor report of bits and error.
#[derive(Debug, Parser)]
#[command(name = "tenpak", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert a GGUF file (Llama or Gemma 3) into a loadable HF directory.
    Import(import::Args),
    /// Quantize a model with TenPak codecs and write the dequantized HF directory.
    Quantize(quantize::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Import(a) => import::run(a),
        Command::Quantize(a) => quantize::run(a),
    }
}
