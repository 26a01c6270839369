//! `tenpak quantize`: encode with TenPak codecs, write the decoded model and a report.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use tenpak::codec::CodecSpec;
use tenpak::dtype::DType;
use tenpak::plan::{Selection, Target};
use tenpak::quantize::{quantize, Options, Report};
use tenpak::source::DEFAULT_MAX_SHARD_BYTES;

/// How codecs are chosen: shared by `quantize` and `pack`.
///
/// Exactly one of --target, --codec, --bits-per-weight chooses the codecs (default:
/// --target balanced). The blocks' linear layers are quantized; embeddings and the LM head
/// only with --quantize-embeddings; norms, biases and small tensors stay as they are.
#[derive(Debug, clap::Args)]
pub struct CodecArgs {
    /// Preset: quality (attn g32, MLP g64), balanced (g64/g128), size (g128/g256).
    #[arg(long, value_enum, conflicts_with_all = ["codec", "bits_per_weight"])]
    pub target: Option<Target>,
    /// One codec for all quantized tensors: int4, int4_residual, int4_g8_fp16, int4_opt_llama.
    #[arg(long, conflicts_with = "bits_per_weight")]
    pub codec: Option<String>,
    /// Group size for --codec (8..=4096; default per codec: int4 128, int4_residual 16).
    #[arg(long, requires = "codec")]
    pub group_size: Option<usize>,
    /// Symmetric INT4 (fp16 scale only, no offset) for --codec int4.
    #[arg(long, requires = "codec")]
    pub symmetric: bool,
    /// Scale-refinement iterations for every codec (0 = plain round-to-nearest, to compare).
    #[arg(long, default_value_t = tenpak::codec::DEFAULT_REFINE_ITERS)]
    pub refine_iters: u32,
    /// Average bits per weight over the blocks' linear layers; the planner picks a codec per
    /// tensor to meet it with the least weighted error.
    #[arg(long)]
    pub bits_per_weight: Option<f64>,
    /// Keep this percentage of weights (largest magnitude) exactly, as fp16 outliers.
    #[arg(long, default_value_t = 0.0)]
    pub outliers: f64,
    /// Quantize token embeddings and the LM head too.
    #[arg(long)]
    pub quantize_embeddings: bool,
    /// GPTQ-style error feedback for int4 tensors: quantize column by column, moving each
    /// column's error onto the columns not yet quantized through the inverse input
    /// Hessian (damping 1% of its mean diagonal, whole-row blocks, no activation order).
    /// Needs --stats; tensors whose input the statistics lack XᵀX for stay plain.
    #[arg(long, requires = "stats")]
    pub gptq: bool,
    /// Calibration statistics from `tenpak calibrate` (for --gptq).
    #[arg(long)]
    pub stats: Option<std::path::PathBuf>,
    /// Dtype used when the model is a GGUF file (its weights are imported first).
    #[arg(long, default_value = "bf16", value_parser = super::import::parse_dtype)]
    pub gguf_dtype: DType,
}

impl CodecArgs {
    /// The pipeline options these flags describe.
    pub fn options(&self, max_shard_bytes: u64) -> anyhow::Result<Options> {
        let selection = match (&self.target, &self.codec, self.bits_per_weight) {
            (_, Some(c), _) => {
                let mut spec = CodecSpec::from_name(c, self.group_size)?;
                spec.symmetric = self.symmetric;
                if self.symmetric && spec.kind != tenpak::codec::CodecKind::Int4 {
                    bail!("--symmetric applies to int4 codecs only");
                }
                Selection::Codec(spec)
            }
            (_, None, Some(b)) => {
                if !(b.is_finite() && b > 0.0) {
                    bail!("--bits-per-weight must be a positive number");
                }
                Selection::BitsPerWeight(b)
            }
            (Some(t), None, None) => Selection::Target(*t),
            (None, None, None) => Selection::Target(Target::Balanced),
        };
        if !(0.0..=50.0).contains(&self.outliers) {
            bail!("--outliers is a percentage between 0 and 50");
        }
        Ok(Options {
            selection,
            quantize_embeddings: self.quantize_embeddings,
            tuning: tenpak::plan::Tuning {
                outlier_fraction: self.outliers / 100.0,
                refine_iters: self.refine_iters,
            },
            max_shard_bytes,
            gptq: match (&self.stats, self.gptq) {
                (Some(p), true) => Some(std::sync::Arc::new(
                    tenpak::quantize::Gptq::open(p, tenpak::codec::gptq::DEFAULT_DAMP)
                        .map_err(|e| anyhow::anyhow!("--stats: {e}"))?,
                )),
                (Some(_), false) => bail!("--stats is used by --gptq; add --gptq"),
                _ => None,
            },
        })
    }

    /// A one-line description for artifact metadata.
    pub fn describe(&self) -> String {
        let base = match (&self.target, &self.codec, self.bits_per_weight) {
            (_, Some(c), _) => format!(
                "codec {c}{}",
                self.group_size
                    .map(|g| format!(" g{g}"))
                    .unwrap_or_default()
            ),
            (_, None, Some(b)) => format!("bits-per-weight {b}"),
            (Some(t), None, None) => format!("target {t:?}").to_lowercase(),
            (None, None, None) => "target balanced".into(),
        };
        base + &match (&self.stats, self.gptq) {
            (Some(p), true) => format!(
                ", gptq (damp {}, stats {})",
                tenpak::codec::gptq::DEFAULT_DAMP,
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            _ => String::new(),
        }
    }
}

/// Arguments of `tenpak quantize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: an HF directory (config.json + safetensors) or a .gguf file.
    pub model: PathBuf,
    /// Output directory for the dequantized model (same dtype as the source).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub codecs: CodecArgs,
    /// Largest shard in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_SHARD_BYTES)]
    pub max_shard_size: u64,
    /// Print one JSON object (totals and a `tensors` list) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print every tensor in the table, not only the quantized ones.
    #[arg(long)]
    pub all: bool,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let opts = a.codecs.options(a.max_shard_size)?;
    let src = tenpak::source::open(&a.model, a.codecs.gguf_dtype)
        .with_context(|| format!("opening {}", a.model.display()))?;
    let pb = super::progress::bar(src.tensors().len() as u64, "quantize");
    let report = quantize(src.as_ref(), &a.output, &opts, &|t| {
        pb.set_message(t.name.clone());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &report, a.all)?;
        writeln!(out, "wrote {}", a.output.display())?;
    }
    Ok(())
}

/// Prints the per-tensor table and the totals.
pub fn print_table(out: &mut impl Write, r: &Report, all: bool) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<52} {:>14} {:>8} {:<22} {:>7} {:>9}",
        "tensor", "shape", "source", "codec", "bpw", "rel.err"
    )?;
    for t in r
        .tensors
        .iter()
        .filter(|t| all || !t.codec.starts_with("keep"))
    {
        writeln!(
            out,
            "{:<52} {:>14} {:>8} {:<22} {:>7.3} {:>9.5}",
            t.name,
            format!("{:?}", t.shape),
            t.source,
            t.codec,
            t.bits_per_weight,
            t.rel_error
        )?;
    }
    let kept = r
        .tensors
        .iter()
        .filter(|t| t.codec.starts_with("keep"))
        .count();
    if !all && kept > 0 {
        writeln!(
            out,
            "({kept} tensors kept in their source dtype; --all lists them)"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "quantized weights         {:>14} of {}",
        r.quantized_weights, r.total_weights
    )?;
    writeln!(
        out,
        "bits/weight (quantized)   {:>14.4}   blocks' linear layers, all overhead counted",
        r.bits_per_weight_quantized
    )?;
    writeln!(
        out,
        "bits/weight (whole file)  {:>14.4}   every tensor",
        r.bits_per_weight_file
    )?;
    writeln!(
        out,
        "size                      {:>14}   vs {} bytes at the source's {:.0} bits/weight: {:.2}x smaller",
        r.compressed_bytes, r.source_bytes, r.source_bits_per_weight, r.ratio_vs_source
    )?;
    writeln!(
        out,
        "mean relative error       {:>14.5}   ||W-Q(W)|| / ||W||, over quantized tensors",
        r.mean_rel_error
    )
}
