//! Subcommands, one file each, each with its `Args` and `run`.

mod artifact_args;
mod bench_gpu;
mod calibrate;
mod eval;
mod export;
mod import;
mod info;
mod keygen;
mod load;
mod optimize;
mod pack;
mod progress;
mod push;
mod quantize;
mod report;
mod serve_file;
mod unpack;
mod verify;

use clap::{Parser, Subcommand};

/// TenPak: compress LLM weights, honestly measured.
///
/// Import a GGUF model into a Hugging Face directory; quantize a model with TenPak's INT4
/// codec family (writing the dequantized model back with a per-tensor report of bits and
/// error); pack it into a signed, chunked, range-streamable .tnpk and unpack, inspect,
/// verify or serve such artifacts.
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
    /// Perplexity of a model (HF dir, GGUF, .tnpk) on a text, optionally beside another.
    Eval(eval::Args),
    /// Activation statistics (mean |x|, mean x², XᵀX) of every linear layer on a text.
    Calibrate(calibrate::Args),
    /// Create an ed25519 signing key pair (KEY and KEY.pub).
    Keygen(keygen::Args),
    /// Pack a model (HF directory, GGUF, or Hub org/name[@rev]) into a signed, chunked .tnpk.
    Pack(pack::Args),
    /// Publish a .tnpk to a Hugging Face Hub model repository (created if missing).
    Push(push::Args),
    /// Unpack a .tnpk (file or URL) into a loadable HF directory, verifying every chunk.
    Unpack(unpack::Args),
    /// Export a .tnpk for another engine: GGUF (llama.cpp, transformers' gguf_file=) or
    /// compressed-tensors (vLLM, transformers).
    Export(export::Args),
    /// Measure compression candidates on a model and pick the cheapest (hardware,
    /// candidate) that meets quality, latency and throughput constraints.
    Optimize(optimize::Args),
    /// Show what a .tnpk holds: tensors, codecs, bits/weight, sizes, signer, digest.
    Info(info::Args),
    /// Fetch, verify and decode a .tnpk's tensors into memory (no output); report timings.
    Load(load::Args),
    /// Verify a .tnpk: its signature (with --key) and the sha256 of every chunk.
    Verify(verify::Args),
    /// An artifact's report (Markdown): printed, posted as a sticky comment on a GitHub pull
    /// request, and/or the artifact uploaded to a GitHub release.
    Report(report::Args),
    /// GPU decode: kernels checked against the CPU and timed; .tnpk vs bf16 load into GPU memory.
    BenchGpu(bench_gpu::Args),
    /// Serve one .tnpk over HTTP with Range support, for streaming loads and tests.
    ServeFile(serve_file::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Import(a) => import::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Keygen(a) => keygen::run(a),
        Command::Pack(a) => pack::run(a),
        Command::Push(a) => push::run(a),
        Command::Unpack(a) => unpack::run(a),
        Command::Export(a) => export::run(a),
        Command::Optimize(a) => optimize::run(a),
        Command::Info(a) => info::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Report(a) => report::run(a),
        Command::Load(a) => load::run(a),
        Command::ServeFile(a) => serve_file::run(a),
        Command::BenchGpu(a) => bench_gpu::run(a),
    }
}
