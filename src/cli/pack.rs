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
