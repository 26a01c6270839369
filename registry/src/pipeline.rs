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

use crate::card::{self, CardDelta, CardInfo, CardRow};
use crate::chunks::ChunkStore;
use crate::config::{target_name, Settings};
use crate::store::{
    ArtifactRow, Job, JobState, NewJob, RepoFile, RepoRevision, Store, KIND_ADAPTER, KIND_DELTA,
    KIND_FULL,
};

/// What every worker and handler shares.
pub struct Ctx {
    /// Settings.
    pub settings: Settings,
    /// Job store.
    pub store: Arc<dyn Store>,
    /// Chunk store.
    pub chunks: ChunkStore,
    /// Hub client.
    pub hub: Hub,
    /// The registry's signing key.
    pub key: SigningKey,
    /// Wakes idle workers when a job is queued.
    pub wake: Notify,
    /// The data dir's lock ([`crate::lock_data_dir`]), held while the registry runs.
    pub _lock: std::fs::File,
    /// This process's name as a lease holder (`host:pid:start`).
    pub owner: String,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The memory budget jobs share, in MiB ([`Settings::memory_budget`]).
    pub memory: tokio::sync::Semaphore,
    /// GitHub, where models are mapped to repositories for reports ([`crate::reports`]).
    pub github: Option<Arc<tenpak::github::GitHub>>,
}

/// A lease holder's name for this process: `host:instance:pid:start`, unique across
/// hosts, processes and restarts; `instance` names the data dir (see
/// [`crate::instance_id`]), so a process that takes over a data dir knows which running
/// jobs were its predecessor's.
pub fn lease_owner(instance: &str) -> String {
    format!(
        "{}{}:{:.0}",
        owner_prefix(instance),
        std::process::id(),
        crate::store::now() * 1000.0
    )
}

/// The part of [`lease_owner`] every process on the same data dir shares.
pub fn owner_prefix(instance: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{instance}:")
}

/// A failed attempt: the message, and whether trying again could help.
#[derive(Debug)]
pub struct JobError {
    /// What went wrong.
    pub message: String,
    /// Network trouble, rate limits, server errors: worth another attempt.
    pub transient: bool,
    /// This worker's lease on the job ran out and the job went back to the queue (or to
    /// another worker): nothing is recorded for it, the new holder's attempt counts.
    pub lost_lease: bool,
}

impl JobError {
    pub(crate) fn new(m: impl std::fmt::Display, transient: bool) -> Self {
        Self {
            message: m.to_string(),
            transient,
            lost_lease: false,
        }
    }

    pub(crate) fn permanent(m: impl std::fmt::Display) -> Self {
        Self::new(m, false)
    }

    fn lost_lease() -> Self {
        Self {
            lost_lease: true,
            ..Self::new(
                "this worker's lease on the job ran out; another attempt holds it now",
                true,
            )
        }
    }
}

impl From<tenpak::Error> for JobError {
    fn from(e: tenpak::Error) -> Self {
        Self::new(&e, tenpak::hub::is_transient(&e) || local_trouble(&e))
    }
}

/// A local I/O failure that says nothing about the model: a full disk or quota, a busy
/// or interrupted device, memory. Worth another attempt once the operator has made room.
fn local_trouble(e: &tenpak::Error) -> bool {
    use std::io::ErrorKind as K;
    match e {
        tenpak::Error::Io { source, .. } => matches!(
            source.kind(),
            K::StorageFull
                | K::QuotaExceeded
                | K::ResourceBusy
                | K::Interrupted
                | K::TimedOut
                | K::OutOfMemory
        ),
        _ => false,
    }
}

impl From<crate::store::StoreError> for JobError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::new(e, true)
    }
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        Self::new(e, true)
    }
}

/// Runs jobs until the process ends. While a job runs, a heartbeat renews its lease
/// every third of [`Settings::job_lease`]; between jobs, the worker returns jobs whose
/// lease ran out (a dead or hung holder) to the queue.
pub async fn worker(ctx: Arc<Ctx>, n: usize) {
    let lease = ctx.settings.job_lease;
    loop {
        let max = ctx.settings.max_attempts;
        match db(&ctx, move |s| s.requeue_expired(max)).await {
            Ok(i) if i.requeued + i.failed > 0 => tracing::info!(
                "worker {n}: {} job(s) whose lease ran out requeued, {} failed (out of attempts)",
                i.requeued,
                i.failed
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("worker {n}: job store: {}", e.message),
        }
        let owner = ctx.owner.clone();
        let claimed = db(&ctx, move |s| s.claim(&owner, lease)).await;
        match claimed {
            Ok(Some(job)) => {
                tracing::info!(
                    "worker {n}: job {} {}@{} (attempt {})",
                    job.id,
                    job.repo,
                    job.revision,
                    job.attempts
                );
                let t0 = Instant::now();
                let id = job.id;
                let attempts = job.attempts;
                let repo = job.repo.clone();
                let c = ctx.clone();
                let heartbeat = tokio::spawn(heartbeat(ctx.clone(), id));
                // Every log line of the job carries its id, repo and attempt.
                let span = tracing::info_span!("job", id, repo = %job.repo, attempt = attempts);
                let result = contained(tracing::Instrument::instrument(
                    async move { run(&c, job).await },
                    span,
                ))
                .await;
                heartbeat.abort();
                ctx.metrics.job_ended(
                    id,
                    match &result {
                        Ok(Outcome::Published) => "published",
                        Ok(Outcome::Analysed) => "analysed",
                        Ok(Outcome::Superseded) => "superseded",
                        Ok(Outcome::Waiting(_)) => "waiting",
                        Err(e) if e.lost_lease => "lost_lease",
                        Err(e) if e.transient => "failed_transient",
                        Err(_) => "failed",
                    },
                    t0.elapsed(),
                );
                match result {
                    Ok(
                        outcome @ (Outcome::Published | Outcome::Superseded | Outcome::Analysed),
                    ) => {
                        if let Err(e) = db(&ctx, move |s| s.finish(id)).await {
                            tracing::warn!("worker {n}: job {id}: {}", e.message);
                        }
                        clean_hub_cache(&ctx, repo, id).await;
                        // Jobs waiting on this one (fine-tunes of it) may run now.
                        ctx.wake.notify_waiters();
                        if matches!(outcome, Outcome::Published) {
                            crate::reports::spawn(ctx.clone(), id);
                        }
                        tracing::info!(
                            "worker {n}: job {id} {} in {:.1} s",
                            match outcome {
                                Outcome::Published => "published",
                                Outcome::Analysed => "done (result stored)",
                                _ => "stored, not published (superseded)",
                            },
                            t0.elapsed().as_secs_f64()
                        );
                    }
                    Ok(Outcome::Waiting(on)) => {
                        tracing::info!("worker {n}: job {id} waits for job {on} (its base)");
                    }
                    Err(e) if e.lost_lease => {
                        tracing::info!("worker {n}: job {id}: {}", e.message);
                        let _ = std::fs::remove_dir_all(work_dir(&ctx, id));
                    }
                    Err(e) => {
                        let retry = e.transient && attempts < ctx.settings.max_attempts;
                        tracing::warn!(
                            "worker {n}: job {id} attempt {attempts} failed{}: {}",
                            if retry { " (will retry)" } else { "" },
                            e.message
                        );
                        if retry {
                            tokio::time::sleep(Duration::from_secs(1 << attempts.min(6))).await;
                        }
                        let message = e.message.clone();
                        if let Err(e) = db(&ctx, move |s| s.fail(id, &message, retry)).await {
                            tracing::warn!("worker {n}: job {id}: {}", e.message);
                        }
                        if !retry {
                            // Nothing of a failed job stays on disk, its download
                            // neither (a retry downloads again).
                            let _ = std::fs::remove_dir_all(work_dir(&ctx, id));
                            clean_hub_cache(&ctx, repo, id).await;
                            ctx.wake.notify_waiters();
                            crate::reports::spawn(ctx.clone(), id);
                        }
                    }
                }
            }
            Ok(None) => {
                // Idle: wait for a new job (or look again after a while, also for leases
                // that ran out).
                let idle = Duration::from_secs(5).min(lease / 2);
                let _ = tokio::time::timeout(idle, ctx.wake.notified()).await;
            }
            Err(e) => {
                tracing::warn!("worker {n}: job store: {}", e.message);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs an evaluate or optimize job ([`crate::analysis`]) on the blocking pool and
/// stores its result.
async fn analyse(ctx: &Arc<Ctx>, job: Job) -> Result<Outcome, JobError> {
    let id = job.id;
    let params = job
        .params
        .clone()
        .ok_or_else(|| JobError::permanent("the job has no request stored"))?;
    let bad = |e: serde_json::Error| JobError::permanent(format!("the job's request: {e}"));
    let (c, rt) = (ctx.clone(), tokio::runtime::Handle::current());
    let progress = move |c: &Ctx, name: &str, p: f64| stage(c, id, name, p);
    let result = if job.kind == crate::store::KIND_EVALUATE {
        let p: crate::analysis::EvaluateParams = serde_json::from_value(params).map_err(bad)?;
        blocking(move || {
            let r = crate::analysis::evaluate(&c, &rt, id, &p, &|n, f| progress(&c, n, f))?;
            serde_json::to_string(&r).map_err(JobError::permanent)
        })
        .await?
    } else {
        let p: crate::analysis::OptimizeParams = serde_json::from_value(params).map_err(bad)?;
        blocking(move || {
            let r = crate::analysis::optimize(&c, &rt, id, &p, &|n, f| progress(&c, n, f))?;
            serde_json::to_string(&r).map_err(JobError::permanent)
        })
        .await?
    };
    db(ctx, move |s| s.set_result(id, &result)).await?;
    Ok(Outcome::Analysed)
}

/// Bytes of memory a job is expected to need at its peak, from the Hub listing: its
/// weights as f32 (the evaluation loads the whole model; packing holds the tensors it
/// encodes, and a calibrated or delta target its layer's inputs), twice over for a job
/// packed against a base (the base's tensors are decoded beside the model's), plus
/// 256 MiB for the process's own working set.
pub fn memory_estimate(listing: &[(String, u64)], derived: bool) -> u64 {
    let weights: u64 = listing
        .iter()
        .filter(|(f, _)| f.ends_with(".safetensors"))
        .map(|(_, n)| *n)
        .sum();
    let f32_copy = weights.saturating_mul(2);
    let per_model = if derived { 2 } else { 1 };
    f32_copy.saturating_mul(per_model).saturating_add(256 << 20)
}

/// Takes `estimate` bytes of the shared memory budget for job `id` (in MiB units of
/// [`Ctx::memory`]), waiting while other jobs hold it; refuses a job larger than the whole
/// budget. The budget comes back when the returned permit is dropped.
async fn admit(
    ctx: &Ctx,
    id: i64,
    estimate: u64,
) -> Result<tokio::sync::SemaphorePermit<'_>, JobError> {
    let budget = ctx.settings.memory_budget;
    let mib = |b: u64| b.div_ceil(1 << 20);
    if estimate > budget {
        return Err(JobError::permanent(format!(
            "the model needs about {:.1} GiB of memory by its estimate, more than the registry's memory_budget_bytes ({:.1} GiB)",
            estimate as f64 / (1u64 << 30) as f64,
            budget as f64 / (1u64 << 30) as f64
        )));
    }
    let want = u32::try_from(mib(estimate)).unwrap_or(u32::MAX);
    if ctx.memory.available_permits() < want as usize {
        stage(ctx, id, "waiting for memory", 0.02);
        tracing::info!(
            "job {id}: waiting for memory ({} MiB estimated, {} MiB free of the budget)",
            want,
            ctx.memory.available_permits()
        );
    }
    ctx.memory
        .acquire_many(want)
        .await
        .map_err(|e| JobError::new(e, true))
}

/// Removes `repo`'s downloads from the Hub cache once job `id` has ended, unless another
/// job of the same repository is queued, running or waiting (it may use them). The
/// packed artifacts are in the chunk store; the source weights are not needed again.
async fn clean_hub_cache(ctx: &Arc<Ctx>, repo: String, id: i64) {
    let c = ctx.clone();
    // Database and file removal: the blocking pool's work.
    let _ = tokio::task::spawn_blocking(move || clean_hub_cache_now(&c, &repo, id)).await;
}

fn clean_hub_cache_now(ctx: &Ctx, repo: &str, id: i64) {
    match ctx.store.repo_busy(repo, id) {
        Ok(false) => {
            let dir = ctx.hub.cache_dir().join(tenpak::hub::cache_dir_name(repo));
            if dir.exists() {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => tracing::info!("job {id}: removed {} from the Hub cache", repo),
                    Err(e) => tracing::warn!("job {id}: cleaning {}: {e}", dir.display()),
                }
            }
        }
        Ok(true) => {}
        Err(e) => tracing::warn!("job {id}: {e}"),
    }
}

/// Renews this process's lease on job `id` every third of the lease, until aborted or
/// the lease is lost (then the job's own check before publishing stops it).
async fn heartbeat(ctx: Arc<Ctx>, id: i64) {
    let lease = ctx.settings.job_lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        let c = ctx.clone();
        let renewed =
            tokio::task::spawn_blocking(move || c.store.renew(id, &c.owner, c.settings.job_lease))
                .await;
        match renewed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(
                    "job {id}: lease lost (the job was requeued while this worker held it)"
                );
                return;
            }
            Ok(Err(e)) => tracing::warn!("job {id}: renewing the lease: {e}"),
            Err(e) => tracing::warn!("job {id}: renewing the lease: {e}"),
        }
    }
}

/// [`crate::store::off_thread`], its failure a transient [`JobError`].
async fn db<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&dyn Store) -> crate::store::Result<T> + Send + 'static,
) -> Result<T, JobError> {
    Ok(crate::store::off_thread(&ctx.store, f).await?)
}

/// Progress reporting (one short UPDATE; from blocking code, or between awaits).
fn stage(ctx: &Ctx, id: i64, name: &str, p: f64) {
    ctx.metrics.stage(id, name);
    if let Err(e) = ctx.store.progress(id, name, p) {
        tracing::warn!("job {id}: recording progress: {e}");
    }
    pause_for_fault_injection(id, name);
}

/// Fault injection for the kill tests (`registry/tests/hardening.rs`): with
/// `TENPAK_REGISTRY_PAUSE_AT=STAGE` in the environment, the first job to enter a stage
/// whose name starts with STAGE stops there for good (the test then kills the process
/// with SIGKILL at exactly that point). Unset, this costs one cached lookup.
fn pause_for_fault_injection(id: i64, name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let at = AT.get_or_init(|| std::env::var("TENPAK_REGISTRY_PAUSE_AT").ok());
    if let Some(at) = at {
        if name.starts_with(at.as_str()) && !PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::warn!("fault injection: job {id} paused at stage {name:?}");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

/// The artifact file name of `repo`'s `target` (`name-balanced.tnpk`).
pub fn artifact_file(repo: &str, target: Target) -> String {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    format!("{name}-{}.tnpk", target_name(target))
}

/// What a job packs, decided from the repository's card and files when it runs.
enum Plan {
    /// The model on its own (`note`: why a derived model is not a delta).
    Full { note: Option<String> },
    /// Deltas (or an adapter) against the base job's artifacts.
    Derived {
        adapter: bool,
        base_repo: String,
        base_commit: String,
        base_job: Box<Job>,
        base_rows: Vec<ArtifactRow>,
    },
    /// The base's job must finish first.
    Wait(i64),
}

/// What a run ended with.
enum Outcome {
    Published,
    /// An evaluate or optimize job's result is stored.
    Analysed,
    /// Packed and stored, not published: a newer commit's artifacts are already there.
    Superseded,
    Waiting(i64),
}

/// A delta target's base and report.
struct DeltaPacked {
    base_path: PathBuf,
    base_repo: String,
    base_file: String,
    report: tenpak::delta::DeltaReport,
}

struct Packed {
    target: Target,
    path: PathBuf,
    /// The full pack's report (`None` for a delta).
    report: Option<pack::PackReport>,
    delta: Option<DeltaPacked>,
    /// Why this target was packed in full although the model is derived.
    note: Option<String>,
}

impl Packed {
    fn digest(&self) -> &str {
        match (&self.report, &self.delta) {
            (Some(r), _) => &r.digest,
            (_, Some(d)) => &d.report.digest,
            _ => "",
        }
    }

    fn file_bytes(&self) -> u64 {
        match (&self.report, &self.delta) {
            (Some(r), _) => r.file_bytes,
            (_, Some(d)) => d.report.file_bytes,
            _ => 0,
        }
    }
}

/// The declaration [`ChunkStore::ingest`] makes for job `id`: its pieces recorded as in
/// use ([`crate::store::JobStore::declare_pieces`]), waiting while a sweep holds its
/// lease (at most the lease and a minute). Blocking.
fn declarer(store: Arc<dyn Store>, id: i64) -> impl Fn(&[String]) -> std::io::Result<()> {
    move |shas| {
        let t0 = Instant::now();
        loop {
            match store.declare_pieces(id, shas) {
                Ok(true) => return Ok(()),
                Ok(false) if t0.elapsed() < crate::SWEEP_LEASE + Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Ok(false) => {
                    return Err(std::io::Error::other(
                        "a chunk-store sweep held its lease for too long",
                    ))
                }
                Err(e) => return Err(std::io::Error::other(format!("job store: {e}"))),
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f).await.map_err(joined)?
}

/// Runs a job's future as a task of its own, so that a panic in it (a bug) fails that
/// job with the panic's message instead of ending the worker loop that ran it: a worker
/// lost that way would leave the queue unserved without a word.
async fn contained<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, JobError>> + Send + 'static,
) -> Result<T, JobError> {
    tokio::spawn(fut).await.map_err(joined)?
}

/// A task that did not return: its panic message, or that it was cancelled.
fn joined(e: tokio::task::JoinError) -> JobError {
    if e.is_panic() {
        let p = e.into_panic();
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        tracing::error!("a job panicked: {msg}");
        JobError::permanent(format!(
            "the job panicked (a bug in the registry; the log has it): {msg}"
        ))
    } else {
        JobError::permanent(format!("the job's task was cancelled: {e}"))
    }
}

/// Reads the card (and adapter config) of `job.repo` at `commit` and decides what the
/// job packs. A base that cannot be had makes a fine-tune a full job with the reason;
/// an adapter has no weights of its own, so it fails instead.
async fn plan(
    ctx: &Arc<Ctx>,
    job: &Job,
    commit: &str,
    files: &[(String, u64)],
) -> Result<Plan, JobError> {
    use tenpak::delta::adapter;
    use tenpak::hub::card::{Derived, Lineage};
    if job.kind == KIND_FULL {
        return Ok(Plan::Full {
            note: job.note.clone(),
        });
    }
    let has = |name: &str| files.iter().any(|(f, _)| f == name);
    let is_adapter = has(adapter::CONFIG_FILE) && has(adapter::WEIGHTS_FILE);
    let lineage = if has("README.md") {
        let card = ctx
            .hub
            .read_small_file(&job.repo, commit, "README.md")
            .await?
            .unwrap_or_default();
        match Lineage::from_card(&String::from_utf8_lossy(&card)) {
            Ok(l) => l,
            Err(reason) => {
                return Ok(Plan::Full {
                    note: Some(format!("model card: {reason}")),
                })
            }
        }
    } else {
        Lineage::default()
    };
    let adapter_base = if is_adapter {
        let bytes = ctx
            .hub
            .read_small_file(&job.repo, commit, adapter::CONFIG_FILE)
            .await?
            .unwrap_or_default();
        adapter::AdapterConfig::parse(&bytes)?.base
    } else {
        None
    };
    let unusable = |reason: String| -> Result<Plan, JobError> {
        if is_adapter {
            Err(JobError::permanent(format!(
                "an adapter needs its base: {reason}"
            )))
        } else {
            Ok(Plan::Full { note: Some(reason) })
        }
    };
    let base = match lineage.derived_from(is_adapter, adapter_base.as_deref()) {
        Derived::Standalone => return Ok(Plan::Full { note: None }),
        Derived::Other { reason } => return unusable(reason),
        Derived::FineTune { base } | Derived::Adapter { base } => base,
    };
    if base == job.repo {
        return unusable(format!(
            "the card names the repository itself ({base}) as its base"
        ));
    }
    let base_commit = match ctx.hub.resolve(&base, "main").await {
        Ok(c) => c,
        Err(e) if tenpak::hub::is_transient(&e) => return Err(e.into()),
        Err(e) => return unusable(format!("the base {base} cannot be read: {e}")),
    };
    let (b2, c2) = (base.clone(), base_commit.clone());
    match db(ctx, move |s| s.job_for(&b2, &c2)).await? {
        None => {
            let (b2, c2, targets) = (base.clone(), base_commit.clone(), job.targets.clone());
            let companion = ctx.settings.companion_of(&base);
            let en = db(ctx, move |s| {
                s.enqueue(&NewJob {
                    key: &tenpak_hooks::job_key(&b2, &c2),
                    repo: &b2,
                    revision: &c2,
                    targets: &targets,
                    origin: "base",
                    companion: &companion,
                    kind: KIND_FULL,
                    params: None,
                })
            })
            .await?;
            ctx.wake.notify_waiters();
            Ok(Plan::Wait(en.job.id))
        }
        Some(j) if j.state == JobState::Done && j.kind != KIND_FULL => unusable(format!(
            "the base {base}'s artifacts are themselves {} artifacts (job {}); chains of deltas are not made",
            j.kind, j.id
        )),
        Some(j) if j.state == JobState::Done => {
            let jid = j.id;
            Ok(Plan::Derived {
                adapter: is_adapter,
                base_repo: base,
                base_commit,
                base_rows: db(ctx, move |s| s.artifact_rows_of_job(jid)).await?,
                base_job: Box::new(j),
            })
        }
        Some(j) if j.state == JobState::Failed => unusable(format!(
            "packing the base {base}@{} failed (job {}): {}",
            &base_commit[..12],
            j.id,
            j.error.unwrap_or_default()
        )),
        Some(j) if j.state == JobState::Waiting => unusable(format!(
            "the base {base} waits for its own base (job {}); chains of deltas are not made",
            j.id
        )),
        Some(j) => Ok(Plan::Wait(j.id)),
    }
}

/// Whether a delta error means "this is not the model's base" (then: packed in full).
fn base_unfit(e: &tenpak::Error) -> bool {
    matches!(
        e,
        tenpak::Error::IncompatibleBase { .. } | tenpak::Error::BaseMismatch { .. }
    )
}

async fn run(ctx: &Arc<Ctx>, job: Job) -> Result<Outcome, JobError> {
    if crate::store::is_analysis(&job.kind) {
        return analyse(ctx, job).await;
    }
    let id = job.id;
    if job.published_commit.is_some() {
        // Published before an interruption; only the final mark was missing.
        return Ok(Outcome::Published);
    }
    stage(ctx, id, "resolve", 0.01);
    // One model-info call: the exact commit, and who may read the source. What is made
    // from a private or gated model is never published openly.
    let access = ctx.hub.access(&job.repo, &job.revision).await?;
    let commit = access.commit.clone();
    if !tenpak::hub::is_commit(&job.revision) {
        let c2 = commit.clone();
        db(ctx, move |s| s.set_revision(id, &c2)).await?;
    }
    // Sizes from the listing, before any byte is downloaded: the files packing reads
    // (weights, config, tokenizer, adapter) and the card.
    let listing: Vec<(String, u64)> = ctx
        .hub
        .list_files_sized(&job.repo, &commit)
        .await?
        .into_iter()
        .filter(|(f, _)| tenpak::hub::wanted(f) || f == "README.md")
        .collect();
    ctx.settings
        .download_limits
        .check(&job.repo, &commit, &listing)?;
    if access.restricted() && !ctx.settings.allow_private {
        return Err(JobError::permanent(format!(
            "{} is {}: its weights are not republished (allow_private is off; with it on, \
             the companions of such models are private)",
            job.repo,
            access.describe()
        )));
    }
    let plan = plan(ctx, &job, &commit, &listing).await?;
    let (derived, note, base_of_job) = match plan {
        Plan::Wait(on) => {
            db(ctx, move |s| s.wait_on(id, on)).await?;
            return Ok(Outcome::Waiting(on));
        }
        Plan::Full { note } => {
            let n2 = note.clone();
            db(ctx, move |s| s.set_kind(id, KIND_FULL, None, n2.as_deref())).await?;
            (None, note, None)
        }
        Plan::Derived {
            adapter,
            base_repo,
            base_commit,
            base_job,
            base_rows,
        } => {
            let kind = if adapter { KIND_ADAPTER } else { KIND_DELTA };
            let b = format!("{base_repo}@{base_commit}");
            let b2 = b.clone();
            db(ctx, move |s| s.set_kind(id, kind, Some(&b2), None)).await?;
            (
                Some((adapter, base_repo, base_job, base_rows)),
                None,
                Some(b),
            )
        }
    };
    // Admission: the job's memory estimate, held until it ends, within the budget all
    // workers share; a job that could never fit fails now, before downloading.
    let estimate = memory_estimate(&listing, derived.is_some());
    let _memory = admit(ctx, id, estimate).await?;
    stage(ctx, id, "download", 0.02);
    let adapter = derived.as_ref().is_some_and(|d| d.0);
    let model_dir = if adapter {
        let mut dir = None;
        for f in [
            tenpak::delta::adapter::CONFIG_FILE,
            tenpak::delta::adapter::WEIGHTS_FILE,
        ] {
            let p = ctx.hub.download_file(&job.repo, &commit, f).await?;
            dir = p.parent().map(Path::to_path_buf);
        }
        dir.ok_or_else(|| JobError::permanent("the adapter's files have no directory"))?
    } else {
        ctx.hub.download_model(&job.repo, &commit).await?.dir
    };
    let work = work_dir(ctx, id);
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let targets = crate::config::parse_targets(std::slice::from_ref(&job.targets))
        .map_err(JobError::permanent)?;

    // Pack every target, signed: a delta against the base's artifact of the same target
    // where there is one, else the model on its own.
    let mut packed = Vec::new();
    for (k, &target) in targets.iter().enumerate() {
        let out = work.join(artifact_file(&job.repo, target));
        let source = format!("{}@{commit}", job.repo);
        let tname = target_name(target);
        let mut target_note = note.clone();
        if let Some((adapter, base_repo, base_job, rows)) = &derived {
            match rows.iter().find(|r| r.target == tname) {
                None => {
                    target_note = Some(format!(
                        "the base {base_repo} has no {tname} artifact (job {} packed {})",
                        base_job.id, base_job.targets
                    ))
                }
                Some(row) => {
                    let base_path = work.join(format!("base-{}", row.path));
                    let (chunks, pieces, sha) =
                        (ctx.chunks.clone(), row.pieces.clone(), row.sha256.clone());
                    let bp = base_path.clone();
                    blocking(move || Ok(chunks.materialize(&pieces, &sha, &bp)?)).await?;
                    let (ctx2, dir, out2, adapter) =
                        (ctx.clone(), model_dir.clone(), out.clone(), *adapter);
                    let base_location = format!("{}/{}", row.repo, row.path);
                    let bp = base_path.clone();
                    let n = targets.len() as f64;
                    let source = source.clone();
                    let r = blocking(move || {
                        let base = Artifact::open_location(&bp.display().to_string())?;
                        base.verify_signature(&ctx2.key.verifying_key())?;
                        let total = base.manifest().tensors.len().max(1) as f64;
                        let done = std::sync::atomic::AtomicUsize::new(0);
                        let tick = |_: &str, _: &str| {
                            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                            let p = 0.2 + 0.6 * (k as f64 + d as f64 / total) / n;
                            stage(&ctx2, id, &format!("delta {tname}"), p);
                        };
                        let meta = [
                            ("source", source.as_str()),
                            ("selection", &format!("delta against {tname}")),
                            ("base_location", &base_location),
                            ("packed_by", "tenpak-registry"),
                        ];
                        let r = if adapter {
                            tenpak::delta::pack_adapter(
                                &dir,
                                &base,
                                &out2,
                                &[&ctx2.key],
                                &meta,
                                &tick,
                            )
                        } else {
                            let ft = tenpak::models::open(&dir, DType::BF16)?;
                            tenpak::delta::pack_delta(
                                ft.as_ref(),
                                &base,
                                &out2,
                                &tenpak::delta::DeltaOptions {
                                    mode: tenpak::delta::DeltaMode::Grid,
                                    bits_per_weight: ctx2.settings.delta_bits_per_weight,
                                    ..Default::default()
                                },
                                &[&ctx2.key],
                                &meta,
                                &tick,
                            )
                        };
                        Ok(r)
                    })
                    .await?;
                    match r {
                        Ok(report) => {
                            packed.push(Packed {
                                target,
                                path: out,
                                report: None,
                                delta: Some(DeltaPacked {
                                    base_path,
                                    base_repo: row.repo.clone(),
                                    base_file: row.path.clone(),
                                    report,
                                }),
                                note: None,
                            });
                            continue;
                        }
                        Err(e) if base_unfit(&e) && !adapter => {
                            target_note = Some(format!("{base_repo} is not this model's base: {e}"))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if *adapter {
                return Err(JobError::permanent(format!(
                    "an adapter needs its base: {}",
                    target_note.unwrap_or_default()
                )));
            }
        }
        let (ctx2, dir, out2) = (ctx.clone(), model_dir.clone(), out.clone());
        let n = targets.len() as f64;
        let report = blocking(move || {
            stage(
                &ctx2,
                id,
                &format!("pack {}", target_name(target)),
                0.2 + 0.6 * k as f64 / n,
            );
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
            report: Some(report),
            delta: None,
            note: target_note,
        });
    }

    // A derived model some of whose targets could not use the base: say so on the job.
    let notes: Vec<&str> = packed.iter().filter_map(|p| p.note.as_deref()).collect();
    if derived.is_some() && !notes.is_empty() {
        let kind = if packed.iter().all(|p| p.delta.is_none()) {
            KIND_FULL
        } else if adapter {
            KIND_ADAPTER
        } else {
            KIND_DELTA
        };
        ctx.store
            .set_kind(id, kind, base_of_job.as_deref(), Some(&notes.join("; ")))?;
    }

    // Verify what was written, as a downloader would (a delta with its base).
    stage(ctx, id, "verify", 0.8);
    let public = ctx.key.verifying_key();
    for p in &packed {
        let path = p.path.clone();
        let base = p.delta.as_ref().map(|d| d.base_path.clone());
        blocking(move || {
            let a = Artifact::open_location(&path.display().to_string())?;
            match base {
                None => {
                    a.verify_signature(&public)?;
                    a.verify_chunks(&|_| {})?;
                }
                Some(b) => {
                    let d = tenpak::delta::DeltaSource::new(
                        a,
                        Artifact::open_location(&b.display().to_string())?,
                    )?;
                    d.verify_signatures(&public)?;
                    d.verify_chunks(&|_| {})?;
                }
            }
            Ok(())
        })
        .await?;
    }

    // Perplexity, where configured and the architecture is supported.
    stage(ctx, id, "evaluate", 0.85);
    let deltas = match (&ctx.settings.eval_text, adapter) {
        (None, _) => vec![Err("no evaluation text configured".to_string()); packed.len()],
        (_, true) => vec![
            Err("an adapter has no model of its own to compare with".to_string());
            packed.len()
        ],
        (Some(text), false) => {
            let (text, dir, tokens) = (text.clone(), model_dir.clone(), ctx.settings.eval_tokens);
            let (scratch, limit) = (work.join("tokenize"), ctx.settings.tokenize_timeout);
            let arts: Vec<(PathBuf, Option<PathBuf>)> = packed
                .iter()
                .map(|p| {
                    (
                        p.path.clone(),
                        p.delta.as_ref().map(|d| d.base_path.clone()),
                    )
                })
                .collect();
            let n = arts.len();
            blocking(move || Ok(measure(&dir, &arts, &text, tokens, &scratch, limit)))
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
        let declare = declarer(ctx.store.clone(), id);
        let ing = blocking(move || Ok(chunks.ingest(&path, &manifest_chunks, &declare)?)).await?;
        let digest_hex = p.digest().trim_start_matches("sha256:").to_string();
        let file = artifact_file(&job.repo, p.target);
        let (bits_q, bits_file, source_bytes) = match (&p.report, &p.delta) {
            (Some(r), _) => (
                r.report.bits_per_weight_quantized,
                r.bits_per_weight_artifact,
                r.report.source_bytes,
            ),
            (_, Some(d)) => (
                d.report.bits_per_weight,
                d.report.bits_per_weight,
                d.report.source_bytes,
            ),
            _ => (0.0, 0.0, 0),
        };
        let details = crate::report::ArtifactDetails {
            digest: p.digest().to_string(),
            target: target_name(p.target).into(),
            file: file.clone(),
            bytes: p.file_bytes(),
            bits_quantized: bits_q,
            bits_file,
            source_bytes,
            ppl_delta: delta.as_ref().ok().copied(),
            ppl_note: delta.as_ref().err().cloned(),
            signer: sign::key_id(&public),
            base: p.delta.as_ref().map(|d| crate::report::BaseDetails {
                repo: d.base_repo.clone(),
                file: d.base_file.clone(),
                digest: d.report.base.clone(),
                own_bytes: d.report.full_bytes,
                adapter,
            }),
            note: p.note.clone(),
            tensors: match (&p.report, &p.delta) {
                (Some(r), _) => crate::report::ArtifactDetails::tensors_of_pack(&r.report),
                (_, Some(d)) => crate::report::ArtifactDetails::tensors_of_delta(&d.report),
                _ => vec![],
            },
        };
        let row = ArtifactRow {
            details: serde_json::to_string(&details).ok(),
            id: digest_hex.clone(),
            job_id: id,
            repo: companion.clone(),
            path: file.clone(),
            size: p.file_bytes(),
            source: format!("{}@{commit}", job.repo),
            target: target_name(p.target).into(),
            bits_per_weight: bits_q,
            sha256: ing.sha256.clone(),
            pieces: ing.pieces.clone(),
            private: access.restricted(),
        };
        db(ctx, move |s| s.add_artifact(&row)).await?;
        files.push(RepoFile {
            path: file.clone(),
            sha256: ing.sha256,
            size: p.file_bytes(),
            artifact: Some(digest_hex),
        });
        rows.push(CardRow {
            file,
            target: target_name(p.target).into(),
            bits_quantized: bits_q,
            bits_file,
            bytes: p.file_bytes(),
            source_bytes,
            ppl_delta: delta,
            digest: p.digest().to_string(),
            delta: p.delta.as_ref().map(|d| CardDelta {
                base_repo: d.base_repo.clone(),
                base_file: d.base_file.clone(),
                base_digest: d.report.base.clone(),
                own_bytes: d.report.full_bytes,
                adapter,
            }),
            note: p.note.clone(),
        });
    }
    let public_hex = hex::encode(public.as_bytes());
    let key_id = sign::key_id(&public);
    let source_dtype = packed
        .first()
        .and_then(|p| p.report.as_ref())
        .map(|r| {
            if r.report.source_bits_per_weight >= 32.0 {
                "f32"
            } else {
                "bf16/fp16"
            }
        })
        .unwrap_or("bf16/fp16");
    let licence = match ctx
        .hub
        .read_small_file(&job.repo, &commit, "README.md")
        .await?
    {
        Some(b) => tenpak::hub::card::licence_lines(&String::from_utf8_lossy(&b)),
        None => vec![],
    };
    let access_text = access.describe();
    let card_text = card::render(
        &CardInfo {
            licence: &licence,
            access: &access_text,
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
    let card_sha = {
        let (chunks, declare, text) = (
            ctx.chunks.clone(),
            declarer(ctx.store.clone(), id),
            card_text.clone(),
        );
        blocking(move || Ok(chunks.put_bytes(text.as_bytes(), &declare)?)).await?
    };
    files.push(RepoFile {
        path: "README.md".into(),
        sha256: card_sha,
        size: card_text.len() as u64,
        artifact: None,
    });

    // Publish: one commit with every file, made on top of the companion's head as it was
    // looked at (`parentCommit`): a commit that lands in between (another registry
    // process, a person) makes the Hub refuse ours with 412, and we look again.
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
    let mut looks = 0;
    let (report, t_up) = loop {
        looks += 1;
        if let Some(note) = superseded(ctx, &job, &commit).await? {
            tracing::info!("job {id}: {note}");
            let n2 = note.clone();
            db(ctx, move |s| s.set_note(id, &n2)).await?;
            let _ = std::fs::remove_dir_all(&work);
            return Ok(Outcome::Superseded);
        }
        let mut seen = ctx.hub.head_listing(&companion).await?;
        if seen.is_none() {
            // A new companion: the Hub makes it with an initial commit, which is the
            // parent ours must have.
            ctx.hub.create_repo(&companion, access.restricted()).await?;
            seen = ctx.hub.head_listing(&companion).await?;
        }
        // A previous attempt's commit already holds these very artifacts (the process
        // was killed after the Hub took the commit, before it was recorded here): it is
        // recorded now, not made twice.
        if let Some((head, listed)) = &seen {
            if already_published(listed, &packed, &files, &job.repo)? {
                tracing::info!("job {id}: {companion}@{head} already holds these artifacts (an earlier attempt's commit): recorded, not committed again");
                let upload = serde_json::json!({ "transfer": "none", "bytes": 0, "bytes_sent": 0,
                    "seconds": 0.0, "note": "an earlier attempt's commit" });
                return record_published(
                    ctx,
                    id,
                    &companion,
                    files,
                    &access,
                    Some(head.clone()),
                    &upload,
                    &work,
                )
                .await;
            }
        }
        stage(ctx, id, "publish", 0.95);
        let mut uploads: Vec<Upload> = packed
            .iter()
            .map(|p| Upload::File {
                path_in_repo: artifact_file(&job.repo, p.target),
                source: p.path.clone(),
            })
            .collect();
        uploads.push(Upload::Bytes {
            path_in_repo: "README.md".into(),
            bytes: card_text.clone().into_bytes(),
        });
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
        // Still ours? A job whose lease was taken over (this process stalled, another
        // took the job) must not publish beside the new holder.
        let (owner, lease) = (ctx.owner.clone(), ctx.settings.job_lease);
        if !db(ctx, move |s| s.renew(id, &owner, lease)).await? {
            return Err(JobError::lost_lease());
        }
        let t_up = Instant::now();
        let parent = seen.as_ref().map(|(h, _)| h.as_str());
        match ctx
            .hub
            .commit_files_on(&companion, uploads, &message, parent, Some(progress))
            .await
        {
            Err(tenpak::Error::Hub {
                status: Some(412), ..
            }) if looks < 5 => {
                tracing::info!(
                    "job {id}: {companion} moved while we committed (412): looking again"
                );
                continue;
            }
            r => break (r?, t_up),
        }
    };
    let upload = serde_json::json!({
        "transfer": report.transfer,
        "bytes": report.bytes_total,
        "bytes_sent": report.bytes_sent,
        "seconds": t_up.elapsed().as_secs_f64(),
    });
    tracing::info!(
        "job {id}: published {} ({:?}): {} bytes, {} sent",
        companion,
        report.transfer,
        report.bytes_total,
        report.bytes_sent
    );
    record_published(
        ctx,
        id,
        &companion,
        files,
        &access,
        report.commit,
        &upload,
        &work,
    )
    .await
}

/// Records a companion commit: the registry's revision of the companion, the job's
/// published commit; removes the work dir.
#[allow(clippy::too_many_arguments)]
async fn record_published(
    ctx: &Arc<Ctx>,
    id: i64,
    companion: &str,
    files: Vec<RepoFile>,
    access: &tenpak::hub::Access,
    hub_commit: Option<String>,
    upload: &serde_json::Value,
    work: &std::path::Path,
) -> Result<Outcome, JobError> {
    let revision_id = revision_id(companion, &files);
    let revision = RepoRevision {
        repo: companion.to_string(),
        commit: revision_id.clone(),
        files,
        created_at: crate::store::now(),
        private: access.restricted(),
    };
    let (published, upload) = (
        hub_commit.unwrap_or_else(|| revision_id.clone()),
        upload.clone(),
    );
    db(ctx, move |s| {
        s.add_revision(&revision)?;
        s.set_published(id, &published, &upload)
    })
    .await?;
    let _ = std::fs::remove_dir_all(work);
    Ok(Outcome::Published)
}

/// Why `job` must not publish: its commit is no longer the source branch's head, and the
/// head has a job that has not failed (it publishes, or did: an older commit finishing
/// last must not replace it). `None`: publish.
async fn superseded(ctx: &Ctx, job: &Job, commit: &str) -> Result<Option<String>, JobError> {
    let head = ctx.hub.resolve(&job.repo, &ctx.settings.branch).await?;
    if head == commit {
        return Ok(None);
    }
    Ok(ctx
        .store
        .job_for(&job.repo, &head)?
        .filter(|newer| newer.state != JobState::Failed)
        .map(|newer| {
            format!(
                "superseded: {}@{} is {} (job {}, {}); this commit's artifacts are kept here, not published",
                job.repo,
                ctx.settings.branch,
                &head[..12.min(head.len())],
                newer.id,
                if newer.state == JobState::Done { "published" } else { "publishing it" }
            )
        }))
}

/// Whether the companion's listed files already hold every artifact of `packed` (by
/// content: LFS sha256, or git blob id for inline files).
fn already_published(
    listed: &[tenpak::hub::ListedFile],
    packed: &[Packed],
    files: &[RepoFile],
    repo: &str,
) -> Result<bool, JobError> {
    for p in packed {
        let path = artifact_file(repo, p.target);
        let Some(f) = files.iter().find(|f| f.path == path) else {
            return Ok(false);
        };
        let Some(l) = listed.iter().find(|l| l.path == f.path) else {
            return Ok(false);
        };
        if l.size != f.size {
            return Ok(false);
        }
        let same = match &l.sha256 {
            Some(s) => *s == f.sha256,
            None => l.git_oid == tenpak::hub::git_blob_oid_of_file(&p.path)?,
        };
        if !same {
            return Ok(false);
        }
    }
    Ok(!packed.is_empty())
}

/// Where job `id` writes its artifacts before they are ingested and published.
fn work_dir(ctx: &Ctx, id: i64) -> std::path::PathBuf {
    ctx.settings.data_dir.join("work").join(format!("job-{id}"))
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
    artifacts: &[(PathBuf, Option<PathBuf>)],
    text: &Path,
    tokens: usize,
    scratch: &Path,
    limit: Duration,
) -> Vec<Result<f64, String>> {
    use tenpak::runtime::{perplexity, Model, Windows};
    let base = (|| -> Result<(Vec<u32>, Option<u32>, Windows, f64), String> {
        let src = tenpak::models::open(dir, DType::BF16).map_err(|e| e.to_string())?;
        let tok_bytes = tenpak::source::side_files(src.as_ref())
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|(n, _)| n == "tokenizer.json")
            .map(|(_, b)| b)
            .ok_or("the model has no tokenizer.json")?;
        let s = std::fs::read_to_string(text).map_err(|e| format!("{}: {e}", text.display()))?;
        // The model's tokenizer is untrusted: a child process, under a time limit.
        let exe = std::env::current_exe().map_err(|e| format!("the registry's binary: {e}"))?;
        let t = crate::tokenize::isolated(
            &exe,
            &tok_bytes,
            crate::tokenize::prefix_for(&s, tokens),
            scratch,
            limit,
        )?;
        let ids = t.ids;
        let ctx_len = 512.min(tokens).min(ids.len().saturating_sub(1)).max(1);
        let w = Windows {
            ctx: ctx_len,
            stride: ctx_len,
            max_tokens: tokens,
        };
        let bos = t.bos;
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
        .map(|(a, base)| {
            let a = a.display().to_string();
            let src: Box<dyn tenpak::source::TensorSource> = match base {
                None => {
                    Box::new(tenpak::artifact::ArtifactSource::open(&a).map_err(|e| e.to_string())?)
                }
                Some(b) => Box::new(
                    tenpak::delta::DeltaSource::open(&a, &b.display().to_string())
                        .map_err(|e| e.to_string())?,
                ),
            };
            let model = Model::load(src.as_ref()).map_err(|e| e.to_string())?;
            let r = perplexity(&model, &ids, bos, w, &|_, _| {}).map_err(|e| e.to_string())?;
            Ok((r.ppl / base_ppl - 1.0) * 100.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_worker_goes_on() {
        let e = contained(async {
            if std::hint::black_box(true) {
                panic!("index out of bounds in a hostile tensor");
            }
            Ok(())
        })
        .await
        .expect_err("a panic is an error");
        assert!(!e.transient);
        assert!(
            e.message
                .contains("index out of bounds in a hostile tensor"),
            "{}",
            e.message
        );
        // The same worker runs the next job.
        assert_eq!(contained(async { Ok(7) }).await.expect("next job"), 7);
        let e = blocking(|| -> Result<(), JobError> { panic!("in a blocking pack") })
            .await
            .expect_err("a panic is an error");
        assert!(e.message.contains("in a blocking pack"), "{}", e.message);
    }

    #[test]
    fn a_full_disk_is_worth_a_retry_and_a_bad_model_is_not() {
        let full = tenpak::Error::io(
            "write",
            "/data/work/job-1/x.tnpk",
            std::io::Error::from_raw_os_error(28), // ENOSPC
        );
        assert!(JobError::from(full).transient);
        let quota = tenpak::Error::io(
            "write",
            "/data/x",
            std::io::Error::from_raw_os_error(122), // EDQUOT
        );
        assert!(JobError::from(quota).transient);
        let missing = tenpak::Error::io(
            "open",
            "/data/model/config.json",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(!JobError::from(missing).transient);
    }
}
