//! `tenpak import`: GGUF → HF directory.

use std::path::PathBuf;

use anyhow::Context;
use tenpak::dtype::DType;
use tenpak::source::gguf::GgufSource;
use tenpak::source::{HfDirWriter, TensorSource, DEFAULT_MAX_SHARD_BYTES};

/// Arguments of `tenpak import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GGUF file (architectures: llama, gemma3; tensor types F32, F16, BF16, Q8_0,
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K).
    pub model: PathBuf,
    /// Output directory (created; existing weight files in it are replaced).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Dtype of the written weights: bf16 (default, what the HF checkpoints ship), f16, f32.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Largest shard in bytes before the weights are split into several files.
    #[arg(long, default_value_t = DEFAULT_MAX_SHARD_BYTES)]
    pub max_shard_size: u64,
}

pub(crate) fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s).ok_or_else(|| format!("unknown dtype {s:?} (bf16, f16, f32)"))
}

/// Runs the import.
pub fn run(a: Args) -> anyhow::Result<()> {
    let src = GgufSource::open(&a.model, a.dtype)
        .with_context(|| format!("opening {}", a.model.display()))?;
    let metas = src.tensors().to_vec();
    let pb = super::progress::bar(metas.len() as u64, "import");
    let mut w = HfDirWriter::new(&a.output, metas.clone(), a.max_shard_size)?;
    for m in &metas {
        pb.set_message(m.name.clone());
        let v = src.read_f32(&m.name)?;
        w.write(&m.name, &v)?;
        pb.inc(1);
    }
    let files = w.finish()?;
    src.write_side_files(&a.output)?;
    pb.finish_and_clear();
    let params: usize = metas.iter().map(|m| m.numel()).sum();
    println!(
        "imported {} ({} tensors, {:.1}M parameters, {}) -> {} [{}]",
        a.model.display(),
        metas.len(),
        params as f64 / 1e6,
        a.dtype,
        a.output.display(),
        files.join(", ")
    );
    Ok(())
}
