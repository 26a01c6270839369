//! `tenpak unpack`: `.tnpk` (file or URL) → HF directory, verified chunk by chunk.

use std::path::PathBuf;

use tenpak::artifact::{Artifact, Selection};
use tenpak::dtype::DType;

use super::artifact_args::{Opened, SourceArgs};

/// Arguments of `tenpak unpack`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output directory (a loadable HF directory: weights, config, tokenizer).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Only tensors whose names match these comma-separated globs (`*`, `?`),
    /// e.g. 'model.layers.0.*,model.norm.weight'.
    #[arg(long)]
    pub tensors: Option<String>,
    /// Only tensors of these transformer layers: N or A-B (inclusive).
    #[arg(long)]
    pub layers: Option<String>,
    /// Dtype of the written weights (default: each tensor's source dtype).
    #[arg(long, value_parser = super::import::parse_dtype)]
    pub dtype: Option<DType>,
    /// Require a valid signature by this public key (`KEY.pub` from `tenpak keygen`).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let sel =
        Selection::new(a.tensors.as_deref(), a.layers.as_deref()).map_err(anyhow::Error::msg)?;
    let key = super::artifact_args::public_key(a.key.as_deref())?;
    // With --key, every artifact's signature is checked before its manifest is parsed.
    let art: Artifact = match a.source.open_model(key.as_ref())? {
        Opened::Full(art) => *art,
        Opened::Delta(d) => return unpack_delta(&a, &sel, &d),
    };
    let n = art.select(&sel).len();
    let pb = super::progress::bar(n as u64, "unpack");
    let t0 = std::time::Instant::now();
    let files = art.unpack(&a.output, &sel, a.dtype, &|t| {
        pb.set_message(t.name.clone());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    println!(
        "unpacked {n} tensors from {} ({}) -> {} [{}]; fetched {} of {} bytes in {:.1} s",
        a.source.location,
        art.digest(),
        a.output.display(),
        files.join(", "),
        art.bytes_fetched(),
        art.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn unpack_delta(a: &Args, sel: &Selection, d: &tenpak::delta::DeltaSource) -> anyhow::Result<()> {
    let n = d.delta().select(sel).len();
    let pb = super::progress::bar(n as u64, "unpack");
    let t0 = std::time::Instant::now();
    let files = d.unpack(&a.output, sel, a.dtype, &|name| {
        pb.set_message(name.to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    println!(
        "unpacked {n} tensors from the delta {} ({}) on the base {} -> {} [{}]; fetched {} + {} bytes in {:.1} s",
        a.source.location,
        d.delta().digest(),
        d.base().digest(),
        a.output.display(),
        files.join(", "),
        d.delta().bytes_fetched(),
        d.base().bytes_fetched(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
