//! `tenpak export`: `.tnpk` → a format an inference engine reads (GGUF for llama.cpp and
//! transformers' `gguf_file=` loader; compressed-tensors for vLLM and transformers).

use std::path::PathBuf;

use tenpak::export::{compressed_tensors, gguf, Model};
use tenpak::source::gguf::GgmlType;

use super::artifact_args::SourceArgs;

/// Target formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// GGUF v3 (llama.cpp): int4 maps exactly to Q4_1 (asymmetric) / Q4_0 (symmetric)
    /// when its groups are a multiple of 32; raw tensors stay BF16/F16/F32; other
    /// encodings are re-encoded to --fallback, their added error reported. A delta (with
    /// --base) exports the fine-tune, every tensor in its own dtype.
    Gguf,
    /// A compressed-tensors directory (`pack-quantized`; vLLM, transformers): symmetric
    /// int4 maps exactly; asymmetric int4 gets integer zero points (its added error
    /// reported); other encodings of the blocks' Linears become --ct-fallback; embeddings,
    /// norms and lm_head stay dense. Config, tokenizer and side files are copied.
    CompressedTensors,
}

/// Arguments of `tenpak export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The format to write.
    #[arg(long = "to", value_enum)]
    pub format: Format,
    /// The file (GGUF) or directory (compressed-tensors; must not exist or be empty) to
    /// write, atomically: nothing is left at this path if the export fails.
    #[arg(short, long)]
    pub output: PathBuf,
    /// What tensors with no exact equivalent in the target become (their added error is
    /// reported). GGUF: q8_0 (default: the least error), q4_1 (keeps the size near
    /// int4's), q4_0, f16, bf16, f32 (rows not a multiple of 32 use f16/bf16).
    /// compressed-tensors: int8 (default: symmetric, groups of 128), int4 (symmetric,
    /// groups of 128) or dense (the decode, unquantized, listed in `ignore`).
    #[arg(long)]
    pub fallback: Option<String>,
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
        .ok_or_else(|| format!("--fallback {s}: for GGUF one of q8_0, q4_1, q4_0, f16, bf16, f32"))
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let key = super::artifact_args::public_key(a.key.as_deref())?;
    let opened = a.source.open_model(key.as_ref())?;
    let model = Model::from(&opened);
    let art = model.artifact();
    let n = art.manifest().tensors.len();
    let pb = super::progress::bar(n as u64, "export");
    let t0 = std::time::Instant::now();
    let progress = |name: &str| {
        pb.set_message(name.to_string());
        pb.inc(1);
    };
    let (report, what) = match a.format {
        Format::Gguf => (
            gguf::export(
                model,
                &a.output,
                &gguf::Options {
                    fallback: a
                        .fallback
                        .as_deref()
                        .map(parse_fallback)
                        .transpose()
                        .map_err(anyhow::Error::msg)?
                        .unwrap_or(GgmlType::Q8_0),
                },
                &progress,
            )?,
            "GGUF",
        ),
        Format::CompressedTensors => (
            compressed_tensors::export(
                model,
                &a.output,
                &compressed_tensors::Options {
                    fallback: a
                        .fallback
                        .as_deref()
                        .map(|s| {
                            s.parse().map_err(|e| {
                                anyhow::anyhow!("--fallback {e} for compressed-tensors")
                            })
                        })
                        .transpose()?
                        .unwrap_or_default(),
                },
                &progress,
            )?,
            "compressed-tensors",
        ),
    };
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
        "exported {n} tensors from {} ({}) -> {} as {what}: {} bytes, {:.3} bits/weight; {} of {n} tensors exact (equal to the .tnpk's decode, {} bit for bit) [{}] in {:.1} s",
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
