//! The job store and the catalog, as traits ([`JobStore`]: the queue of jobs and their
//! states; [`Catalog`]: artifacts and companion revisions), with SQLite as the embedded
//! implementation ([`sqlite::SqliteStore`], one file under the data dir, WAL mode).
//! Another engine (PostgreSQL, for many registry processes) implements the same traits.
//!
//! A job is "compress repo R at commit S with targets T". Its idempotency key is unique,
//! so a redelivered webhook finds the existing job instead of making a second one. States
//! run `queued → running → done | failed`; a job found `running` when the registry starts
//! was interrupted (crash, kill) and goes back to `queued`, keeping its attempt count,
//! unless it has used up `max_attempts` (a job that kills the process must not be tried
//! at every start): then it is `failed`. A failed job goes back to the queue only by a
//! retry ([`JobStore::retry`]: the API's `POST /jobs/{id}/retry`, the CLI's `retry`, or a
//! repeated request for the same commit).
//! Artifacts and companion-repo revisions the registry published are recorded here too.

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker holds it (and its lease).
    Running,
    /// Waits for another job (its base's) to finish; then queued again.
    Waiting,
    /// Published (or stored and superseded).
    Done,
    /// Gave up (error kept): the dead letters.
    Failed,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Waiting,
        JobState::Done,
        JobState::Failed,
    ];

    /// Its name (as the API and the database spell it).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Job kinds: decided when the job runs, from the model card (`base_model`).
pub const KIND_AUTO: &str = "auto";
/// A model packed on its own (also every job made to provide a base).
pub const KIND_FULL: &str = "full";
/// A fine-tune packed as deltas against its base's artifacts.
pub const KIND_DELTA: &str = "delta";
/// A PEFT adapter packed against its base's artifacts.
pub const KIND_ADAPTER: &str = "adapter";
/// `POST /evaluate`: perplexity of a model or artifact on a text (nothing published).
pub const KIND_EVALUATE: &str = "evaluate";
/// `POST /optimize`: the cost optimizer's study of a model (nothing published).
pub const KIND_OPTIMIZE: &str = "optimize";

/// Whether jobs of `kind` analyse (evaluate, optimize) rather than publish.
pub fn is_analysis(kind: &str) -> bool {
    kind == KIND_EVALUATE || kind == KIND_OPTIMIZE
}

/// One job, as the Studio API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Job {
    /// Job id.
    pub id: i64,
    /// `owner/name` of the source model.
    pub repo: String,
    /// The exact commit compressed (may be a branch name until the worker resolves it,
    /// for API jobs).
    pub revision: String,
    /// Targets packed, comma-separated.
    pub targets: String,
    /// `webhook` or `api`.
    pub origin: String,
    /// Where it is.
    pub state: JobState,
    /// auto (not decided yet) / full / delta / adapter, or evaluate / optimize.
    pub kind: String,
    /// The request of an evaluate or optimize job (JSON); its result is at
    /// `/evaluate/{id}` or `/optimize/{id}`.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// The base `owner/name@commit` a delta or adapter job is packed against.
    pub base: Option<String>,
    /// The job this one waits for (the base's).
    pub waits_on: Option<i64>,
    /// Why a derived model was packed in full (base unreadable, not its base, ...).
    pub note: Option<String>,
    /// The pipeline stage last entered.
    pub stage: String,
    /// 0–1.
    pub progress: f64,
    /// Attempts started.
    pub attempts: i64,
    /// Last error, if any.
    pub error: Option<String>,
    /// Companion repository it publishes to.
    pub companion: String,
    /// Commit made on the companion repository, once published.
    pub published_commit: Option<String>,
    /// How the publication travelled: `{transfer, bytes, bytes_sent, seconds}` (JSON).
    #[schema(value_type = Option<Object>)]
    pub upload: Option<serde_json::Value>,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds.
    pub updated_at: f64,
    /// Unix seconds, when finished.
    pub finished_at: Option<f64>,
}

/// A stored artifact.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArtifactRow {
    /// Manifest digest, hex (the artifact's id).
    pub id: String,
    /// Job that made it.
    pub job_id: i64,
    /// Companion repository.
    pub repo: String,
    /// File name in the companion repository.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Source model and commit.
    pub source: String,
    /// Target name.
    pub target: String,
    /// Bits per weight of the quantized linear layers.
    pub bits_per_weight: f64,
    /// sha256 hex of the whole file (its entity tag).
    pub sha256: String,
    /// The pieces (sha256 hex, length) the file is made of, in order.
    #[serde(skip)]
    pub pieces: Vec<(String, u64)>,
    /// Made from a private or gated source: served only with the API token.
    pub private: bool,
    /// What the dashboard shows of it ([`crate::ui::ArtifactDetails`] as JSON: quality,
    /// signer, base, per-tensor bits and errors); `None` for artifacts stored before.
    #[serde(skip)]
    pub details: Option<String>,
}

/// A revision of a companion repository served by the Hub-compatible API.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RepoRevision {
    /// Companion `owner/name`.
    pub repo: String,
    /// 40-hex revision id.
    pub commit: String,
    /// Files: (path, artifact id or `None` for the model card), in order.
    pub files: Vec<RepoFile>,
    /// Unix seconds.
    pub created_at: f64,
    /// The companion of a private or gated source: served only with the API token.
    pub private: bool,
}

/// One file of a companion revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepoFile {
    /// Path in the repository.
    pub path: String,
    /// sha256 hex of the contents.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Artifact id when the file is a stored artifact.
    pub artifact: Option<String>,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("job store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Another database engine failed (its message).
    #[error("job store: {0}")]
    Backend(String),
    /// The database cannot be reached now (its server restarted, the network failed): the
    /// call may be made again shortly (the connection is re-established before the next).
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// A row that should be JSON is not.
    #[error("job store: corrupt row: {0}")]
    Corrupt(String),
}

/// Store results.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A revision from its row (the files column is JSON), for every engine.
pub fn revision_of(
    repo: String,
    commit: String,
    files: &str,
    created_at: f64,
    private: bool,
) -> Result<RepoRevision> {
    Ok(RepoRevision {
        files: serde_json::from_str::<Vec<RepoFile>>(files)
            .map_err(|e| StoreError::Corrupt(format!("revision {repo}@{commit}: {e}")))?,
        repo,
        commit,
        created_at,
        private,
    })
}

/// What [`JobStore::requeue_interrupted`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    /// Jobs put back in the queue.
    pub requeued: usize,
    /// Jobs failed for having been interrupted `max_attempts` times.
    pub failed: usize,
}

/// Seconds since the Unix epoch (job and revision timestamps).
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What inserting a job did.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    /// The job (new or existing).
    pub job: Job,
    /// False when the key already had a job.
    pub created: bool,
    /// The key's job had failed and was put back in the queue (set by the API).
    pub retried: bool,
}

/// A new job's facts.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Idempotency key.
    pub key: &'a str,
    /// Source `owner/name`.
    pub repo: &'a str,
    /// Commit (or branch, for API jobs before resolution).
    pub revision: &'a str,
    /// Comma-separated targets.
    pub targets: &'a str,
    /// `webhook` / `api`.
    pub origin: &'a str,
    /// Companion repository.
    pub companion: &'a str,
    /// [`KIND_AUTO`], [`KIND_FULL`] for a job that provides a base, or an analysis kind.
    pub kind: &'a str,
    /// An analysis job's request (JSON).
    pub params: Option<&'a str>,
}

/// The queue of jobs: states, attempts, leases, progress, webhook deliveries. Every
/// method is one short transaction; implementations are shared by all workers and
/// handlers (`Send + Sync`), and callers on async threads run them through
/// `spawn_blocking` where they may wait on the database.
pub trait JobStore: Send + Sync {
    /// Puts jobs that were running when the process stopped back in the queue, except
    /// those that have had `max_attempts` attempts already: a job that kills the process
    /// (out of memory, an allocation abort) would otherwise be claimed first at every
    /// start, forever. Those end `failed` with the reason.
    fn requeue_interrupted(&self, max_attempts: i64) -> Result<Interrupted>;

    /// Puts running jobs whose lease ran out back in the queue (their worker's process
    /// died or hung: a live worker renews its lease), or fails them after
    /// `max_attempts`, as [`JobStore::requeue_interrupted`] does at start.
    fn requeue_expired(&self, max_attempts: i64) -> Result<Interrupted>;

    /// Extends `owner`'s lease on running job `id` to `lease` from now. `false`: the job
    /// is no longer `owner`'s (its lease ran out and it was requeued, or it ended).
    fn renew(&self, id: i64, owner: &str, lease: Duration) -> Result<bool>;

    /// Puts a failed job back in the queue with its attempts counted afresh (an
    /// operator's retry, or a repeated request for the same model and commit).
    /// `Ok(None)`: no such job; a job in another state is returned unchanged.
    fn retry(&self, id: i64) -> Result<Option<(Job, bool)>>;

    /// Inserts a job unless its key exists; either way returns the job.
    fn enqueue(&self, j: &NewJob<'_>) -> Result<Enqueued>;

    /// Records a webhook delivery and what was decided.
    fn record_delivery(
        &self,
        webhook_id: Option<&str>,
        scope: Option<&str>,
        repo: Option<&str>,
        decision: &str,
        job_id: Option<i64>,
    ) -> Result<()>;

    /// Number of deliveries recorded.
    fn delivery_count(&self) -> Result<i64>;

    /// Takes the oldest queued job for `owner`, marking it running, counting the attempt
    /// and giving `owner` a lease of `lease` (renewed with [`Store::renew`]). One
    /// statement: two workers cannot take the same job.
    fn claim(&self, owner: &str, lease: Duration) -> Result<Option<Job>>;

    /// Records what a job turned out to be (its kind, its base, why it is packed in full).
    fn set_kind(&self, id: i64, kind: &str, base: Option<&str>, note: Option<&str>) -> Result<()>;

    /// Sets a job's note (stored [redacted](crate::redact)).
    fn set_note(&self, id: i64, note: &str) -> Result<()>;

    /// Parks a running job until job `on` (its base's) is done or failed. The attempt
    /// it used is given back: waiting is not failing.
    fn wait_on(&self, id: i64, on: i64) -> Result<()>;

    /// Repositories with a job queued, running or waiting.
    fn active_repos(&self) -> Result<std::collections::HashSet<String>>;

    /// Whether a job of `repo` other than `except` is queued, running or waiting.
    fn repo_busy(&self, repo: &str, except: i64) -> Result<bool>;

    /// The job that provides `repo` at `commit`: a done one first, then one still
    /// underway, then a failed one (newest first within each).
    fn job_for(&self, repo: &str, commit: &str) -> Result<Option<Job>>;

    /// Jobs waiting on job `id`.
    fn waiters(&self, id: i64) -> Result<Vec<i64>>;

    /// Updates a running job's stage and progress.
    fn progress(&self, id: i64, stage: &str, progress: f64) -> Result<()>;

    /// Sets the resolved commit of a job.
    fn set_revision(&self, id: i64, revision: &str) -> Result<()>;

    /// Records the companion commit (before the job is marked done, so a restart
    /// between the two does not publish again).
    fn set_published(&self, id: i64, commit: &str, upload: &serde_json::Value) -> Result<()>;

    /// Marks a job done (stage `published`, or `done` for an analysis job).
    fn finish(&self, id: i64) -> Result<()>;

    /// Stores an analysis job's result (JSON), before it is marked done.
    fn set_result(&self, id: i64, result: &str) -> Result<()>;

    /// An analysis job's result, if stored.
    fn result(&self, id: i64) -> Result<Option<String>>;

    /// Records a failed attempt: back to the queue when `retry`, else failed. The error
    /// is stored [redacted](crate::redact) (the public API serves it).
    fn fail(&self, id: i64, error: &str, retry: bool) -> Result<()>;

    /// One job.
    fn job(&self, id: i64) -> Result<Option<Job>>;

    /// Jobs, newest first; only those in `state` when given (`failed`: the dead letters).
    fn jobs(&self, state: Option<JobState>, limit: i64, offset: i64) -> Result<(Vec<Job>, i64)>;

    /// Counts of jobs per state.
    fn counts(&self) -> Result<Vec<(String, i64)>>;

    /// Keeps the newest `keep` webhook deliveries; returns how many were deleted.
    fn prune_deliveries(&self, keep: i64) -> Result<usize>;

    /// Records that job `id` is about to use chunk-store pieces `shas` (before it looks
    /// whether they are stored), so that no sweep removes one before its artifact is
    /// recorded: [`Catalog::referenced_pieces`] counts the declared pieces of every job
    /// queued, running or waiting. `false`: a sweep holds its lease
    /// ([`Catalog::begin_sweep`]) and nothing was recorded; declare again shortly. One
    /// transaction that reads the sweep lease under a shared lock: a sweep that starts
    /// after it sees the declaration, one that started before it made it wait.
    fn declare_pieces(&self, id: i64, shas: &[String]) -> Result<bool>;

    /// Calls `wake` whenever another process queues or ends a job, so that idle workers
    /// look at once instead of at their next poll (PostgreSQL: `LISTEN`, on a connection
    /// of its own, re-established with back-off). The default does nothing: the embedded
    /// store has one process, which wakes its own workers.
    fn watch(&self, wake: Arc<dyn Fn() + Send + Sync>) -> Result<()> {
        let _ = wake;
        Ok(())
    }
}

/// Merges `shas` into a job's `pieces_in_use` column (a JSON array, or NULL).
pub fn merge_pieces(column: Option<&str>, shas: &[String]) -> Result<String> {
    let mut have: Vec<String> = match column {
        Some(c) => serde_json::from_str(c).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        None => Vec::new(),
    };
    let known: std::collections::HashSet<String> = have.iter().cloned().collect();
    have.extend(shas.iter().filter(|s| !known.contains(*s)).cloned());
    serde_json::to_string(&have).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// What the registry made: artifacts (with the chunk-store pieces they are made of) and
/// the companion repositories' revisions the Hub-compatible API serves.
pub trait Catalog: Send + Sync {
    /// Artifacts a job produced, with their rows.
    fn artifact_rows_of_job(&self, job_id: i64) -> Result<Vec<ArtifactRow>> {
        self.artifacts_of_job(job_id)?
            .iter()
            .filter_map(|id| self.artifact(id).transpose())
            .collect()
    }

    /// Records a stored artifact (no-op when the digest is known).
    fn add_artifact(&self, a: &ArtifactRow) -> Result<()>;

    /// One artifact by id.
    fn artifact(&self, id: &str) -> Result<Option<ArtifactRow>>;

    /// Artifact ids a job produced.
    fn artifacts_of_job(&self, job_id: i64) -> Result<Vec<String>>;

    /// Every chunk-store piece a recorded artifact or companion revision names, or a job
    /// queued, running or waiting declared ([`JobStore::declare_pieces`]): the mark of
    /// the chunk store's mark and sweep.
    fn referenced_pieces(&self) -> Result<std::collections::HashSet<String>>;

    /// Takes the sweep lease until `lease` from now: `false` when another sweep (any
    /// process) holds it. While it is held no job can declare pieces, so the mark read
    /// after taking it stays true until [`Catalog::end_sweep`].
    fn begin_sweep(&self, lease: Duration) -> Result<bool>;

    /// Extends the sweep lease this process holds to `lease` from now (its heartbeat).
    fn renew_sweep(&self, lease: Duration) -> Result<()>;

    /// Gives the sweep lease back.
    fn end_sweep(&self) -> Result<()>;

    /// Records a companion revision (idempotent).
    fn add_revision(&self, r: &RepoRevision) -> Result<()>;

    /// A companion revision: `rev` is a commit id, or `main` for the latest.
    fn revision(&self, repo: &str, rev: &str) -> Result<Option<RepoRevision>>;

    /// The newest revision of every companion repository, newest first (at most `limit`).
    fn companions(&self, limit: i64) -> Result<Vec<RepoRevision>>;
}

/// The error text and stage of jobs [`JobStore::requeue_interrupted`] (`expired`: false)
/// or [`JobStore::requeue_expired`] (true) fails or requeues; one wording for every
/// engine.
pub fn requeue_wording(expired: bool) -> (&'static str, &'static str) {
    if expired {
        (
            "the worker's lease ran out (its process died or hung) in each of its ",
            "requeued: its lease ran out",
        )
    } else {
        (
            "the registry stopped during each of its ",
            "requeued after restart",
        )
    }
}

/// The chunk-store pieces named by artifacts' `pieces`, revisions' `files` and active
/// jobs' `pieces_in_use` columns (JSON as stored): every artifact's pieces, the files
/// of revisions that are not artifacts (one piece each), and what jobs declared.
pub fn referenced_in(
    pieces: impl IntoIterator<Item = String>,
    files: impl IntoIterator<Item = String>,
    in_use: impl IntoIterator<Item = String>,
) -> Result<std::collections::HashSet<String>> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let mut out = std::collections::HashSet::new();
    for u in in_use {
        let shas: Vec<String> = serde_json::from_str(&u).map_err(corrupt)?;
        out.extend(shas);
    }
    for p in pieces {
        let pieces: Vec<(String, u64)> = serde_json::from_str(&p).map_err(corrupt)?;
        out.extend(pieces.into_iter().map(|(sha, _)| sha));
    }
    for f in files {
        let files: Vec<RepoFile> = serde_json::from_str(&f).map_err(corrupt)?;
        out.extend(
            files
                .into_iter()
                .filter(|f| f.artifact.is_none())
                .map(|f| f.sha256),
        );
    }
    Ok(out)
}

/// Runs store calls on the blocking pool: SQLite waits on its lock and the disk,
/// PostgreSQL on the network, and the async threads serve requests meanwhile. The one
/// way the handlers and the pipeline reach the store from async code.
pub async fn off_thread<T: Send + 'static>(
    store: &std::sync::Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(s.as_ref()))
        .await
        .map_err(|e| StoreError::Backend(format!("store task: {e}")))?
}

/// Both halves, as the registry's context holds them.
pub trait Store: JobStore + Catalog {}

impl<T: JobStore + Catalog> Store for T {}
