//! `tenpak export`: `.tnpk` → a format an inference engine reads (GGUF for llama.cpp and
//! transformers' `gguf_file=` loader).

use std::path::PathBuf;

use tenpak::export::gguf::{self, Model, Options};
use tenpak::source::gguf::GgmlType;

use super::artifact_args::{Opened, SourceArgs};

/// Target formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// GGUF v3 (llama.cpp): int4 maps exactly to Q4_1 (asymmetric) / Q4_0 (symmetric)
    /// when its groups are a multiple of 32; raw tensors stay BF16/F16/F32; other
    /// encodings are re-encoded to --fallback, their added error reported. A delta (with
    /// --base) exports the fine-tune, every tensor in its own dtype.
    Gguf,
}

/// Arguments of `tenpak export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The format to write.
    #[arg(long = "to", value_enum)]
    pub format: Format,
    /// The file to write (atomically: nothing is left at this path if the export fails).
    #[arg(short, long)]
    pub output: PathBuf,
    /// GGUF type of tensors with no exact ggml equivalent (AWQ-scaled, VQ, tenpak_x,
    /// int4_residual, int3/int2, int4 with fp16 outliers): q8_0 adds the least error,
    /// q4_1 keeps the size near int4's; rows not a multiple of 32 use f16/bf16.
    #[arg(long, default_value = "q8_0", value_parser = parse_fallback)]
    pub fallback: GgmlType,
    /// Also write the per-tensor report (type, exact or not, added error) as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Require a valid signature by this public key (`KEY.pub` from `tenpak keygen`).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

fn parse_fallback(s: &str) -> Result<GgmlType, String> {
    gguf::FALLBACKS
        .into_iter()
        .find(|t| t.to_string().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("{s}: one of q8_0, q4_1, q4_0, f16, bf16, f32"))
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let key = super::artifact_args::public_key(a.key.as_deref())?;
    let opened = a.source.open_model(key.as_ref())?;
    let (model, art) = match &opened {
        Opened::Full(art) => (Model::Full(art), &**art),
        Opened::Delta(d) => (Model::Delta(d), d.delta()),
    };
    let Format::Gguf = a.format;
    let n = art.manifest().tensors.len();
    let pb = super::progress::bar(n as u64, "export");
    let t0 = std::time::Instant::now();
    let report = gguf::export(
        model,
        &a.output,
        &Options {
            fallback: a.fallback,
        },
        &|name| {
            pb.set_message(name.to_string());
            pb.inc(1);
        },
    )?;
    pb.finish_and_clear();
    let mut by_type: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for t in &report.tensors {
        let e = by_type.entry(t.ty.as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(t.exact);
    }
    let types: Vec<String> = by_type
        .iter()
        .map(|(ty, (n, exact))| format!("{ty} {n} ({exact} exact)"))
        .collect();
    println!(
        "exported {n} tensors from {} ({}) -> {} as GGUF: {} bytes, {:.3} bits/weight; {} of {n} tensors exact (equal to the .tnpk's decode, {} bit for bit) [{}] in {:.1} s",
        a.source.location,
        art.digest(),
        a.output.display(),
        report.file_bytes,
        report.bits_per_weight(),
        report.exact(),
        report.tensors.iter().filter(|t| t.bit_identical).count(),
        types.join(", "),
        t0.elapsed().as_secs_f64()
    );
    let worst = report
        .tensors
        .iter()
        .filter(|t| !t.exact)
        .max_by(|a, b| a.rel_rms_error.total_cmp(&b.rel_rms_error));
    if let Some(w) = worst {
        println!(
            "re-encoded tensors add error; the largest: {} ({} -> {}) relative RMS {:.2e}",
            w.name, w.from, w.ty, w.rel_rms_error
        );
    }
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| tenpak::Error::io("write", p, e))?;
    }
    Ok(())
}
