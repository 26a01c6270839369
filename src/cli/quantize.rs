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
    /// One codec for all quantized tensors: int4, int3, int2, int4_residual, int4_awq
    /// (int4 + AWQ scaling + 0.1% fp16 salient weights), calibrated_vq (Hessian-weighted
    /// k-means VQ: d 2, 8-bit indices, g64 = 4.25 bits/weight), tenpak_x (rank 8 + VQ d2
    /// 7-bit g64), int4_g8_fp16, int4_opt_llama.
    #[arg(long, conflicts_with = "bits_per_weight")]
    pub codec: Option<String>,
    /// Group size for --codec (8..=4096; default per codec: int4/int3 128, int2 64,
    /// int4_residual 16, calibrated_vq/tenpak_x 64 = the VQ scale group).
    #[arg(long, requires = "codec")]
    pub group_size: Option<usize>,
    /// Symmetric INT (fp16 scale only, no offset) for --codec int4/int3/int2.
    #[arg(long, requires = "codec")]
    pub symmetric: bool,
    /// VQ vector length for calibrated_vq / tenpak_x (1..=8).
    #[arg(long, requires = "codec")]
    pub vq_dim: Option<usize>,
    /// VQ index bits for calibrated_vq / tenpak_x (codebook of 2^bits entries, 1..=12).
    #[arg(long, requires = "codec")]
    pub vq_bits: Option<u32>,
    /// Rank of tenpak_x's low-rank term.
    #[arg(long, requires = "codec")]
    pub rank: Option<usize>,
    /// Group of tenpak_x's final INT2 stage on what VQ leaves (0 = no INT2 stage).
    #[arg(long, requires = "codec")]
    pub residual_group: Option<usize>,
    /// Scale-refinement iterations for every codec (0 = plain round-to-nearest, to compare).
    #[arg(long, default_value_t = tenpak::codec::DEFAULT_REFINE_ITERS)]
    pub refine_iters: u32,
    /// Average bits per weight over the blocks' linear layers; the planner picks a codec per
    /// tensor to meet it with the least weighted error (with statistics: the least output
    /// error, calibrated_vq among the candidates).
    #[arg(long)]
    pub bits_per_weight: Option<f64>,
    /// Keep this percentage of weights exactly, as fp16 outliers (largest magnitude; with
    /// statistics for AWQ: largest E[x²]·w²). Default: 0, 0.1 for int4_awq.
    #[arg(long)]
    pub outliers: Option<f64>,
    /// Quantize token embeddings and the LM head too.
    #[arg(long)]
    pub quantize_embeddings: bool,
    /// AWQ for the int codecs: per-input-channel scales E|x|^α, α searched per layer on a
    /// 20-point grid to minimise the layer's output error on the calibration inputs; stored
    /// as fp16 multipliers (16/rows bits per weight). Needs --stats or --calibrate.
    #[arg(long)]
    pub awq: bool,
    /// GPTQ-style error feedback for the int codecs, calibrated_vq and tenpak_x's VQ stage
    /// (codebook fixed, vectors assigned left to right): quantize column by column, moving each
    /// column's error onto the columns not yet quantized through the inverse input
    /// Hessian (damping 1% of its mean diagonal, whole-row blocks, no activation order).
    /// Combines with --awq. Needs --stats or --calibrate; layers whose statistics lack
    /// XᵀX stay plain (the report says so).
    #[arg(long)]
    pub gptq: bool,
    /// Calibration statistics from `tenpak calibrate`.
    #[arg(long, conflicts_with = "calibrate")]
    pub stats: Option<std::path::PathBuf>,
    /// Calibrate on this UTF-8 text first (statistics written beside the output as
    /// OUTPUT.stats.safetensors, reusable with --stats). Keep it apart from eval text.
    #[arg(long)]
    pub calibrate: Option<std::path::PathBuf>,
    /// Windows of --calibrate.
    #[arg(long, default_value_t = 32, requires = "calibrate")]
    pub calib_samples: usize,
    /// Tokens per window of --calibrate.
    #[arg(long, default_value_t = 512, requires = "calibrate")]
    pub calib_seq: usize,
    /// What a bit budget (--bits-per-weight) spends by with statistics: `hessian`, each
    /// tensor's relative output error (input E[x²] per column); `fisher`, the loss
    /// increase from the empirical Fisher diagonal (statistics from `tenpak calibrate
    /// --fisher N`; with --calibrate and a budget it is computed on the --calib-samples
    /// windows, a backward pass each); `auto`, fisher when the statistics have it.
    #[arg(long, value_enum, default_value_t = tenpak::plan::Sensitivity::default())]
    pub sensitivity: tenpak::plan::Sensitivity,
    /// Dtype used when the model is a GGUF file (its weights are imported first).
    #[arg(long, default_value = "bf16", value_parser = super::import::parse_dtype)]
    pub gguf_dtype: DType,
}

impl CodecArgs {
    /// The pipeline options these flags describe (statistics not attached yet: see
    /// [`CodecArgs::attach_calibration`]).
    pub fn options(&self, max_shard_bytes: u64) -> anyhow::Result<Options> {
        let selection = match (&self.target, &self.codec, self.bits_per_weight) {
            (_, Some(c), _) => {
                let mut spec = CodecSpec::from_name(c, self.group_size)?;
                spec.symmetric = self.symmetric;
                if self.symmetric && spec.kind.scalar_bits().is_none() {
                    bail!("--symmetric applies to int codecs only");
                }
                let vq = matches!(
                    spec.kind,
                    tenpak::codec::CodecKind::CalibratedVq | tenpak::codec::CodecKind::TenpakX
                );
                if !vq && (self.vq_dim.is_some() || self.vq_bits.is_some()) {
                    bail!("--vq-dim and --vq-bits apply to calibrated_vq and tenpak_x");
                }
                if spec.kind != tenpak::codec::CodecKind::TenpakX
                    && (self.rank.is_some() || self.residual_group.is_some())
                {
                    bail!("--rank and --residual-group apply to tenpak_x");
                }
                spec.vq_dim = self.vq_dim.unwrap_or(spec.vq_dim);
                spec.vq_bits = self.vq_bits.unwrap_or(spec.vq_bits);
                spec.rank = self.rank.unwrap_or(spec.rank);
                spec.residual_group = self.residual_group.unwrap_or(spec.residual_group);
                if self.awq && spec.kind.scalar_bits().is_none() {
                    bail!("--awq applies to the int codecs (int4, int3, int2)");
                }
                if self.gptq && spec.kind == tenpak::codec::CodecKind::Int4Residual {
                    bail!("--gptq does not apply to int4_residual");
                }
                spec.validate()?;
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
        if let Some(p) = self.outliers {
            if !(0.0..=50.0).contains(&p) {
                bail!("--outliers is a percentage between 0 and 50");
            }
        }
        let wants_stats = self.awq
            || self.gptq
            || matches!(&selection, Selection::Codec(s) if s.needs_calibration());
        if wants_stats && self.stats.is_none() && self.calibrate.is_none() {
            bail!("AWQ and GPTQ need calibration statistics: add --calibrate TEXT or --stats FILE");
        }
        Ok(Options {
            selection,
            quantize_embeddings: self.quantize_embeddings,
            tuning: tenpak::plan::Tuning {
                outlier_fraction: self.outliers.map(|p| p / 100.0),
                refine_iters: self.refine_iters,
                awq: self.awq,
                gptq: self.gptq,
                sensitivity: self.sensitivity,
            },
            max_shard_bytes,
            calib: None,
        })
    }

    /// Opens --stats, or runs --calibrate on `model` (writing `OUTPUT.stats.safetensors`),
    /// and attaches the statistics to `opts`.
    pub fn attach_calibration(
        &self,
        opts: &mut Options,
        model: &std::path::Path,
        output: &std::path::Path,
    ) -> anyhow::Result<()> {
        let path = match (&self.stats, &self.calibrate) {
            (Some(p), _) => p.clone(),
            (None, Some(text)) => {
                let mut p = output.as_os_str().to_owned();
                p.push(".stats.safetensors");
                let p = PathBuf::from(p);
                let t0 = std::time::Instant::now();
                let tokens = super::calibrate::calibrate(
                    model,
                    text,
                    self.calib_samples,
                    self.calib_seq,
                    super::calibrate::DEFAULT_XTX_MAX_WIDTH,
                    // The Fisher diagonal only serves a bit budget (and costs a backward
                    // pass per window).
                    if self.sensitivity != tenpak::plan::Sensitivity::Hessian
                        && matches!(opts.selection, Selection::BitsPerWeight(_))
                    {
                        self.calib_samples
                    } else {
                        0
                    },
                    &p,
                )?;
                eprintln!(
                    "calibrated on {tokens} tokens of {} in {:.1} s -> {}",
                    text.display(),
                    t0.elapsed().as_secs_f64(),
                    p.display()
                );
                p
            }
            (None, None) => {
                if matches!(&opts.selection, Selection::Codec(s) if s.uses_calibration()) {
                    eprintln!(
                        "note: without --calibrate/--stats, calibrated_vq and tenpak_x weigh every weight alike"
                    );
                }
                return Ok(());
            }
        };
        let calib = tenpak::calib::Calib::open(&path, tenpak::codec::gptq::DEFAULT_DAMP)
            .map_err(|e| anyhow::anyhow!("--stats: {e}"))?;
        if self.gptq && !calib.has_xtx() {
            bail!(
                "{} holds no input_xtx (XᵀX): GPTQ needs it (tenpak calibrate --xtx-max-width)",
                path.display()
            );
        }
        opts.calib = Some(std::sync::Arc::new(calib));
        Ok(())
    }

    /// A one-line description for artifact metadata (codec choice, calibrated options,
    /// and which statistics and text were used).
    pub fn describe(&self, opts: &Options) -> String {
        let mut s = match (&self.target, &self.codec, self.bits_per_weight) {
            (_, Some(_), _) => match &opts.selection {
                Selection::Codec(spec) => format!("codec {}", spec.label()),
                _ => String::new(),
            },
            (_, None, Some(b)) => format!("bits-per-weight {b}"),
            (Some(t), None, None) => format!("target {t:?}").to_lowercase(),
            (None, None, None) => "target balanced".into(),
        };
        if self.awq {
            s.push_str(", awq");
        }
        if self.gptq {
            s.push_str(&format!(
                ", gptq (damp {})",
                tenpak::codec::gptq::DEFAULT_DAMP
            ));
        }
        if let Some(c) = &opts.calib {
            s.push_str(&format!(", stats {}", c.describe()));
        }
        s
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
    let mut opts = a.codecs.options(a.max_shard_size)?;
    a.codecs
        .attach_calibration(&mut opts, &a.model, &a.output)?;
    let src = tenpak::models::open(&a.model, a.codecs.gguf_dtype)
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
    for t in r.tensors.iter().filter(|t| all || !t.kept) {
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
    let kept = r.tensors.iter().filter(|t| t.kept).count();
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
