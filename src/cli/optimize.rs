//! `tenpak optimize`: measure compression candidates on a model and pick the cheapest
//! (hardware, candidate) that meets the constraints (`tenpak::optimize`,
//! `docs/OPTIMIZE.md`).
//!
//! The measuring ([`tenpak::optimize::study`], shared with the registry's `/optimize`):
//! each candidate is packed (cached by model digest + candidate + calibration text), then
//! measured: size and bits/weight, perplexity on exactly the source's windows, and the
//! time to load (verify + decode) it here. Measurements are cached beside the artifacts
//! (keyed also by the evaluation text and windows), so a rerun costs nothing, and the
//! results file is rewritten after every candidate, so an interrupted run resumes. Here:
//! the arguments, progress bars, the table and the plot file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tenpak::dtype::DType;
use tenpak::optimize::study::{self, Event, Study, Text};
use tenpak::optimize::{self, Constraints, Hardware};
use tenpak::runtime::{Tokenizer, Windows};

/// Arguments of `tenpak optimize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: HF directory or .gguf (not needed with --list).
    #[arg(required_unless_present = "list")]
    pub model: Option<PathBuf>,
    /// UTF-8 text the perplexities are measured on (the same windows for every candidate).
    #[arg(long, required_unless_present = "list")]
    pub text: Option<PathBuf>,
    /// Calibration text for the candidates that need it (AWQ, GPTQ, VQ, tenpak_x);
    /// without it they are skipped, and said so. Use another text than --text.
    #[arg(long)]
    pub calib_text: Option<PathBuf>,
    /// Hardware to consider, comma-separated (default: all of `--list`'s).
    #[arg(long, value_delimiter = ',')]
    pub hardware: Vec<String>,
    /// A JSON list of hardware entries (name, usd_per_hour, memory_gb, bandwidth_gb_s,
    /// efficiency_dense, efficiency_compressed, source) replacing or adding to the table.
    #[arg(long)]
    pub hardware_file: Option<PathBuf>,
    /// Largest perplexity increase over the source, in percent.
    #[arg(long)]
    pub max_ppl_delta: Option<f64>,
    /// Largest estimated milliseconds per token (batch 1).
    #[arg(long)]
    pub max_latency: Option<f64>,
    /// Fewest estimated tokens per second (batch 1).
    #[arg(long)]
    pub min_throughput: Option<f64>,
    /// Candidates to measure, comma-separated (default: all of `--list`'s).
    #[arg(long, value_delimiter = ',')]
    pub candidates: Vec<String>,
    /// Results (JSON), rewritten after each candidate.
    #[arg(long, default_value = "optimize.json")]
    pub output: PathBuf,
    /// The Pareto plot (SVG); default: --output with .svg.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Where packed candidates and measurements are cached (default
    /// ~/.cache/tenpak/optimize).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Tokens of --text evaluated.
    #[arg(long, default_value_t = 8192)]
    pub max_tokens: usize,
    /// Print the candidates and the hardware table, then exit.
    #[arg(long)]
    pub list: bool,
}

/// A lock the progress callback shares with the main thread (a panic elsewhere leaves
/// the bar usable).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn list(hw: &[Hardware]) {
    println!("candidates (`--candidates a,b,c`):");
    for c in optimize::CANDIDATES {
        println!(
            "  {:<20} {}{}",
            c.name,
            c.about,
            if c.needs_calibration {
                " [needs --calib-text]"
            } else {
                ""
            }
        );
    }
    println!("\nhardware (`--hardware a,b`; --hardware-file to change or add):");
    for h in hw {
        println!(
            "  {:<8} ${:.2}/h, {:.0} GB, {:.0} GB/s, efficiency {:.2} dense / {:.2} compressed ({})",
            h.name,
            h.usd_per_hour,
            h.memory_gb,
            h.bandwidth_gb_s,
            h.efficiency_dense,
            h.efficiency_compressed,
            h.source
        );
    }
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let hw_all = study::hardware_measured_here(a.hardware_file.as_deref())?;
    if a.list {
        list(&hw_all);
        return Ok(());
    }
    let (Some(model), Some(text)) = (&a.model, &a.text) else {
        bail!("MODEL and --text are needed (or --list)");
    };
    let candidates = optimize::select(&a.candidates)?;
    let hw = optimize::pick_hardware(&hw_all, &a.hardware)?;
    let constraints = Constraints {
        max_ppl_delta_pct: a.max_ppl_delta,
        max_latency_ms: a.max_latency,
        min_tokens_per_s: a.min_throughput,
    };
    if let Err(tenpak::Error::InvalidOption { option, reason }) =
        study::check_constraints(&constraints)
    {
        bail!("--{} {reason}", option.replace('_', "-"));
    }
    if a.ctx == 0 {
        bail!("--ctx must be positive");
    }
    let (model_path, _) = super::pack::resolve_model(model)?;
    let src = tenpak::models::open(&model_path, DType::BF16)?;
    let tok_bytes = tenpak::source::side_files(src.as_ref())?
        .into_iter()
        .find(|(n, _)| n == "tokenizer.json")
        .map(|(_, b)| b)
        .with_context(|| format!("{} has no tokenizer.json", model_path.display()))?;
    drop(src);
    let tok = Tokenizer::from_bytes(&tok_bytes)?;
    let read = |p: &Path| -> anyhow::Result<Text> {
        let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        Ok(Text::new(p.display().to_string(), &s, tok.encode(&s)?))
    };
    let cache = a.cache.clone().unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("tenpak/optimize")
    });
    let st = Study {
        model_label: model.display().to_string(),
        model_digest: study::model_digest(&model_path)?,
        model: model_path,
        text: read(text)?,
        bos: tok.default_bos(),
        windows: Windows {
            ctx: a.ctx,
            stride: a.ctx,
            max_tokens: a.max_tokens,
        },
        calib: a.calib_text.as_deref().map(read).transpose()?,
        cache,
        candidates,
        hardware: hw,
        constraints,
    };
    let pb = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    let current = std::sync::Mutex::new(String::new());
    let on = |e: Event<'_>| match e {
        Event::Candidate { name, .. } => {
            *lock(&current) = name.to_string();
            if let Some(b) = lock(&pb).take() {
                b.finish_and_clear();
            }
        }
        Event::Step { what, done, total } => {
            let mut b = lock(&pb);
            let label = format!("{}: {what}", lock(&current));
            let bar = b.get_or_insert_with(|| super::progress::bar(0, &label));
            if bar.message() != label {
                bar.set_message(label);
            }
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        Event::Measured { m, cached } => {
            if let Some(b) = lock(&pb).take() {
                b.finish_and_clear();
            }
            eprintln!(
                "{:<20} {:>7.3} bits/weight  PPL {:>9.4}  load {:>6.2} s{}",
                m.candidate,
                m.bits_per_weight,
                m.ppl,
                m.load_s,
                if cached { "  (cached)" } else { "" }
            );
        }
    };
    let outcome = st
        .run(&on, &mut |r| {
            let bytes = serde_json::to_vec_pretty(r).map_err(|e| tenpak::Error::InvalidOption {
                option: "--output",
                reason: e.to_string(),
            })?;
            tenpak::source::write_atomic(&a.output, &bytes)
        })
        .with_context(|| format!("candidate {}", lock(&current)))?;
    if let Some(b) = lock(&pb).take() {
        b.finish_and_clear();
    }
    let (decision, measured) = (&outcome.decision, &outcome.report.rows);
    let plot = a
        .plot
        .clone()
        .unwrap_or_else(|| a.output.with_extension("svg"));
    tenpak::source::write_atomic(&plot, outcome.report.plot_svg().as_bytes())?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:>10} {:>8} {:>10} {:>8}  best hardware (est. tokens/s, $/1M tokens) | verdict",
        "candidate", "bytes", "bits/w", "PPL", "delta"
    )?;
    for r in &decision.rows {
        writeln!(
            out,
            "{:<20} {:>10} {:>8.3} {:>10.4} {:>+7.2}%  {} | {}",
            r.measured.candidate,
            r.measured.weight_bytes,
            r.measured.bits_per_weight,
            r.measured.ppl,
            r.ppl_delta_pct,
            r.cheapest_text(),
            r.verdict
        )?;
    }
    for k in &outcome.report.skipped {
        writeln!(out, "{:<20} skipped: {}", k.candidate, k.reason)?;
    }
    match (&decision.chosen, &decision.none_because) {
        (Some((c, h)), _) => writeln!(out, "chosen: {c} on {h} (estimates, see docs/OPTIMIZE.md)")?,
        (None, Some(why)) => writeln!(out, "{why}")?,
        (None, None) => {}
    }
    writeln!(
        out,
        "{} candidates measured ({} from the cache) in {:.1} s; results {} and plot {}",
        measured.len(),
        outcome.from_cache,
        outcome.seconds,
        a.output.display(),
        plot.display()
    )?;
    Ok(())
}
