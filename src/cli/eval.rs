//! `tenpak eval`: perplexity on a text file, optionally beside a second model on exactly
//! the same token windows.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use tenpak::dtype::DType;
use tenpak::runtime::{perplexity, Model, Perplexity, Tokenizer, Windows};

/// Arguments of `tenpak eval`.
///
/// Window rule (the one the reference perplexities use): the text is tokenized once
/// without special tokens; the first --max-tokens tokens are cut into windows of --ctx
/// tokens every --stride tokens (a trailing partial window is dropped). Where the
/// tokenizer adds a BOS token by default (Gemma) each window is fed as BOS + ctx tokens
/// and all ctx tokens are scored; otherwise the window is fed as is and its last ctx-1
/// tokens are scored. With --stride < --ctx a window scores only tokens not scored before.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The model: HF directory, .gguf, .tnpk or .tnpk URL.
    pub model: PathBuf,
    /// UTF-8 text to evaluate on.
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Tokens between window starts (default: --ctx, non-overlapping).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Use at most this many tokens of the text.
    #[arg(long, default_value_t = 32768)]
    pub max_tokens: usize,
    /// Prepend BOS to each window: auto (if the tokenizer adds one by default), yes, no.
    #[arg(long, default_value = "auto", value_parser = ["auto", "yes", "no"])]
    pub bos: String,
    /// The base artifact (file or URL) when MODEL is a delta `.tnpk` (`pack --base`).
    #[arg(long)]
    pub base: Option<String>,
    /// A second model evaluated on the same windows (e.g. the quantized one).
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// The base artifact of --compare, when that is a delta.
    #[arg(long, requires = "compare")]
    pub compare_base: Option<String>,
    /// Print one JSON object: ppl, tokens, tokens_per_s (and ppl_compare, delta_pct).
    #[arg(long)]
    pub json: bool,
}

/// Opens a model, applying a delta to `base` where given.
fn open_model(
    path: &std::path::Path,
    base: Option<&str>,
) -> anyhow::Result<Box<dyn tenpak::source::TensorSource>> {
    Ok(match base {
        Some(b) => Box::new(
            tenpak::delta::DeltaSource::open(&path.to_string_lossy(), b)
                .with_context(|| format!("opening {} with base {b}", path.display()))?,
        ),
        None => tenpak::models::open(path, DType::BF16)
            .with_context(|| format!("opening {}", path.display()))?,
    })
}

fn eval_one(
    path: &std::path::Path,
    base: Option<&str>,
    ids: &[u32],
    bos: Option<u32>,
    w: Windows,
    what: &str,
) -> anyhow::Result<Perplexity> {
    let src = open_model(path, base)?;
    let model = Model::load(src.as_ref()).with_context(|| format!("loading {}", path.display()))?;
    drop(src);
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} windows ({{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let r = perplexity(&model, ids, bos, w, &|k, n| {
        pb.set_length(n as u64);
        pb.set_position(k as u64);
    })?;
    pb.finish_and_clear();
    Ok(r)
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading {}", a.text.display()))?;
    let src = open_model(&a.model, a.base.as_deref())?;
    let tok_bytes = tenpak::source::side_files(src.as_ref())?
        .into_iter()
        .find(|(n, _)| n == "tokenizer.json")
        .map(|(_, b)| b)
        .with_context(|| format!("{} has no tokenizer.json", a.model.display()))?;
    drop(src);
    let tok = Tokenizer::from_bytes(&tok_bytes)?;
    let ids = tok.encode(&text)?;
    let bos = match a.bos.as_str() {
        "yes" => Some(
            tok.default_bos()
                .context("the tokenizer adds no BOS token by default; use --bos no or auto")?,
        ),
        "no" => None,
        _ => tok.default_bos(),
    };
    let w = Windows {
        ctx: a.ctx,
        stride: a.stride.unwrap_or(a.ctx),
        max_tokens: a.max_tokens,
    };
    if a.ctx == 0 {
        bail!("--ctx must be positive");
    }
    let base = eval_one(&a.model, a.base.as_deref(), &ids, bos, w, "eval")?;
    let cmp = match &a.compare {
        Some(p) => Some(eval_one(
            p,
            a.compare_base.as_deref(),
            &ids,
            bos,
            w,
            "compare",
        )?),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let mut v = serde_json::json!({
            "model": a.model.display().to_string(),
            "text": a.text.display().to_string(),
            "ppl": base.ppl, "nll_sum": base.nll_sum, "tokens": base.tokens, "windows": base.windows,
            "bos_prepended": base.bos_prepended, "tokens_per_s": base.tokens_per_s, "seconds": base.seconds,
            "ctx": w.ctx, "stride": w.stride,
        });
        if let Some(c) = &cmp {
            v["compare"] = serde_json::json!(a.compare.as_ref().map(|p| p.display().to_string()));
            v["ppl_compare"] = serde_json::json!(c.ppl);
            v["tokens_per_s_compare"] = serde_json::json!(c.tokens_per_s);
            v["delta_pct"] = serde_json::json!((c.ppl / base.ppl - 1.0) * 100.0);
        }
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{}: PPL {:.4} over {} tokens ({} windows of {}{}), {:.0} tokens/s",
        a.model.display(),
        base.ppl,
        base.tokens,
        base.windows,
        w.ctx,
        if base.bos_prepended { " + BOS" } else { "" },
        base.tokens_per_s
    )?;
    if let (Some(c), Some(p)) = (&cmp, &a.compare) {
        writeln!(
            out,
            "{}: PPL {:.4}, {:.0} tokens/s",
            p.display(),
            c.ppl,
            c.tokens_per_s
        )?;
        writeln!(out, "delta: {:+.3}%", (c.ppl / base.ppl - 1.0) * 100.0)?;
    }
    Ok(())
}
