//! `tenpak calibrate`: activation statistics of every linear layer on real text.

use std::path::PathBuf;

use anyhow::Context;
use sha2::Digest;
use tenpak::calib::{self, CalibOptions};
use tenpak::dtype::DType;
use tenpak::runtime::{Model, Tokenizer};

/// Arguments of `tenpak calibrate`.
///
/// Writes, for the input of every linear layer, mean |x| and mean x² per input channel
/// and (for inputs up to --xtx-max-width wide) the full E[xxᵀ], as safetensors; the naming
/// scheme is in the crate docs of `tenpak::calib`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: HF directory, .gguf, .tnpk or .tnpk URL.
    pub model: PathBuf,
    /// UTF-8 calibration text (keep it apart from the text you evaluate on).
    #[arg(long)]
    pub text: PathBuf,
    /// Windows, evenly spaced over the text.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    /// Keep the full XᵀX (what GPTQ and AWQ's search use) for inputs at most this wide
    /// (memory: width² × 8 bytes per distinct input while collecting).
    #[arg(long, default_value_t = DEFAULT_XTX_MAX_WIDTH)]
    pub xtx_max_width: usize,
    /// Also compute the empirical Fisher diagonal (squared loss gradients, one backward
    /// pass per window) on this many windows, for `--sensitivity fisher` (adds 4 bytes
    /// per linear weight to the file).
    #[arg(long, default_value_t = 0)]
    pub fisher: usize,
    /// Output statistics file (.safetensors).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Default for --xtx-max-width: covers SmolLM2 (1536) and Gemma-3-270M (2048).
pub const DEFAULT_XTX_MAX_WIDTH: usize = calib::DEFAULT_XTX_MAX_WIDTH;

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let tokens = calibrate(
        &a.model,
        &a.text,
        a.samples,
        a.seq,
        a.xtx_max_width,
        a.fisher,
        &a.output,
    )?;
    println!(
        "calibrated on {tokens} tokens ({} windows of {}) in {:.1} s -> {}",
        a.samples,
        a.seq,
        t0.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

/// Collects statistics of `model` on `text_path` and writes them to `output`; returns the
/// tokens observed. Shared by `calibrate` and `quantize|pack --calibrate`.
pub fn calibrate(
    model_path: &std::path::Path,
    text_path: &std::path::Path,
    samples: usize,
    seq: usize,
    xtx_max_width: usize,
    fisher_samples: usize,
    output: &std::path::Path,
) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let src = tenpak::models::open(model_path, DType::BF16)
        .with_context(|| format!("opening {}", model_path.display()))?;
    let tok = tenpak::source::side_files(src.as_ref())?
        .into_iter()
        .find(|(n, _)| n == "tokenizer.json")
        .map(|(_, b)| b)
        .with_context(|| format!("{} has no tokenizer.json", model_path.display()))?;
    let tok = Tokenizer::from_bytes(&tok)?;
    let mut model = Model::load(src.as_ref())?;
    drop(src);
    let ids = tok.encode(&text)?;
    let opts = CalibOptions {
        samples,
        seq,
        xtx_max_width,
    };
    let pb = super::progress::bar_of(samples as u64, "calibrate", "windows");
    let sha = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let tokens = calib::calibrate_to(
        &mut model,
        &ids,
        tok.default_bos(),
        opts,
        fisher_samples,
        &[
            ("samples", samples.to_string()),
            ("seq", seq.to_string()),
            (
                "text",
                text_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            ("text_sha256", sha),
            ("model", model_path.display().to_string()),
        ],
        output,
        &|what, k, n| {
            if what == "fisher" && pb.message() != "fisher" {
                pb.set_message("fisher");
                pb.set_length(n as u64);
            }
            pb.set_position(k as u64)
        },
    )?;
    pb.finish_and_clear();
    Ok(tokens)
}
