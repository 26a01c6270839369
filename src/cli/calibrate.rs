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
    /// Keep the full XᵀX for inputs at most this wide.
    #[arg(long, default_value_t = 1024)]
    pub xtx_max_width: usize,
    /// Output statistics file (.safetensors).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading {}", a.text.display()))?;
    let src = tenpak::source::open(&a.model, DType::BF16)
        .with_context(|| format!("opening {}", a.model.display()))?;
    let tok = tenpak::source::side_files(src.as_ref())?
        .into_iter()
        .find(|(n, _)| n == "tokenizer.json")
        .map(|(_, b)| b)
        .with_context(|| format!("{} has no tokenizer.json", a.model.display()))?;
    let tok = Tokenizer::from_bytes(&tok)?;
    let model = Model::load(src.as_ref())?;
    drop(src);
    let ids = tok.encode(&text)?;
    let opts = CalibOptions {
        samples: a.samples,
        seq: a.seq,
        xtx_max_width: a.xtx_max_width,
    };
    let windows = calib::windows(&ids, opts)?;
    let pb = indicatif::ProgressBar::new(windows.len() as u64);
    let t0 = std::time::Instant::now();
    let stats = calib::collect(&model, &windows, tok.default_bos(), opts, &|k, _| {
        pb.set_position(k as u64)
    })?;
    pb.finish_and_clear();
    let sha = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    stats.save(
        &a.output,
        &[
            ("samples", a.samples.to_string()),
            ("seq", a.seq.to_string()),
            (
                "text",
                a.text
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            ("text_sha256", sha),
            ("model", a.model.display().to_string()),
        ],
    )?;
    println!(
        "calibrated on {} tokens ({} windows of {}) in {:.1} s -> {}",
        stats.tokens,
        windows.len(),
        a.seq,
        t0.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok(())
}
