//! `tenpak optimize`: measure compression candidates on a model and pick the cheapest
//! (hardware, candidate) that meets the constraints (`tenpak::optimize`,
//! `docs/OPTIMIZE.md`).
//!
//! Each candidate is packed (cached by model digest + candidate + calibration text), then
//! measured: size and bits/weight, perplexity on exactly the source's windows, and the
//! time to load (verify + decode) it here. Measurements are cached beside the artifacts
//! (keyed also by the evaluation text and windows), so a rerun costs nothing, and the
//! results file is rewritten after every candidate, so an interrupted run resumes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tenpak::dtype::DType;
use tenpak::optimize::{self, Constraints, Hardware, Measured};
use tenpak::runtime::{perplexity, Model, Tokenizer, Windows};
use tenpak::source::TensorSource;

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

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, streamed.
fn file_digest(p: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex(h.finalize()))
}

/// The model's digest: its file's sha256, or for a directory the sha256 of its files'
/// names and digests (weights, config, tokenizer).
fn model_digest(p: &Path) -> anyhow::Result<String> {
    if p.is_file() {
        return file_digest(p);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(p)
        .with_context(|| format!("reading {}", p.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file())
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for f in names {
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(file_digest(&f)?.as_bytes());
    }
    Ok(hex(h.finalize()))
}

/// This machine's copy bandwidth, GB/s (the `cpu` entry's bandwidth).
fn copy_bandwidth() -> f64 {
    let n = 64 << 20;
    let a = vec![1u8; n];
    let mut b = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        b.copy_from_slice(&a);
        std::hint::black_box(&b);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    // Bytes read + written.
    2.0 * n as f64 / best / 1e9
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

/// Perplexity of a model source on the windows, with a progress bar.
fn ppl(
    src: &dyn TensorSource,
    ids: &[u32],
    bos: Option<u32>,
    w: Windows,
    what: &str,
) -> anyhow::Result<(f64, usize)> {
    let model = Model::load(src).with_context(|| format!("loading {what}"))?;
    let pb = super::progress::bar(0, &format!("{what}: PPL"));
    let r = perplexity(&model, ids, bos, w, &|k, n| {
        pb.set_length(n as u64);
        pb.set_position(k as u64);
    })?;
    pb.finish_and_clear();
    Ok((r.ppl, r.tokens))
}

/// Seconds to read every tensor of `src` as f32 (open included by the caller's timer).
fn load_all(src: &dyn TensorSource) -> anyhow::Result<u64> {
    let mut n = 0u64;
    for m in src.tensors() {
        n += src.read_f32(&m.name)?.len() as u64;
    }
    Ok(n)
}

struct Ctx<'a> {
    model: &'a Path,
    ids: Vec<u32>,
    bos: Option<u32>,
    w: Windows,
    dir: PathBuf,
    eval_key: String,
    calib: Option<(PathBuf, String)>,
}

/// Measures one candidate (or reads its cached measurement).
fn measure(c: &optimize::Candidate, x: &Ctx<'_>) -> anyhow::Result<(Measured, bool)> {
    let calib_key = match (&x.calib, c.needs_calibration) {
        (Some((_, d)), true) => d[..12].to_string(),
        _ => "nocal".into(),
    };
    let json = x
        .dir
        .join(format!("{}.{calib_key}.{}.json", c.name, &x.eval_key[..16]));
    if let Ok(bytes) = std::fs::read(&json) {
        if let Ok(m) = serde_json::from_slice::<Measured>(&bytes) {
            return Ok((m, true));
        }
    }
    let Some(mut opts) = c.options() else {
        // The source itself.
        let t0 = Instant::now();
        let src = tenpak::models::open(x.model, DType::BF16)?;
        let weights = load_all(src.as_ref())?;
        let load_s = t0.elapsed().as_secs_f64();
        let weight_bytes: u64 = src
            .tensors()
            .iter()
            .map(|m| (m.numel() * m.dtype.size()) as u64)
            .sum();
        let (p, tokens) = ppl(src.as_ref(), &x.ids, x.bos, x.w, "source")?;
        let m = Measured {
            candidate: c.name.into(),
            weight_bytes,
            file_bytes: 0,
            weights,
            bits_per_weight: weight_bytes as f64 * 8.0 / weights.max(1) as f64,
            ppl: p,
            tokens,
            load_s,
            pack_s: 0.0,
        };
        tenpak::source::write_atomic(&json, &serde_json::to_vec_pretty(&m)?)?;
        return Ok((m, false));
    };
    let tnpk = x.dir.join(format!("{}.{calib_key}.tnpk", c.name));
    let mut pack_s = 0.0;
    if !tnpk.exists() {
        if let (true, Some((text, d))) = (c.needs_calibration, &x.calib) {
            let stats = x.dir.join(format!("calib.{}.stats.safetensors", &d[..12]));
            if !stats.exists() {
                let t0 = Instant::now();
                let tokens = super::calibrate::calibrate(
                    x.model,
                    text,
                    32,
                    512,
                    super::calibrate::DEFAULT_XTX_MAX_WIDTH,
                    &stats,
                )?;
                eprintln!(
                    "calibrated on {tokens} tokens of {} in {:.1} s",
                    text.display(),
                    t0.elapsed().as_secs_f64()
                );
            }
            opts.calib = Some(std::sync::Arc::new(tenpak::calib::Calib::open(
                &stats,
                tenpak::codec::gptq::DEFAULT_DAMP,
            )?));
        }
        let src = tenpak::models::open(x.model, DType::BF16)?;
        let pb = super::progress::bar(src.tensors().len() as u64, &format!("{}: pack", c.name));
        let t0 = Instant::now();
        let tmp = x.dir.join(format!(".{}.{calib_key}.tnpk.partial", c.name));
        let packed = tenpak::artifact::pack::pack(
            src.as_ref(),
            &tmp,
            &opts,
            &[],
            &[
                ("source", &x.model.display().to_string()),
                ("selection", c.about),
            ],
            &|_| pb.inc(1),
        );
        pb.finish_and_clear();
        if let Err(e) = packed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("packing candidate {}", c.name));
        }
        std::fs::rename(&tmp, &tnpk).with_context(|| format!("renaming to {}", tnpk.display()))?;
        pack_s = t0.elapsed().as_secs_f64();
    }
    let t0 = Instant::now();
    let art = tenpak::artifact::Artifact::open(Box::new(
        tenpak::artifact::source::LocalFile::open(&tnpk)?,
    ))?;
    let all: Vec<_> = art.manifest().tensors.iter().collect();
    let mut weights = 0u64;
    art.for_each_encoded(&all, |t, bytes| {
        weights += art.decode(t, &bytes)?.len() as u64;
        Ok(())
    })?;
    let load_s = t0.elapsed().as_secs_f64();
    let weight_bytes: u64 = all.iter().map(|t| t.encoded_length).sum();
    let file_bytes = std::fs::metadata(&tnpk)?.len();
    let src = tenpak::models::open(&tnpk, DType::BF16)?;
    let (p, tokens) = ppl(src.as_ref(), &x.ids, x.bos, x.w, c.name)?;
    let m = Measured {
        candidate: c.name.into(),
        weight_bytes,
        file_bytes,
        weights,
        bits_per_weight: weight_bytes as f64 * 8.0 / weights.max(1) as f64,
        ppl: p,
        tokens,
        load_s,
        pack_s,
    };
    tenpak::source::write_atomic(&json, &serde_json::to_vec_pretty(&m)?)?;
    Ok((m, false))
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let mut hw_all = optimize::hardware_with_overrides(a.hardware_file.as_deref())?;
    if let Some(cpu) = hw_all.iter_mut().find(|h| h.name == "cpu") {
        if a.hardware_file.is_none() || cpu.source.contains("measured copy bandwidth") {
            cpu.bandwidth_gb_s = copy_bandwidth();
            cpu.source = format!(
                "this machine: {:.1} GB/s measured copy bandwidth (read + write); price assumed",
                cpu.bandwidth_gb_s
            );
        }
    }
    if a.list {
        list(&hw_all);
        return Ok(());
    }
    let (Some(model), Some(text)) = (&a.model, &a.text) else {
        bail!("MODEL and --text are needed (or --list)");
    };
    let candidates = optimize::select(&a.candidates)?;
    let hw = optimize::pick_hardware(&hw_all, &a.hardware)?;
    for (v, what) in [
        (a.max_ppl_delta, "--max-ppl-delta"),
        (a.max_latency, "--max-latency"),
        (a.min_throughput, "--min-throughput"),
    ] {
        if v.is_some_and(|v| !v.is_finite() || (what != "--max-ppl-delta" && v <= 0.0)) {
            bail!("{what} must be a positive number");
        }
    }
    if a.ctx == 0 {
        bail!("--ctx must be positive");
    }
    let constraints = Constraints {
        max_ppl_delta_pct: a.max_ppl_delta,
        max_latency_ms: a.max_latency,
        min_tokens_per_s: a.min_throughput,
    };
    let (model_path, _) = super::pack::resolve_model(model)?;
    let text_s =
        std::fs::read_to_string(text).with_context(|| format!("reading {}", text.display()))?;
    let src = tenpak::models::open(&model_path, DType::BF16)?;
    let tok_bytes = tenpak::source::side_files(src.as_ref())?
        .into_iter()
        .find(|(n, _)| n == "tokenizer.json")
        .map(|(_, b)| b)
        .with_context(|| format!("{} has no tokenizer.json", model_path.display()))?;
    drop(src);
    let tok = Tokenizer::from_bytes(&tok_bytes)?;
    let ids = tok.encode(&text_s)?;
    let w = Windows {
        ctx: a.ctx,
        stride: a.ctx,
        max_tokens: a.max_tokens,
    };
    let digest = model_digest(&model_path)?;
    let text_digest = hex(Sha256::digest(text_s.as_bytes()));
    let eval_key = hex(Sha256::digest(
        format!("{text_digest}/{}/{}", a.ctx, a.max_tokens).as_bytes(),
    ));
    let calib = a
        .calib_text
        .as_ref()
        .map(|p| Ok::<_, anyhow::Error>((p.clone(), file_digest(p)?)))
        .transpose()?;
    let cache = a.cache.clone().unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("tenpak/optimize")
    });
    let dir = cache.join(&digest[..16]);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let x = Ctx {
        model: &model_path,
        ids,
        bos: tok.default_bos(),
        w,
        dir,
        eval_key,
        calib,
    };
    let t0 = Instant::now();
    let mut measured: Vec<Measured> = vec![];
    let mut skipped: Vec<(String, String)> = vec![];
    let mut from_cache = 0;
    // The source first: every delta is against it.
    let mut order = vec![optimize::CANDIDATES[0]];
    order.extend(candidates.iter().filter(|c| c.name != "source").copied());
    let write = |measured: &[Measured],
                 skipped: &[(String, String)],
                 done: bool|
     -> anyhow::Result<serde_json::Value> {
        let decision = optimize::decide(measured, &hw, &constraints)?;
        let v = serde_json::json!({
            "model": model.display().to_string(),
            "model_digest": format!("sha256:{digest}"),
            "text": text.display().to_string(),
            "text_digest": format!("sha256:{text_digest}"),
            "calib_text": x.calib.as_ref().map(|(p, d)| serde_json::json!({"path": p.display().to_string(), "digest": format!("sha256:{d}")})),
            "windows": {"ctx": a.ctx, "max_tokens": a.max_tokens, "bos": x.bos.is_some()},
            "constraints": constraints,
            "hardware": hw,
            "estimates_are": "estimates from bytes moved per token, the hardware's bandwidth and efficiency factors (docs/OPTIMIZE.md), not measurements on that hardware",
            "complete": done,
            "rows": decision.rows,
            "skipped": skipped.iter().map(|(c, r)| serde_json::json!({"candidate": c, "reason": r})).collect::<Vec<_>>(),
            "chosen": decision.chosen.as_ref().map(|(c, h)| serde_json::json!({"candidate": c, "hardware": h})),
            "none_because": decision.none_because,
        });
        tenpak::source::write_atomic(&a.output, &serde_json::to_vec_pretty(&v)?)?;
        Ok(v)
    };
    for c in &order {
        if c.needs_calibration && x.calib.is_none() {
            skipped.push((c.name.into(), "needs calibration: add --calib-text".into()));
            continue;
        }
        let (m, cached) = measure(c, &x).with_context(|| format!("candidate {}", c.name))?;
        from_cache += usize::from(cached);
        eprintln!(
            "{:<20} {:>7.3} bits/weight  PPL {:>9.4}  load {:>6.2} s{}",
            m.candidate,
            m.bits_per_weight,
            m.ppl,
            m.load_s,
            if cached { "  (cached)" } else { "" }
        );
        measured.push(m);
        write(&measured, &skipped, false)?;
    }
    write(&measured, &skipped, true)?;
    let decision = optimize::decide(&measured, &hw, &constraints)?;
    let plot = a
        .plot
        .clone()
        .unwrap_or_else(|| a.output.with_extension("svg"));
    let title = format!(
        "{}: bits/weight vs PPL change ({} tokens of {})",
        model.file_name().unwrap_or_default().to_string_lossy(),
        measured.first().map_or(0, |m| m.tokens),
        text.file_name().unwrap_or_default().to_string_lossy()
    );
    tenpak::source::write_atomic(
        &plot,
        optimize::plot::pareto_svg(&decision, &title).as_bytes(),
    )?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:>10} {:>8} {:>10} {:>8}  best hardware (est. tokens/s, $/1M tokens) | verdict",
        "candidate", "bytes", "bits/w", "PPL", "delta"
    )?;
    for r in &decision.rows {
        let best = r
            .estimates
            .iter()
            .filter(|e| e.fits)
            .min_by(|p, q| p.usd_per_m_tokens.total_cmp(&q.usd_per_m_tokens));
        writeln!(
            out,
            "{:<20} {:>10} {:>8.3} {:>10.4} {:>+7.2}%  {} | {}",
            r.measured.candidate,
            r.measured.weight_bytes,
            r.measured.bits_per_weight,
            r.measured.ppl,
            r.ppl_delta_pct,
            best.map_or("fits nowhere".into(), |e| format!(
                "{} ({:.0}, ${:.4})",
                e.hardware, e.tokens_per_s, e.usd_per_m_tokens
            )),
            r.verdict
        )?;
    }
    for (c, r) in &skipped {
        writeln!(out, "{c:<20} skipped: {r}")?;
    }
    match (&decision.chosen, &decision.none_because) {
        (Some((c, h)), _) => writeln!(out, "chosen: {c} on {h} (estimates, see docs/OPTIMIZE.md)")?,
        (None, Some(why)) => writeln!(out, "{why}")?,
        (None, None) => {}
    }
    writeln!(
        out,
        "{} candidates measured ({from_cache} from the cache) in {:.1} s; results {} and plot {}",
        measured.len(),
        t0.elapsed().as_secs_f64(),
        a.output.display(),
        plot.display()
    )?;
    Ok(())
}
