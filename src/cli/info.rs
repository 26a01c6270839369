//! `tenpak info`: what an artifact holds, without reading its chunks.

use std::io::Write;

use super::artifact_args::SourceArgs;

/// Arguments of `tenpak info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print one JSON object (the manifest summary) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let art = a.source.open(None)?;
    let m = art.manifest();
    let weights = m.weights();
    let source_bytes = m.source_bytes();
    let encoded: u64 = m.tensors.iter().map(|t| t.encoded_length).sum();
    let ratio = source_bytes as f64 / art.len() as f64;
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({
            "location": a.source.location,
            "digest": art.digest(),
            "base": m.base.as_ref().map(|b| b.digest.clone()),
            "file_bytes": art.len(),
            "weights": weights,
            "source_bytes": source_bytes,
            "encoded_bytes": encoded,
            "bits_per_weight_file": art.len() as f64 * 8.0 / weights.max(1) as f64,
            "ratio_vs_source": ratio,
            "signers": art.signers(),
            "metadata": m.metadata,
            "files": m.files.iter().map(|f| serde_json::json!({"name": f.name, "bytes": f.length})).collect::<Vec<_>>(),
            "tensors": m.tensors.iter().map(|t| serde_json::json!({
                "name": t.name, "shape": t.shape, "dtype": t.dtype, "encoding": t.encoding,
                "bytes": t.encoded_length,
                "bits_per_weight": t.encoded_length as f64 * 8.0 / t.numel().max(1) as f64,
                "chunks": t.chunks.len(),
            })).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<52} {:>14} {:>6} {:<22} {:>11} {:>7}",
        "tensor", "shape", "dtype", "codec", "bytes", "bpw"
    )?;
    for t in &m.tensors {
        writeln!(
            out,
            "{:<52} {:>14} {:>6} {:<22} {:>11} {:>7.3}",
            t.name,
            format!("{:?}", t.shape),
            t.dtype.to_string(),
            t.encoding.label(t.dtype),
            t.encoded_length,
            t.encoded_length as f64 * 8.0 / t.numel().max(1) as f64
        )?;
    }
    writeln!(out)?;
    for f in &m.files {
        writeln!(out, "file {:<30} {:>11} bytes", f.name, f.length)?;
    }
    writeln!(
        out,
        "tensors       {} ({} weights), {} chunks",
        m.tensors.len(),
        weights,
        m.chunks.len()
    )?;
    writeln!(
        out,
        "size          {} bytes = {:.4} bits/weight; {:.2}x smaller than the {} source bytes",
        art.len(),
        art.len() as f64 * 8.0 / weights.max(1) as f64,
        ratio,
        source_bytes
    )?;
    writeln!(out, "digest        {}", art.digest())?;
    if let Some(b) = &m.base {
        let refs = m
            .tensors
            .iter()
            .filter(|t| t.encoding == tenpak::artifact::Encoding::Base)
            .count();
        writeln!(
            out,
            "delta against {} ({refs} of {} tensors unchanged); read it with --base",
            b.digest,
            m.tensors.len()
        )?;
    }
    let signers = art.signers();
    writeln!(
        out,
        "signed by     {}",
        if signers.is_empty() {
            "(unsigned)".into()
        } else {
            signers.join(", ")
        }
    )?;
    for (k, v) in &m.metadata {
        writeln!(out, "{k:<13} {v}")?;
    }
    Ok(())
}
