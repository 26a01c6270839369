//! `tenpak pack`: model → signed `.tnpk`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use tenpak::artifact::{pack, sign};

use super::quantize::CodecArgs;

/// Arguments of `tenpak pack`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: an HF directory (config.json + safetensors) or a .gguf file.
    pub model: PathBuf,
    /// The artifact to write (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub codecs: CodecArgs,
    /// Sign with this secret key (from `tenpak keygen`); repeat to add signatures.
    #[arg(long)]
    pub sign: Vec<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let opts = a.codecs.options(u64::MAX)?;
    let keys = a
        .sign
        .iter()
        .map(|p| sign::load_signing_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    let key_refs: Vec<_> = keys.iter().collect();
    let src = tenpak::source::open(&a.model, a.codecs.gguf_dtype)
        .with_context(|| format!("opening {}", a.model.display()))?;
    let source = a.model.display().to_string();
    let selection = a.codecs.describe();
    let pb = super::progress::bar(src.tensors().len() as u64, "pack");
    let t0 = std::time::Instant::now();
    let report = pack::pack(
        src.as_ref(),
        &a.output,
        &opts,
        &key_refs,
        &[("source", &source), ("selection", &selection)],
        &|t| {
            pb.set_message(t.name.clone());
            pb.inc(1);
        },
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    super::quantize::print_table(&mut out, &report.report, false)?;
    writeln!(
        out,
        "artifact                  {:>14}   bytes, {:.4} bits/weight with headers and padding",
        report.file_bytes, report.bits_per_weight_artifact
    )?;
    if report.deduplicated_bytes > 0 {
        writeln!(
            out,
            "deduplicated              {:>14}   bytes stored once",
            report.deduplicated_bytes
        )?;
    }
    writeln!(out, "digest                    {}", report.digest)?;
    writeln!(
        out,
        "signed by                 {}",
        if report.signers.is_empty() {
            "(unsigned)".into()
        } else {
            report.signers.join(", ")
        }
    )?;
    writeln!(
        out,
        "wrote {} in {secs:.1} s ({:.0} MB/s of source weights)",
        a.output.display(),
        report.report.source_bytes as f64 / 1e6 / secs
    )?;
    Ok(())
}
