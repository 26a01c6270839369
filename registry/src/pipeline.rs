//! Workers and the per-job pipeline:
//! resolve → download (exact commit) → pack (each target, signed) → verify → evaluate
//! (optional) → store chunks → publish (one commit: every `.tnpk` and the model card).
//!
//! Nothing is published before every artifact of the job has been written, re-opened,
//! signature-checked with the registry's key and chunk-verified. Each attempt starts
//! from an empty work directory, so a killed attempt leaves nothing half-done that a
//! later one could pick up. The companion commit is recorded before the job is marked
//! done, so a restart between the two does not publish twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tenpak::artifact::{pack, sign, Artifact};
use tenpak::dtype::DType;
use tenpak::hub::{Hub, Upload};
use tenpak::plan::Target;
use tenpak::quantize::Options;
use tokio::sync::Notify;

use crate::card::{self, CardInfo, CardRow};
use crate::chunks::ChunkStore;
use crate::config::{target_name, Settings};
use crate::store::{ArtifactRow, Job, RepoFile, RepoRevision, Store};

/// What every worker and handler shares.
pub struct Ctx {
    /// Settings.
    pub settings: Settings,
    /// Job store.
    pub store: Arc<Store>,
    /// Chunk store.
    pub chunks: ChunkStore,
    /// Hub client.
    pub hub: Hub,
    /// The registry's signing key.
    pub key: SigningKey,
    /// Wakes idle workers when a job is queued.
    pub wake: Notify,
}

/// A failed attempt: the message, and whether trying again could help.
#[derive(Debug)]
pub struct JobError {
    /// What went wrong.
    pub message: String,
    /// Network trouble, rate limits, server errors: worth another attempt.
    pub transient: bool,
}

impl JobError {
    fn permanent(m: impl std::fmt::Display) -> Self {
        Self {
            message: m.to_string(),
            transient: false,
        }
    }
}

impl From<tenpak::Error> for JobError {
    fn from(e: tenpak::Error) -> Self {
        Self {
            transient: tenpak::hub::is_transient(&e),
            message: e.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for JobError {
    fn from(e: crate::store::StoreError) -> Self {
        Self {
            message: e.to_string(),
            transient: true,
        }
    }
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        Self {
            message: e.to_string(),
            transient: true,
        }
    }
}

/// Runs jobs until the process ends.
pub async fn worker(ctx: Arc<Ctx>, n: usize) {
    loop {
        let claimed = ctx.store.claim();
        match claimed {
            Ok(Some(job)) => {
                eprintln!(
                    "worker {n}: job {} {}@{} (attempt {})",
                    job.id, job.repo, job.revision, job.attempts
                );
                let t0 = Instant::now();
                let id = job.id;
                let attempts = job.attempts;
                match run(&ctx, job).await {
                    Ok(()) => {
                        if let Err(e) = ctx.store.finish(id) {
                            eprintln!("worker {n}: job {id}: {e}");
                        }
                        eprintln!(
                            "worker {n}: job {id} published in {:.1} s",
                            t0.elapsed().as_secs_f64()
                        );
                    }
                    Err(e) => {
                        let retry = e.transient && attempts < ctx.settings.max_attempts;
                        eprintln!(
                            "worker {n}: job {id} attempt {attempts} failed{}: {}",
                            if retry { " (will retry)" } else { "" },
                            e.message
                        );
                        if retry {
                            tokio::time::sleep(Duration::from_secs(1 << attempts.min(6))).await;
                        }
                        if let Err(e) = ctx.store.fail(id, &e.message, retry) {
                            eprintln!("worker {n}: job {id}: {e}");
                        }
                    }
                }
            }
            Ok(None) => {
                // Idle: wait for a new job (or look again after a while).
                let _ = tokio::time::timeout(Duration::from_secs(5), ctx.wake.notified()).await;
            }
            Err(e) => {
                eprintln!("worker {n}: job store: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Progress reporting from blocking code.
fn stage(ctx: &Ctx, id: i64, name: &str, p: f64) {
    if let Err(e) = ctx.store.progress(id, name, p) {
        eprintln!("job {id}: recording progress: {e}");
    }
}

/// The artifact file name of `repo`'s `target` (`name-balanced.tnpk`).
pub fn artifact_file(repo: &str, target: Target) -> String {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    format!("{name}-{}.tnpk", target_name(target))
}

struct Packed {
    target: Target,
    path: PathBuf,
    report: pack::PackReport,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JobError::permanent(format!("worker thread failed: {e}")))?
}

async fn run(ctx: &Arc<Ctx>, job: Job) -> Result<(), JobError> {
    let id = job.id;
    if job.published_commit.is_some() {
        // Published before an interruption; only the final mark was missing.
        return Ok(());
    }
    stage(ctx, id, "resolve", 0.01);
    let commit = if tenpak::hub::is_commit(&job.revision) {
        job.revision.to_ascii_lowercase()
    } else {
        let c = ctx.hub.resolve(&job.repo, &job.revision).await?;
        ctx.store.set_revision(id, &c)?;
        c
    };
    stage(ctx, id, "download", 0.02);
    let snap = ctx.hub.download_model(&job.repo, &commit).await?;
    let work = ctx.settings.data_dir.join("work").join(format!("job-{id}"));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let targets = crate::config::parse_targets(std::slice::from_ref(&job.targets))
        .map_err(JobError::permanent)?;

    // Pack every target, signed.
    let mut packed = Vec::new();
    for (k, &target) in targets.iter().enumerate() {
        let out = work.join(artifact_file(&job.repo, target));
        let (ctx2, dir, out2) = (ctx.clone(), snap.dir.clone(), out.clone());
        let source = format!("{}@{commit}", job.repo);
        let n = targets.len() as f64;
        let report = blocking(move || {
            let src = tenpak::models::open(&dir, DType::BF16)?;
            let total = src.tensors().len().max(1) as f64;
            let done = std::sync::atomic::AtomicUsize::new(0);
            let last = std::sync::Mutex::new(Instant::now());
            let opts = Options {
                selection: tenpak::plan::Selection::Target(target),
                ..Options::default()
            };
            let r = pack::pack(
                src.as_ref(),
                &out2,
                &opts,
                &[&ctx2.key],
                &[
                    ("source", &source),
                    ("selection", &format!("target {}", target_name(target))),
                    ("packed_by", "tenpak-registry"),
                ],
                &|_| {
                    let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
                    if l.elapsed() > Duration::from_millis(250) {
                        *l = Instant::now();
                        let p = 0.2 + 0.6 * (k as f64 + d as f64 / total) / n;
                        stage(&ctx2, id, &format!("pack {}", target_name(target)), p);
                    }
                },
            )?;
            Ok(r)
        })
        .await?;
        packed.push(Packed {
            target,
            path: out,
            report,
        });
    }

    // Verify what was written, as a downloader would.
    stage(ctx, id, "verify", 0.8);
    let public = ctx.key.verifying_key();
    for p in &packed {
        let path = p.path.clone();
        blocking(move || {
            let a = Artifact::open_location(&path.display().to_string())?;
            a.verify_signature(&public)?;
            a.verify_chunks(&|_| {})?;
            Ok(())
        })
        .await?;
    }

    // Perplexity, where configured and the architecture is supported.
    stage(ctx, id, "evaluate", 0.85);
    let deltas = match &ctx.settings.eval_text {
        None => vec![Err("no evaluation text configured".to_string()); packed.len()],
        Some(text) => {
            let (text, dir, tokens) = (text.clone(), snap.dir.clone(), ctx.settings.eval_tokens);
            let paths: Vec<PathBuf> = packed.iter().map(|p| p.path.clone()).collect();
            let n = paths.len();
            blocking(move || Ok(measure(&dir, &paths, &text, tokens)))
                .await
                .unwrap_or_else(|e| vec![Err(e.message); n])
        }
    };

    // Into the chunk store.
    stage(ctx, id, "store", 0.9);
    let companion = job.companion.clone();
    let mut rows = Vec::new();
    let mut files = Vec::new();
    for (p, delta) in packed.iter().zip(deltas) {
        let chunks = ctx.chunks.clone();
        let path = p.path.clone();
        let manifest_chunks = {
            let a = Artifact::open_location(&path.display().to_string())?;
            a.manifest().chunks.clone()
        };
        let ing = blocking(move || Ok(chunks.ingest(&path, &manifest_chunks)?)).await?;
        let digest_hex = p.report.digest.trim_start_matches("sha256:").to_string();
        let file = artifact_file(&job.repo, p.target);
        ctx.store.add_artifact(&ArtifactRow {
            id: digest_hex.clone(),
            job_id: id,
            repo: companion.clone(),
            path: file.clone(),
            size: p.report.file_bytes,
            source: format!("{}@{commit}", job.repo),
            target: target_name(p.target).into(),
            bits_per_weight: p.report.report.bits_per_weight_quantized,
            sha256: ing.sha256.clone(),
            pieces: ing.pieces.clone(),
        })?;
        files.push(RepoFile {
            path: file.clone(),
            sha256: ing.sha256,
            size: p.report.file_bytes,
            artifact: Some(digest_hex),
        });
        rows.push(CardRow {
            file,
            target: target_name(p.target).into(),
            bits_quantized: p.report.report.bits_per_weight_quantized,
            bits_file: p.report.bits_per_weight_artifact,
            bytes: p.report.file_bytes,
            source_bytes: p.report.report.source_bytes,
            ppl_delta: delta,
            digest: p.report.digest.clone(),
        });
    }
    let public_hex = hex::encode(public.as_bytes());
    let key_id = sign::key_id(&public);
    let source_dtype = packed
        .first()
        .map(|p| {
            let b = p.report.report.source_bits_per_weight;
            if b >= 32.0 {
                "f32"
            } else {
                "bf16/fp16"
            }
        })
        .unwrap_or("bf16");
    let card_text = card::render(
        &CardInfo {
            source: &job.repo,
            commit: &commit,
            source_dtype,
            key_id: &key_id,
            public_key: &public_hex,
            eval: ctx.settings.eval_text.as_ref().map(|t| {
                format!(
                    "tenpak eval on the first {} tokens of {} (windows of 512), source model vs artifact",
                    ctx.settings.eval_tokens,
                    t.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                )
            }),
        },
        &rows,
    );
    let card_sha = ctx.chunks.put_bytes(card_text.as_bytes())?;
    files.push(RepoFile {
        path: "README.md".into(),
        sha256: card_sha,
        size: card_text.len() as u64,
        artifact: None,
    });

    // Publish: one commit with every file.
    stage(ctx, id, "publish", 0.95);
    ctx.hub.create_repo(&companion, false).await?;
    let mut uploads: Vec<Upload> = packed
        .iter()
        .map(|p| Upload::File {
            path_in_repo: artifact_file(&job.repo, p.target),
            source: p.path.clone(),
        })
        .collect();
    uploads.push(Upload::Bytes {
        path_in_repo: "README.md".into(),
        bytes: card_text.into_bytes(),
    });
    let message = format!(
        "TenPak artifacts of {}@{} ({})",
        job.repo,
        &commit[..12.min(commit.len())],
        targets
            .iter()
            .map(|t| target_name(*t))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ctx2 = ctx.clone();
    let last = std::sync::Mutex::new(Instant::now() - Duration::from_secs(1));
    let progress: tenpak::hub::ProgressFn = Arc::new(move |p: tenpak::hub::UploadProgress| {
        let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
        if l.elapsed() < Duration::from_millis(250) && p.bytes_done < p.bytes_total {
            return;
        }
        *l = Instant::now();
        let frac = p.bytes_done as f64 / p.bytes_total.max(1) as f64;
        stage(
            &ctx2,
            id,
            &format!(
                "publish: {:.1} of {:.1} MB processed, {:.1} MB sent",
                p.bytes_done as f64 / 1e6,
                p.bytes_total as f64 / 1e6,
                p.bytes_sent as f64 / 1e6
            ),
            0.95 + 0.049 * frac,
        );
    });
    let t_up = Instant::now();
    let report = ctx
        .hub
        .commit_files(&companion, uploads, &message, Some(progress))
        .await?;
    let upload = serde_json::json!({
        "transfer": report.transfer,
        "bytes": report.bytes_total,
        "bytes_sent": report.bytes_sent,
        "seconds": t_up.elapsed().as_secs_f64(),
    });
    eprintln!(
        "job {id}: published {} ({:?}): {} bytes, {} sent",
        companion, report.transfer, report.bytes_total, report.bytes_sent
    );
    let hub_commit = report.commit;
    let revision_id = revision_id(&companion, &files);
    ctx.store.add_revision(&RepoRevision {
        repo: companion.clone(),
        commit: revision_id.clone(),
        files,
        created_at: crate::store::now(),
    })?;
    ctx.store
        .set_published(id, hub_commit.as_deref().unwrap_or(&revision_id), &upload)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The registry's own revision id of a companion state: 40 hex of the sha256 of its
/// files (so the same files give the same id).
pub fn revision_id(repo: &str, files: &[RepoFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(repo.as_bytes());
    for f in files {
        h.update(b"\0");
        h.update(f.path.as_bytes());
        h.update(b"\0");
        h.update(f.sha256.as_bytes());
    }
    hex::encode(h.finalize())[..40].to_string()
}

/// Perplexity change of each artifact against the source on `text`.
fn measure(
    dir: &Path,
    artifacts: &[PathBuf],
    text: &Path,
    tokens: usize,
) -> Vec<Result<f64, String>> {
    use tenpak::runtime::{perplexity, Model, Tokenizer, Windows};
    let base = (|| -> Result<(Vec<u32>, Option<u32>, Windows, f64), String> {
        let src = tenpak::models::open(dir, DType::BF16).map_err(|e| e.to_string())?;
        let tok_bytes = tenpak::source::side_files(src.as_ref())
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|(n, _)| n == "tokenizer.json")
            .map(|(_, b)| b)
            .ok_or("the model has no tokenizer.json")?;
        let tok = Tokenizer::from_bytes(&tok_bytes).map_err(|e| format!("tokenizer: {e}"))?;
        let s = std::fs::read_to_string(text).map_err(|e| format!("{}: {e}", text.display()))?;
        let ids = tok.encode(&s).map_err(|e| e.to_string())?;
        let ctx_len = 512.min(tokens).min(ids.len().saturating_sub(1)).max(1);
        let w = Windows {
            ctx: ctx_len,
            stride: ctx_len,
            max_tokens: tokens,
        };
        let bos = tok.default_bos();
        let model = Model::load(src.as_ref()).map_err(|e| e.to_string())?;
        let r = perplexity(&model, &ids, bos, w, &|_, _| {}).map_err(|e| e.to_string())?;
        Ok((ids, bos, w, r.ppl))
    })();
    let (ids, bos, w, base_ppl) = match base {
        Ok(b) => b,
        Err(e) => return vec![Err(e); artifacts.len()],
    };
    artifacts
        .iter()
        .map(|a| {
            let src = tenpak::artifact::ArtifactSource::open(&a.display().to_string())
                .map_err(|e| e.to_string())?;
            let model = Model::load(&src).map_err(|e| e.to_string())?;
            let r = perplexity(&model, &ids, bos, w, &|_, _| {}).map_err(|e| e.to_string())?;
            Ok((r.ppl / base_ppl - 1.0) * 100.0)
        })
        .collect()
}
