//! `tenpak pack`: model → signed `.tnpk`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use tenpak::artifact::{pack, sign};

use super::quantize::CodecArgs;

/// Arguments of `tenpak pack`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: an HF directory (config.json + safetensors), a .gguf file, or a Hub
    /// model `org/name[@revision]` (downloaded at that exact revision into the Hub cache;
    /// HF_ENDPOINT and HF_TOKEN are honoured).
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
    #[command(flatten)]
    pub delta: DeltaArgs,
}

/// How a fine-tune is stored against its base (`pack --base`).
#[derive(Debug, clap::Args)]
pub struct DeltaArgs {
    /// Store the model as a delta against this base: a .tnpk file or URL (the base
    /// artifact the delta names by digest), or an HF directory, .gguf or Hub id, which is
    /// first packed losslessly to OUTPUT.base.tnpk (publish it beside the delta). The
    /// delta is read back only with that base (`--base` on unpack, info, verify, load,
    /// eval).
    #[arg(long, value_name = "BASE")]
    pub base: Option<String>,
    /// exact: bit-identical reconstruction; auto: per tensor, the encoding that loses least
    /// within --delta-bits-per-weight; sign: BitDelta sign × scale (a baseline); grid:
    /// re-quantized on a quantized base's own grid (the rest exact).
    #[arg(long, value_enum, default_value = "auto", requires = "base")]
    pub delta: tenpak::delta::DeltaMode,
    /// auto's budget, in bits per fine-tune weight, every byte of the delta file counted
    /// (embeddings, headers, manifest, side files that differ from the base's).
    #[arg(long, default_value_t = 2.0, requires = "base")]
    pub delta_bits_per_weight: f64,
    /// zstd level of the entropy-coded delta encodings (1-22; decode speed is the same).
    #[arg(long, default_value_t = tenpak::codec::delta_exact::DEFAULT_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22), requires = "base")]
    pub delta_level: i32,
    /// The exact delta's entropy stage: coded (Huffman codes with the base's exponent as
    /// context, in the values' natural order; decodes several times faster) or planes
    /// (byte planes in exponent order through zstd at --delta-level; the layout of
    /// format 1.3, for readers that predate 1.4). f32 tensors always use planes.
    #[arg(long, value_enum, default_value = "coded", requires = "base")]
    pub delta_exact_layout: ExactLayout,
    /// On a quantized base's grid (`grid`, and `auto`'s grid candidate), let a group take
    /// its own scale and offset where they lose less than this times the error on the
    /// base's (0: keep every group's grid; 1: refit wherever it lowers the error; larger:
    /// refit even where it does not, which on a base already on a 4-bit grid keeps more
    /// of the fine-tune's update). Refitted groups cost their codes and parameters in the
    /// patch.
    #[arg(long, default_value_t = tenpak::delta::choose::DEFAULT_GRID_REFIT,
          value_parser = parse_refit, requires = "base")]
    pub delta_grid_refit: f32,
}

/// A local path as is; otherwise `org/name[@rev]` downloaded from the Hub. Returns the
/// directory to read and the source to record (`org/name@<commit>` for Hub models).
pub fn resolve_model(model: &std::path::Path) -> anyhow::Result<(PathBuf, String)> {
    let text = model.to_string_lossy();
    if model.exists() {
        return Ok((model.to_path_buf(), text.into_owned()));
    }
    let Some(r) = tenpak::hub::ModelRef::parse(&text) else {
        anyhow::bail!(
            "{} does not exist (and is not a Hub model id like org/name or org/name@revision)",
            model.display()
        );
    };
    let hub = tenpak::hub::Hub::new(&tenpak::hub::HubConfig::from_env())?;
    let pb = super::progress::spinner(&format!(
        "downloading {}@{} from {}",
        r.repo,
        r.revision_or_main(),
        hub.endpoint()
    ));
    let snap = tenpak::hub::block_on(hub.download_model(&r.repo, r.revision_or_main()))??;
    pb.finish_and_clear();
    eprintln!(
        "{}@{}: {} file(s) in {}",
        r.repo,
        snap.commit,
        snap.files.len(),
        snap.dir.display()
    );
    Ok((snap.dir, format!("{}@{}", r.repo, snap.commit)))
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let mut opts = a.codecs.options(u64::MAX)?;
    let keys = a
        .sign
        .iter()
        .map(|p| sign::load_signing_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    let key_refs: Vec<_> = keys.iter().collect();
    let (model_path, source) = resolve_model(&a.model)?;
    if let Some(base) = &a.delta.base {
        return run_delta(&a, base, &model_path, &source, &key_refs, opts);
    }
    if tenpak::delta::adapter::is_adapter_dir(&model_path) {
        let named = tenpak::delta::adapter::read_config(&model_path)?.base;
        anyhow::bail!(
            "{} is a PEFT adapter: pack it against its base artifact with --base{}",
            model_path.display(),
            named
                .map(|b| format!(" (its config names {b})"))
                .unwrap_or_default()
        );
    }
    a.codecs
        .attach_calibration(&mut opts, &model_path, &a.output)?;
    let src = tenpak::models::open(&model_path, a.codecs.gguf_dtype)
        .with_context(|| format!("opening {}", model_path.display()))?;
    let selection = a.codecs.describe(&opts);
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

/// Opens `--base`: a `.tnpk` (path or URL) as is; any other model packed losslessly to
/// `OUTPUT.base.tnpk` first.
fn open_base(
    base: &str,
    output: &std::path::Path,
    gguf_dtype: tenpak::dtype::DType,
    keys: &[&ed25519_dalek::SigningKey],
) -> anyhow::Result<tenpak::artifact::Artifact> {
    let is_artifact = base.starts_with("http://")
        || base.starts_with("https://")
        || base.to_ascii_lowercase().ends_with(".tnpk");
    if is_artifact {
        return tenpak::artifact::Artifact::open_location(base)
            .with_context(|| format!("opening the base {base}"));
    }
    let (path, source) = resolve_model(std::path::Path::new(base))?;
    let src = tenpak::models::open(&path, gguf_dtype)
        .with_context(|| format!("opening the base {}", path.display()))?;
    let mut name = output.as_os_str().to_owned();
    name.push(".base.tnpk");
    let out = std::path::PathBuf::from(name);
    let pb = super::progress::bar(src.tensors().len() as u64, "base");
    let w = pack::pack_raw(src.as_ref(), &out, keys, &[("source", &source)], &|t| {
        pb.set_message(t.to_string());
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    eprintln!(
        "packed the base {source} losslessly -> {} ({}); publish it beside the delta",
        out.display(),
        w.digest
    );
    Ok(tenpak::artifact::Artifact::open_location(
        &out.to_string_lossy(),
    )?)
}

fn run_delta(
    a: &Args,
    base: &str,
    model_path: &std::path::Path,
    source: &str,
    keys: &[&ed25519_dalek::SigningKey],
    mut opts: tenpak::quantize::Options,
) -> anyhow::Result<()> {
    let base_art = open_base(base, &a.output, a.codecs.gguf_dtype, keys)?;
    let base_location = base.to_string();
    if tenpak::delta::adapter::is_adapter_dir(model_path) {
        let n = base_art.manifest().tensors.len() as u64;
        let pb = super::progress::bar(n, "adapter");
        let report = tenpak::delta::pack_adapter(
            model_path,
            &base_art,
            &a.output,
            keys,
            &[("source", source), ("base_location", &base_location)],
            &|pass, t| {
                pb.set_message(format!("{pass} {t}"));
                pb.inc(1);
            },
        )?;
        pb.finish_and_clear();
        return print_delta_report(a, &report);
    }
    a.codecs
        .attach_calibration(&mut opts, model_path, &a.output)?;
    let src = tenpak::models::open(model_path, a.codecs.gguf_dtype)
        .with_context(|| format!("opening {}", model_path.display()))?;
    let dopts = tenpak::delta::DeltaOptions {
        mode: a.delta.delta,
        bits_per_weight: a.delta.delta_bits_per_weight,
        entropy: tenpak::delta::choose::Entropy {
            level: a.delta.delta_level,
            layout: a.delta.delta_exact_layout.into(),
        },
        grid_refit: a.delta.delta_grid_refit,
        calib: opts.calib.clone(),
    };
    let passes = if dopts.mode.allocates() { 2 } else { 1 };
    let pb = super::progress::bar(src.tensors().len() as u64 * passes, "delta");
    let report = tenpak::delta::pack_delta(
        src.as_ref(),
        &base_art,
        &a.output,
        &dopts,
        keys,
        &[("source", source), ("base_location", &base_location)],
        &|pass, t| {
            pb.set_message(format!("{pass} {t}"));
            pb.inc(1);
        },
    )?;
    pb.finish_and_clear();
    print_delta_report(a, &report)
}

/// Prints a delta's report (per tensor, then totals), or its JSON.
fn print_delta_report(a: &Args, report: &tenpak::delta::DeltaReport) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<52} {:<26} {:>11} {:>7} {:>9} {:>9}",
        "tensor", "stored as", "bytes", "bpw", "rel err", "Δ err"
    )?;
    for t in &report.tensors {
        writeln!(
            out,
            "{:<52} {:<26} {:>11} {:>7.3} {:>9.2e} {:>9.2e}",
            t.name, t.label, t.bytes, t.bits_per_weight, t.rel_error, t.rel_delta_error
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "delta ({:?})             {:>14}   bytes of tensor encodings; {} of {} tensors unchanged (references)",
        report.mode, report.delta_bytes, report.references, report.tensors.len()
    )?;
    writeln!(
        out,
        "delta file                {:>14}   bytes = {:.4} bits per fine-tune weight, every byte counted",
        report.file_bytes, report.bits_per_weight
    )?;
    writeln!(
        out,
        "vs the fine-tune          {:>14}   bytes in its own dtype: {:.4}x",
        report.source_bytes, report.ratio_vs_source
    )?;
    writeln!(
        out,
        "vs packed on its own      {:>14}   bytes with the base's codecs: {:.4}x",
        report.full_bytes, report.ratio_vs_full
    )?;
    writeln!(out, "base                      {}", report.base)?;
    writeln!(out, "digest                    {}", report.digest)?;
    writeln!(
        out,
        "wrote {} in {:.1} s ({:.1} MB/s of fine-tune weights)",
        a.output.display(),
        report.encode_seconds,
        report.source_bytes as f64 / 1e6 / report.encode_seconds
    )?;
    Ok(())
}

fn parse_refit(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s} is not a non-negative ratio")),
    }
}

/// `--delta-exact-layout`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExactLayout {
    /// Context-coded Huffman (format 1.4).
    Coded,
    /// zstd byte planes (format 1.3).
    Planes,
}

impl From<ExactLayout> for tenpak::codec::delta_exact::Layout {
    fn from(l: ExactLayout) -> Self {
        match l {
            ExactLayout::Coded => Self::Coded,
            ExactLayout::Planes => Self::Planes,
        }
    }
}
