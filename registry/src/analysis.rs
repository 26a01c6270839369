//! Analysis jobs: `POST /evaluate` (perplexity of a Hub model, a stored artifact or a
//! `.tnpk` URL on a text, optionally beside the model it was packed from on the same
//! windows) and `POST /optimize` (the cost optimizer's study of a Hub model:
//! [`tenpak::optimize::study`], the same code as `tenpak optimize`). They run in the
//! job queue like compress jobs (kinds `evaluate` and `optimize`, leases, retries,
//! `/jobs`), publish nothing, and keep their result (JSON) with the job.
//!
//! Texts are named (configured `texts`, `eval_text` as `eval`) or uploaded in the
//! request; either way the bytes are copied to `texts/<sha256>.txt` in the data dir when
//! the job is made, so the job evaluates exactly the text it was asked for. A model's
//! tokenizer is untrusted: it runs in a child process under a time limit
//! ([`crate::tokenize`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tenpak::dtype::DType;
use tenpak::optimize::{self, study};
use tenpak::runtime::{perplexity, Model, Windows};
use tenpak::source::TensorSource;
use utoipa::ToSchema;

use crate::pipeline::{Ctx, JobError};

/// Largest text a request may upload or name (bytes).
pub const MAX_TEXT_BYTES: usize = 8 << 20;
/// Most tokens one evaluation scores (samples × ctx).
pub const MAX_EVAL_TOKENS: usize = 1 << 17;
/// Default windows of `POST /evaluate`.
pub const DEFAULT_SAMPLES: usize = 8;
/// Default tokens per window.
pub const DEFAULT_CTX: usize = 512;
/// Default tokens of the text `POST /optimize` evaluates.
pub const DEFAULT_OPTIMIZE_TOKENS: usize = 8192;

/// A text a job evaluates on: its label and the sha256 of its bytes (stored as
/// `texts/<sha256>.txt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextRef {
    /// `NAME` (a configured text) or `upload`.
    pub name: String,
    /// sha256 hex of the bytes.
    pub sha256: String,
    /// Bytes.
    pub bytes: u64,
}

/// What is evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// A Hub model at an exact commit.
    Model {
        /// `owner/name`.
        repo: String,
        /// The commit.
        commit: String,
    },
    /// An artifact this registry stores.
    Artifact {
        /// Its id (manifest sha256 hex).
        id: String,
    },
    /// A `.tnpk` by URL (a host in `evaluate_url_hosts`).
    Url {
        /// The URL.
        url: String,
    },
}

/// An evaluate job's request as stored with the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvaluateParams {
    /// What is evaluated.
    pub subject: Subject,
    /// The text.
    pub text: TextRef,
    /// Windows.
    pub samples: usize,
    /// Tokens per window.
    pub ctx: usize,
    /// Also evaluate the model the artifact was packed from, on the same windows.
    pub compare_source: bool,
}

/// An optimize job's request as stored with the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OptimizeParams {
    /// `owner/name`.
    pub repo: String,
    /// The commit.
    pub commit: String,
    /// The evaluation text.
    pub text: TextRef,
    /// The calibration text (candidates that need one are skipped without it).
    pub calib_text: Option<TextRef>,
    /// Candidates (empty: all).
    pub candidates: Vec<String>,
    /// Hardware (empty: all).
    pub hardware: Vec<String>,
    /// The constraints.
    #[schema(value_type = Object)]
    pub constraints: optimize::Constraints,
    /// Tokens per window.
    pub ctx: usize,
    /// Tokens of the text evaluated.
    pub max_tokens: usize,
}

/// One perplexity measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Measurement {
    /// What was evaluated (`owner/name@commit`, `artifact:ID` or the URL).
    pub model: String,
    /// Perplexity.
    pub ppl: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Windows.
    pub windows: usize,
    /// Tokens per second of the evaluation (this registry's CPU).
    pub tokens_per_s: f64,
}

/// An evaluate job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvaluateResult {
    /// The subject's perplexity (`ppl`, `tokens`, ...).
    #[serde(flatten)]
    pub measured: Measurement,
    /// The text.
    pub text: TextRef,
    /// Tokens per window.
    pub ctx: usize,
    /// Tokens between windows (= ctx).
    pub stride: usize,
    /// Whether BOS was prepended to each window (the tokenizer's default).
    pub bos_prepended: bool,
    /// With `compare_source`: the source model on the same windows.
    pub source: Option<Measurement>,
    /// With `compare_source`: (ppl / source ppl − 1) × 100.
    pub delta_pct: Option<f64>,
}

/// Stores `text` under `texts/` in the data dir (content-addressed) and returns its
/// reference.
pub fn store_text(data_dir: &Path, name: &str, text: &[u8]) -> std::io::Result<TextRef> {
    let sha = hex::encode(Sha256::digest(text));
    let dir = data_dir.join("texts");
    std::fs::create_dir_all(&dir)?;
    let p = dir.join(format!("{sha}.txt"));
    if !p.exists() {
        let tmp = dir.join(format!(".{sha}.partial"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &p)?;
    }
    Ok(TextRef {
        name: name.to_string(),
        sha256: sha,
        bytes: text.len() as u64,
    })
}

/// The stored text of a reference.
pub fn read_text(data_dir: &Path, t: &TextRef) -> Result<String, JobError> {
    let p = data_dir.join("texts").join(format!("{}.txt", t.sha256));
    let bytes = std::fs::read(&p)
        .map_err(|e| JobError::permanent(format!("the job's text {}: {e}", t.name)))?;
    if hex::encode(Sha256::digest(&bytes)) != t.sha256 {
        return Err(JobError::permanent(format!(
            "the stored text {} does not match its sha256",
            t.name
        )));
    }
    String::from_utf8(bytes).map_err(|_| JobError::permanent("the text is not UTF-8"))
}

/// The job's scratch directory.
pub fn scratch_dir(ctx: &Ctx, id: i64) -> PathBuf {
    ctx.settings.data_dir.join("work").join(format!("job-{id}"))
}

/// Downloads a Hub model (checking who may read it and its size first) and opens it.
fn open_hub_model(
    ctx: &Arc<Ctx>,
    rt: &tokio::runtime::Handle,
    repo: &str,
    commit: &str,
) -> Result<(PathBuf, String), JobError> {
    let access = rt.block_on(ctx.hub.access(repo, commit))?;
    if access.restricted() && !ctx.settings.allow_private {
        return Err(JobError::permanent(format!(
            "{repo} is {}: not evaluated (allow_private is off)",
            access.describe()
        )));
    }
    let listing: Vec<(String, u64)> = rt
        .block_on(ctx.hub.list_files_sized(repo, &access.commit))?
        .into_iter()
        .filter(|(f, _)| tenpak::hub::wanted(f))
        .collect();
    ctx.settings
        .download_limits
        .check(repo, &access.commit, &listing)?;
    let snap = rt.block_on(ctx.hub.download_model(repo, &access.commit))?;
    Ok((snap.dir, format!("{repo}@{}", access.commit)))
}

/// Opens an artifact at `location` (with its base's location when it is a delta).
fn open_artifact(location: &str, base: Option<&str>) -> Result<Box<dyn TensorSource>, JobError> {
    Ok(match base {
        None => Box::new(tenpak::artifact::ArtifactSource::open(location)?),
        Some(b) => Box::new(tenpak::delta::DeltaSource::open(location, b)?),
    })
}

/// Writes stored artifact `id` into `work` (and its base, when it is a delta, found in
/// the catalog by digest); returns the path and the base's path.
fn materialize(
    ctx: &Ctx,
    id: &str,
    work: &Path,
) -> Result<(PathBuf, Option<PathBuf>, String), JobError> {
    let row = ctx
        .store
        .artifact(id)
        .map_err(|e| JobError::new(e, true))?
        .ok_or_else(|| JobError::permanent(format!("no artifact {id}")))?;
    let path = work.join(format!("{id}.tnpk"));
    ctx.chunks
        .materialize(&row.pieces, &row.sha256, &path)
        .map_err(|e| JobError::new(e, true))?;
    let art = tenpak::artifact::Artifact::open_location(&path.display().to_string())?;
    art.verify_signature(&ctx.key.verifying_key())?;
    let base = match &art.manifest().base {
        None => None,
        Some(b) => {
            let base_id = b.digest.trim_start_matches("sha256:").to_string();
            let (p, _, _) = materialize(ctx, &base_id, work).map_err(|f| JobError {
                message: format!("the delta's base {base_id}: {}", f.message),
                ..f
            })?;
            Some(p)
        }
    };
    Ok((path, base, row.source))
}

/// Tokenizes `text` with the model's own tokenizer, in a child process under the
/// registry's time limit.
fn tokenize(
    ctx: &Ctx,
    src: &dyn TensorSource,
    text: &str,
    max_tokens: usize,
    work: &Path,
) -> Result<crate::tokenize::Tokenized, JobError> {
    let tok = tenpak::source::side_files(src)?
        .into_iter()
        .find(|(n, _)| n == "tokenizer.json")
        .map(|(_, b)| b)
        .ok_or_else(|| JobError::permanent("the model has no tokenizer.json"))?;
    let exe = std::env::current_exe()
        .map_err(|e| JobError::permanent(format!("the registry's binary: {e}")))?;
    crate::tokenize::isolated(
        &exe,
        &tok,
        crate::tokenize::prefix_for(text, max_tokens),
        &work.join("tokenize"),
        ctx.settings.tokenize_timeout,
    )
    .map_err(JobError::permanent)
}

/// Perplexity of `src` on the windows, reporting progress `lo..hi`.
fn measure(
    src: &dyn TensorSource,
    label: &str,
    ids: &[u32],
    bos: Option<u32>,
    w: Windows,
    progress: &dyn Fn(f64),
) -> Result<Measurement, JobError> {
    let model = Model::load(src)?;
    let r = perplexity(&model, ids, bos, w, &|k, n| {
        progress(k as f64 / n.max(1) as f64)
    })?;
    Ok(Measurement {
        model: label.to_string(),
        ppl: r.ppl,
        tokens: r.tokens,
        windows: r.windows,
        tokens_per_s: r.tokens_per_s,
    })
}

/// Runs an evaluate job (blocking: call it off the async threads).
pub fn evaluate(
    ctx: &Arc<Ctx>,
    rt: &tokio::runtime::Handle,
    id: i64,
    p: &EvaluateParams,
    stage: &(dyn Fn(&str, f64) + Sync),
) -> Result<EvaluateResult, JobError> {
    let work = scratch_dir(ctx, id);
    std::fs::create_dir_all(&work)
        .map_err(|e| JobError::new(format!("{}: {e}", work.display()), true))?;
    let text = read_text(&ctx.settings.data_dir, &p.text)?;
    stage("open", 0.02);
    let (src, label, source_of): (Box<dyn TensorSource>, String, Option<String>) = match &p.subject
    {
        Subject::Model { repo, commit } => {
            let (dir, label) = open_hub_model(ctx, rt, repo, commit)?;
            (tenpak::models::open(&dir, DType::BF16)?, label, None)
        }
        Subject::Artifact { id: aid } => {
            let (path, base, source) = materialize(ctx, aid, &work)?;
            let base = base.map(|b| b.display().to_string());
            (
                open_artifact(&path.display().to_string(), base.as_deref())?,
                format!("artifact:{aid}"),
                Some(source),
            )
        }
        Subject::Url { url } => {
            let art = tenpak::artifact::Artifact::open_location(url)?;
            if let Some(b) = &art.manifest().base {
                return Err(JobError::permanent(format!(
                    "{url} is a delta against {}: evaluate it by artifact_id (its base \
                     found in this registry), or evaluate its base",
                    b.digest
                )));
            }
            let source = art.manifest().metadata.get("source").cloned();
            // The artifact opened above serves the evaluation: its header and
            // manifest are fetched once.
            let src = tenpak::artifact::ArtifactSource::from_artifact(art, url)?;
            (Box::new(src) as Box<dyn TensorSource>, url.clone(), source)
        }
    };
    let max_tokens = p.samples * p.ctx;
    stage("tokenize", 0.05);
    let t = tokenize(ctx, src.as_ref(), &text, max_tokens, &work)?;
    let w = Windows {
        ctx: p.ctx,
        stride: p.ctx,
        max_tokens,
    };
    let share = if p.compare_source { 0.45 } else { 0.9 };
    stage("evaluate", 0.1);
    let measured = measure(src.as_ref(), &label, &t.ids, t.bos, w, &|f| {
        stage("evaluate", 0.1 + share * f)
    })?;
    drop(src);
    let (source, delta_pct) = if p.compare_source {
        let Some(s) = source_of else {
            return Err(JobError::permanent(
                "compare_source: the artifact names no source model",
            ));
        };
        let (repo, commit) = s.split_once('@').unwrap_or((s.as_str(), "main"));
        stage("download source", 0.55);
        let (dir, label) = open_hub_model(ctx, rt, repo, commit)?;
        let src = tenpak::models::open(&dir, DType::BF16)?;
        let m = measure(src.as_ref(), &label, &t.ids, t.bos, w, &|f| {
            stage("evaluate source", 0.55 + 0.45 * f)
        })?;
        let d = (measured.ppl / m.ppl - 1.0) * 100.0;
        (Some(m), Some(d))
    } else {
        (None, None)
    };
    let _ = std::fs::remove_dir_all(&work);
    Ok(EvaluateResult {
        measured,
        text: p.text.clone(),
        ctx: p.ctx,
        stride: p.ctx,
        bos_prepended: t.bos.is_some(),
        source,
        delta_pct,
    })
}

/// The optimizer's hardware table: the defaults, the configured changes, and the `cpu`
/// entry's bandwidth measured on this machine.
/// Built once per process (the settings do not change while it runs; the copy
/// bandwidth takes ~50 ms to measure).
pub fn hardware(ctx: &Ctx) -> Result<Vec<optimize::Hardware>, tenpak::Error> {
    static TABLE: std::sync::OnceLock<Vec<optimize::Hardware>> = std::sync::OnceLock::new();
    if let Some(t) = TABLE.get() {
        return Ok(t.clone());
    }
    let t = study::hardware_measured_here(ctx.settings.hardware_file.as_deref())?;
    Ok(TABLE.get_or_init(|| t).clone())
}

/// Runs an optimize job (blocking): the study of `tenpak optimize`, its report (the
/// CLI's JSON) returned; the cache (packed candidates, measurements) lives under
/// `optimize-cache/` in the data dir, so the same request again costs nothing.
pub fn optimize(
    ctx: &Arc<Ctx>,
    rt: &tokio::runtime::Handle,
    id: i64,
    p: &OptimizeParams,
    stage: &(dyn Fn(&str, f64) + Sync),
) -> Result<study::Report, JobError> {
    let work = scratch_dir(ctx, id);
    std::fs::create_dir_all(&work)
        .map_err(|e| JobError::new(format!("{}: {e}", work.display()), true))?;
    let text = read_text(&ctx.settings.data_dir, &p.text)?;
    let calib = p
        .calib_text
        .as_ref()
        .map(|c| read_text(&ctx.settings.data_dir, c))
        .transpose()?;
    stage("download", 0.01);
    let (dir, label) = open_hub_model(ctx, rt, &p.repo, &p.commit)?;
    let src = tenpak::models::open(&dir, DType::BF16)?;
    stage("tokenize", 0.03);
    let t = tokenize(ctx, src.as_ref(), &text, p.max_tokens, &work)?;
    let calib_ids = match (&calib, &p.calib_text) {
        (Some(c), Some(r)) => {
            let need = tenpak::calib::DEFAULT_SAMPLES * tenpak::calib::DEFAULT_SEQ * 4;
            let ct = tokenize(ctx, src.as_ref(), c, need, &work)?;
            Some(study::Text {
                label: r.name.clone(),
                digest: r.sha256.clone(),
                ids: ct.ids,
            })
        }
        _ => None,
    };
    drop(src);
    let hw_all = hardware(ctx)?;
    let st = study::Study {
        model_digest: study::model_digest(&dir)?,
        model: dir,
        model_label: label,
        text: study::Text {
            label: p.text.name.clone(),
            digest: p.text.sha256.clone(),
            ids: t.ids,
        },
        bos: t.bos,
        windows: Windows {
            ctx: p.ctx,
            stride: p.ctx,
            max_tokens: p.max_tokens,
        },
        calib: calib_ids,
        cache: ctx.settings.data_dir.join("optimize-cache"),
        candidates: optimize::select(&p.candidates)?,
        hardware: optimize::pick_hardware(&hw_all, &p.hardware)?,
        constraints: p.constraints,
    };
    // Progress: candidate k of n spans [0.05 + 0.95 k/n, 0.05 + 0.95 (k+1)/n].
    let at = std::sync::Mutex::new((String::new(), 0usize, 1usize));
    let current = || at.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let on = |e: study::Event<'_>| match e {
        study::Event::Candidate { name, index, total } => {
            *at.lock().unwrap_or_else(|e| e.into_inner()) = (name.to_string(), index, total);
            stage(name, 0.05 + 0.95 * index as f64 / total as f64);
        }
        study::Event::Step { what, done, total } => {
            let (name, k, n) = current();
            let f = if total == 0 {
                0.0
            } else {
                done as f64 / total as f64
            };
            stage(
                &format!("{name} {what}"),
                0.05 + 0.95 * (k as f64 + f.min(1.0)) / n as f64,
            );
        }
        study::Event::Measured { .. } => {}
    };
    let report_path = work.join("report.json");
    let outcome = st
        .run(&on, &mut |r| {
            // The report so far, for the job's page while it runs.
            let bytes = serde_json::to_vec(r).map_err(|e| tenpak::Error::InvalidOption {
                option: "report",
                reason: e.to_string(),
            })?;
            let _ = ctx.store.set_result(id, &String::from_utf8_lossy(&bytes));
            tenpak::source::write_atomic(&report_path, &bytes)
        })
        .map_err(|e| JobError {
            message: format!("candidate {}: {e}", current().0),
            ..JobError::from(e)
        })?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(outcome.report)
}
