//! The PostgreSQL implementation of [`JobStore`] and [`Catalog`], for several registry
//! processes sharing one queue (`--database postgres://…` or `TENPAK_DATABASE_URL`).
//!
//! - Migrations are versioned SQL files (`registry/migrations/postgres/V*__*.sql`)
//!   embedded in the binary and applied at open by `refinery` (its history table records
//!   which ran).
//! - A job is claimed with `SELECT … FOR UPDATE SKIP LOCKED` inside the claiming `UPDATE`:
//!   two workers (threads or processes) never take the same job, and neither waits on the
//!   other's row lock.
//! - The `postgres` client runs its own runtime, so its connection lives on a thread of its
//!   own and every call is sent there: callers on tokio threads (between awaits) or on the
//!   blocking pool wait for a short answer, as they do for SQLite.
//! - A connection the server closed is replaced before the next call (the call that met
//!   it fails as a store error, which a job takes as transient).

use std::sync::mpsc::{sync_channel, Sender};
use std::sync::Mutex;

use postgres::{Client, NoTls, Row};

use super::{
    now, ArtifactRow, Catalog, Enqueued, Interrupted, Job, JobState, JobStore, NewJob,
    RepoRevision, Result, StoreError,
};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

type Call = Box<dyn FnOnce(&mut Client) + Send>;

/// The store: one connection, owned by its thread.
pub struct PgStore {
    calls: Mutex<Sender<Call>>,
    url: String,
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // A server error's Display is only "db error": its message and code say what.
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            // Class 08 (connection exceptions) and 57P01-57P03 (admin shutdown, crash
            // shutdown, cannot connect now): the server went away or is restarting.
            let gone =
                code.code().starts_with("08") || matches!(code.code(), "57P01" | "57P02" | "57P03");
            let text = format!("{} ({})", db.message(), code.code());
            return if gone {
                StoreError::Unavailable(text)
            } else {
                StoreError::Backend(text)
            };
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Backend(e.to_string())
        }
    }
}

fn job_of(r: &Row) -> Result<Job> {
    let state: String = r.try_get("state")?;
    Ok(Job {
        id: r.try_get("id")?,
        repo: r.try_get("repo")?,
        revision: r.try_get("revision")?,
        targets: r.try_get("targets")?,
        origin: r.try_get("origin")?,
        state: JobState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("job state {state:?}")))?,
        kind: r.try_get("kind")?,
        params: r
            .try_get::<_, Option<String>>("params")?
            .and_then(|u| serde_json::from_str(&u).ok()),
        base: r.try_get("base")?,
        waits_on: r.try_get("waits_on")?,
        note: r.try_get("note")?,
        stage: r.try_get("stage")?,
        progress: r.try_get("progress")?,
        attempts: r.try_get("attempts")?,
        error: r.try_get("error")?,
        companion: r.try_get("companion")?,
        published_commit: r.try_get("published_commit")?,
        upload: r
            .try_get::<_, Option<String>>("upload")?
            .and_then(|u| serde_json::from_str(&u).ok()),
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

const QUEUED: &str = "queued";
const RUNNING: &str = "running";
const WAITING: &str = "waiting";
const DONE: &str = "done";
const FAILED: &str = "failed";

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`), applies pending migrations.
    pub fn open(url: &str) -> Result<Self> {
        let own_url = url.to_string();
        let url = url.to_string();
        let (tx, rx) = std::sync::mpsc::channel::<Call>();
        let (ready_tx, ready_rx) = sync_channel::<Result<()>>(1);
        std::thread::Builder::new()
            .name("tenpak-postgres".into())
            .spawn(move || {
                let mut client = match Client::connect(&url, NoTls) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                match embedded::migrations::runner().run(&mut client) {
                    Ok(report) => {
                        for m in report.applied_migrations() {
                            tracing::info!("job store: applied migration {m}");
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Backend(format!("migrations: {e}"))));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                for call in rx {
                    // A connection the server closed (a restart, a failover, an admin's
                    // terminate) is replaced before the next call; the call that met the
                    // closed connection failed as a store error (transient for jobs).
                    if client.is_closed() {
                        match Client::connect(&url, NoTls) {
                            Ok(c) => client = c,
                            Err(e) => eprintln!("job store: reconnecting to PostgreSQL: {e}"),
                        }
                    }
                    call(&mut client);
                }
            })
            .map_err(|e| StoreError::Backend(format!("database thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| StoreError::Backend("the database thread ended".into()))??;
        Ok(Self {
            calls: Mutex::new(tx),
            url: own_url,
        })
    }

    /// Runs `f` on the connection's thread and waits for its answer.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = sync_channel(1);
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| StoreError::Backend("the database thread ended".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Backend("the database thread ended".into()))?
    }

    /// Running jobs whose lease was held by an earlier process on the same data dir
    /// (`owner_prefix`, see `pipeline::lease_owner`) back to the queue at once, or to
    /// failed when out of attempts: the data dir's lock proves that process is gone, so
    /// its jobs need not wait for their leases to run out.
    pub fn requeue_predecessors(
        &self,
        owner_prefix: &str,
        max_attempts: i64,
    ) -> Result<Interrupted> {
        self.requeue_where(max_attempts, None, Some(format!("{owner_prefix}%")))
    }

    fn requeue(&self, max_attempts: i64, expired_before: Option<f64>) -> Result<Interrupted> {
        self.requeue_where(max_attempts, expired_before, None)
    }

    fn requeue_where(
        &self,
        max_attempts: i64,
        expired_before: Option<f64>,
        owner_like: Option<String>,
    ) -> Result<Interrupted> {
        let (why, stage) = super::requeue_wording(expired_before.is_some());
        self.with(move |c| {
            let t = now();
            let mut tx = c.transaction()?;
            let failed = tx.execute(
                "UPDATE jobs SET state = $1, finished_at = $2, updated_at = $2,
                     lease_owner = NULL, lease_until = NULL,
                     error = $5 || attempts || ' attempts (out of memory, killed, or a crash); not tried again'
                 WHERE state = $3 AND attempts >= $4
                   AND ($6::DOUBLE PRECISION IS NULL OR lease_until < $6)
                   AND ($7::TEXT IS NULL OR lease_owner LIKE $7)",
                &[&FAILED, &t, &RUNNING, &max_attempts, &why, &expired_before, &owner_like],
            )?;
            let requeued = tx.execute(
                "UPDATE jobs SET state = $1, stage = $4, updated_at = $2,
                     lease_owner = NULL, lease_until = NULL
                 WHERE state = $3 AND ($5::DOUBLE PRECISION IS NULL OR lease_until < $5)
                   AND ($6::TEXT IS NULL OR lease_owner LIKE $6)",
                &[&QUEUED, &t, &RUNNING, &stage, &expired_before, &owner_like],
            )?;
            tx.commit()?;
            Ok(Interrupted {
                requeued: requeued as usize,
                failed: failed as usize,
            })
        })
    }
}

/// The methods are documented on the traits.
impl JobStore for PgStore {
    fn watch(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) -> Result<()> {
        let url = self.url.clone();
        std::thread::Builder::new()
            .name("tenpak-listen".into())
            .spawn(move || {
                let mut backoff = std::time::Duration::from_millis(500);
                loop {
                    let r = (|| -> std::result::Result<(), postgres::Error> {
                        let mut c = Client::connect(&url, NoTls)?;
                        c.batch_execute("LISTEN tenpak_jobs")?;
                        backoff = std::time::Duration::from_millis(500);
                        // Anything may have happened while not listening.
                        wake();
                        let mut n = c.notifications();
                        use postgres::fallible_iterator::FallibleIterator;
                        let mut it = n.blocking_iter();
                        while let Some(_note) = it.next()? {
                            wake();
                        }
                        Ok(())
                    })();
                    if let Err(e) = r {
                        tracing::warn!(
                            "job store: listening for new jobs: {e}; again in {:?}",
                            backoff
                        );
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                }
            })
            .map_err(|e| StoreError::Backend(format!("listener thread: {e}")))?;
        Ok(())
    }

    fn requeue_interrupted(&self, max_attempts: i64) -> Result<Interrupted> {
        self.requeue(max_attempts, None)
    }

    fn requeue_expired(&self, max_attempts: i64) -> Result<Interrupted> {
        self.requeue(max_attempts, Some(now()))
    }

    fn renew(&self, id: i64, owner: &str, lease: std::time::Duration) -> Result<bool> {
        let owner = owner.to_string();
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE jobs SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND state = $4",
                &[&id, &owner, &(now() + lease.as_secs_f64()), &RUNNING],
            )? == 1)
        })
    }

    fn retry(&self, id: i64) -> Result<Option<(Job, bool)>> {
        self.with(move |c| {
            let n = c.execute(
                "UPDATE jobs SET state = $2, attempts = 0, stage = 'queued (retry)', progress = 0,
                     updated_at = $3, finished_at = NULL
                 WHERE id = $1 AND state = $4",
                &[&id, &QUEUED, &now(), &FAILED],
            )?;
            c.query_opt("SELECT * FROM jobs WHERE id = $1", &[&id])?
                .map(|r| Ok((job_of(&r)?, n == 1)))
                .transpose()
        })
    }

    fn enqueue(&self, j: &NewJob<'_>) -> Result<Enqueued> {
        let v: Vec<String> = [
            j.key,
            j.repo,
            j.revision,
            j.targets,
            j.origin,
            j.companion,
            j.kind,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let params = j.params.map(str::to_string);
        self.with(move |c| {
            let t = now();
            let n = c.execute(
                "INSERT INTO jobs (key, repo, revision, targets, origin, state, stage, companion,
                                   kind, created_at, updated_at, params)
                 VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $9, $10)
                 ON CONFLICT (key) DO NOTHING",
                &[
                    &v[0], &v[1], &v[2], &v[3], &v[4], &QUEUED, &v[5], &v[6], &t, &params,
                ],
            )?;
            let job = job_of(&c.query_one("SELECT * FROM jobs WHERE key = $1", &[&v[0]])?)?;
            Ok(Enqueued {
                job,
                created: n == 1,
                retried: false,
            })
        })
    }

    fn record_delivery(
        &self,
        webhook_id: Option<&str>,
        scope: Option<&str>,
        repo: Option<&str>,
        decision: &str,
        job_id: Option<i64>,
    ) -> Result<()> {
        let (w, s, r, d) = (
            webhook_id.map(str::to_string),
            scope.map(str::to_string),
            repo.map(str::to_string),
            decision.to_string(),
        );
        self.with(move |c| {
            c.execute(
                "INSERT INTO deliveries (received_at, webhook_id, scope, repo, decision, job_id)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&now(), &w, &s, &r, &d, &job_id],
            )?;
            Ok(())
        })
    }

    fn delivery_count(&self) -> Result<i64> {
        self.with(|c| {
            Ok(c.query_one("SELECT COUNT(*) FROM deliveries", &[])?
                .try_get(0)?)
        })
    }

    fn claim(&self, owner: &str, lease: std::time::Duration) -> Result<Option<Job>> {
        let owner = owner.to_string();
        self.with(move |c| {
            let t = now();
            // SKIP LOCKED: a row another worker is claiming right now is passed over,
            // never taken twice and never waited for.
            let row = c.query_opt(
                "UPDATE jobs SET state = $1, attempts = attempts + 1, updated_at = $2, error = NULL,
                     lease_owner = $7, lease_until = $8
                 WHERE id = (SELECT j.id FROM jobs j
                             WHERE j.state = $3
                                OR (j.state = $4 AND NOT EXISTS (
                                      SELECT 1 FROM jobs b WHERE b.id = j.waits_on
                                      AND b.state NOT IN ($5, $6)))
                             ORDER BY j.id LIMIT 1
                             FOR UPDATE SKIP LOCKED)
                 RETURNING *",
                &[
                    &RUNNING,
                    &t,
                    &QUEUED,
                    &WAITING,
                    &DONE,
                    &FAILED,
                    &owner,
                    &(t + lease.as_secs_f64()),
                ],
            )?;
            row.map(|r| job_of(&r)).transpose()
        })
    }

    fn set_kind(&self, id: i64, kind: &str, base: Option<&str>, note: Option<&str>) -> Result<()> {
        let (k, b, n) = (
            kind.to_string(),
            base.map(str::to_string),
            note.map(crate::redact::redact),
        );
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET kind = $2, base = $3, note = $4, updated_at = $5 WHERE id = $1",
                &[&id, &k, &b, &n, &now()],
            )?;
            Ok(())
        })
    }

    fn set_note(&self, id: i64, note: &str) -> Result<()> {
        let n = crate::redact::redact(note);
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET note = $2, updated_at = $3 WHERE id = $1",
                &[&id, &n, &now()],
            )?;
            Ok(())
        })
    }

    fn wait_on(&self, id: i64, on: i64) -> Result<()> {
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET state = $2, waits_on = $3::BIGINT, attempts = GREATEST(attempts - 1, 0),
                        lease_owner = NULL, lease_until = NULL,
                        stage = 'waiting for job ' || $3::BIGINT::TEXT, updated_at = $4 WHERE id = $1",
                &[&id, &WAITING, &on, &now()],
            )?;
            Ok(())
        })
    }

    fn active_repos(&self) -> Result<std::collections::HashSet<String>> {
        self.with(|c| {
            c.query(
                "SELECT DISTINCT repo FROM jobs WHERE state IN ($1, $2, $3)",
                &[&QUEUED, &RUNNING, &WAITING],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn repo_busy(&self, repo: &str, except: i64) -> Result<bool> {
        let repo = repo.to_string();
        self.with(move |c| {
            let n: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM jobs WHERE repo = $1 AND id != $2 AND state IN ($3, $4, $5)",
                    &[&repo, &except, &QUEUED, &RUNNING, &WAITING],
                )?
                .try_get(0)?;
            Ok(n > 0)
        })
    }

    fn job_for(&self, repo: &str, commit: &str) -> Result<Option<Job>> {
        let (repo, commit) = (repo.to_string(), commit.to_string());
        self.with(move |c| {
            c.query_opt(
                "SELECT * FROM jobs WHERE repo = $1 AND revision = $2
                 ORDER BY CASE state WHEN $3 THEN 0 WHEN $4 THEN 2 ELSE 1 END, id DESC LIMIT 1",
                &[&repo, &commit, &DONE, &FAILED],
            )?
            .map(|r| job_of(&r))
            .transpose()
        })
    }

    fn waiters(&self, id: i64) -> Result<Vec<i64>> {
        self.with(move |c| {
            c.query(
                "SELECT id FROM jobs WHERE waits_on = $1 AND state = $2 ORDER BY id",
                &[&id, &WAITING],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn progress(&self, id: i64, stage: &str, progress: f64) -> Result<()> {
        let stage = stage.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET stage = $2, progress = $3, updated_at = $4 WHERE id = $1",
                &[&id, &stage, &progress.clamp(0.0, 1.0), &now()],
            )?;
            Ok(())
        })
    }

    fn set_revision(&self, id: i64, revision: &str) -> Result<()> {
        let r = revision.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET revision = $2, updated_at = $3 WHERE id = $1",
                &[&id, &r, &now()],
            )?;
            Ok(())
        })
    }

    fn set_published(&self, id: i64, commit: &str, upload: &serde_json::Value) -> Result<()> {
        let (commit, upload) = (commit.to_string(), upload.to_string());
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET published_commit = $2, upload = $3, updated_at = $4 WHERE id = $1",
                &[&id, &commit, &upload, &now()],
            )?;
            Ok(())
        })
    }

    fn finish(&self, id: i64) -> Result<()> {
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET state = $2, progress = 1, error = NULL,
                        stage = CASE WHEN kind IN ($4, $5) THEN 'done' ELSE 'published' END,
                        lease_owner = NULL, lease_until = NULL,
                        updated_at = $3, finished_at = $3 WHERE id = $1",
                &[
                    &id,
                    &DONE,
                    &now(),
                    &super::KIND_EVALUATE,
                    &super::KIND_OPTIMIZE,
                ],
            )?;
            Ok(())
        })
    }

    fn set_result(&self, id: i64, result: &str) -> Result<()> {
        let result = result.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET result = $2, updated_at = $3 WHERE id = $1",
                &[&id, &result, &now()],
            )?;
            Ok(())
        })
    }

    fn result(&self, id: i64) -> Result<Option<String>> {
        self.with(move |c| {
            Ok(
                c.query_opt("SELECT result FROM jobs WHERE id = $1", &[&id])?
                    .and_then(|r| r.get::<_, Option<String>>(0)),
            )
        })
    }

    fn fail(&self, id: i64, error: &str, retry: bool) -> Result<()> {
        let error = crate::redact::redact(error);
        self.with(move |c| {
            let t = now();
            let (state, finished) = if retry {
                (QUEUED, None)
            } else {
                (FAILED, Some(t))
            };
            c.execute(
                "UPDATE jobs SET state = $2, error = $3, updated_at = $4, finished_at = $5,
                     lease_owner = NULL, lease_until = NULL
                 WHERE id = $1",
                &[&id, &state, &error, &t, &finished],
            )?;
            Ok(())
        })
    }

    fn job(&self, id: i64) -> Result<Option<Job>> {
        self.with(move |c| {
            c.query_opt("SELECT * FROM jobs WHERE id = $1", &[&id])?
                .map(|r| job_of(&r))
                .transpose()
        })
    }

    fn jobs(&self, state: Option<JobState>, limit: i64, offset: i64) -> Result<(Vec<Job>, i64)> {
        let state = state.map(|s| s.as_str().to_string());
        self.with(move |c| {
            let total: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM jobs WHERE $1::TEXT IS NULL OR state = $1",
                    &[&state],
                )?
                .try_get(0)?;
            let rows = c
                .query(
                    "SELECT * FROM jobs WHERE $1::TEXT IS NULL OR state = $1
                     ORDER BY id DESC LIMIT $2 OFFSET $3",
                    &[&state, &limit, &offset],
                )?
                .iter()
                .map(job_of)
                .collect::<Result<Vec<_>>>()?;
            Ok((rows, total))
        })
    }

    fn counts(&self) -> Result<Vec<(String, i64)>> {
        self.with(|c| {
            c.query(
                "SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
        })
    }

    fn declare_pieces(&self, id: i64, shas: &[String]) -> Result<bool> {
        let shas = shas.to_vec();
        self.with(move |c| {
            let mut tx = c.transaction()?;
            // FOR SHARE: a sweep taking its lease (an UPDATE of this row) waits until this
            // declaration commits, and one that took it already is seen here.
            let until: Option<f64> = tx
                .query_one(
                    "SELECT sweeping_until FROM gc_state WHERE id = 1 FOR SHARE",
                    &[],
                )?
                .try_get(0)?;
            if until.is_some_and(|u| u > now()) {
                return Ok(false);
            }
            let Some(row) = tx.query_opt("SELECT pieces_in_use FROM jobs WHERE id = $1", &[&id])?
            else {
                return Err(StoreError::Corrupt(format!("no job {id}")));
            };
            let have: Option<String> = row.try_get(0)?;
            let merged = super::merge_pieces(have.as_deref(), &shas)?;
            tx.execute(
                "UPDATE jobs SET pieces_in_use = $2 WHERE id = $1",
                &[&id, &merged],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn prune_deliveries(&self, keep: i64) -> Result<usize> {
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM deliveries WHERE id <= (SELECT MAX(id) FROM deliveries) - $1",
                &[&keep],
            )? as usize)
        })
    }
}

impl Catalog for PgStore {
    fn begin_sweep(&self, lease: std::time::Duration) -> Result<bool> {
        self.with(move |c| {
            let t = now();
            // The row's exclusive lock waits for declarations in flight (they hold it
            // shared), so the mark read after this sees every one of them.
            let n = c.execute(
                "UPDATE gc_state SET sweeping_until = $1
                 WHERE id = 1 AND (sweeping_until IS NULL OR sweeping_until < $2)",
                &[&(t + lease.as_secs_f64()), &t],
            )?;
            Ok(n == 1)
        })
    }

    fn renew_sweep(&self, lease: std::time::Duration) -> Result<()> {
        self.with(move |c| {
            c.execute(
                "UPDATE gc_state SET sweeping_until = $1 WHERE id = 1 AND sweeping_until IS NOT NULL",
                &[&(now() + lease.as_secs_f64())],
            )?;
            Ok(())
        })
    }

    fn end_sweep(&self) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE gc_state SET sweeping_until = NULL WHERE id = 1",
                &[],
            )?;
            Ok(())
        })
    }

    fn add_artifact(&self, a: &ArtifactRow) -> Result<()> {
        let pieces =
            serde_json::to_string(&a.pieces).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let a = a.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO artifacts (id, job_id, repo, path, size, source, target,
                                        bits_per_weight, sha256, pieces, created_at, private, details)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (id) DO UPDATE SET private = artifacts.private OR excluded.private,
                     details = COALESCE(excluded.details, artifacts.details)",
                &[
                    &a.id,
                    &a.job_id,
                    &a.repo,
                    &a.path,
                    &(a.size as i64),
                    &a.source,
                    &a.target,
                    &a.bits_per_weight,
                    &a.sha256,
                    &pieces,
                    &now(),
                    &a.private,
                    &a.details,
                ],
            )?;
            Ok(())
        })
    }

    fn artifact(&self, id: &str) -> Result<Option<ArtifactRow>> {
        let id = id.to_string();
        self.with(move |c| {
            let Some(r) = c.query_opt("SELECT * FROM artifacts WHERE id = $1", &[&id])? else {
                return Ok(None);
            };
            let pieces: String = r.try_get("pieces")?;
            Ok(Some(ArtifactRow {
                id: r.try_get("id")?,
                job_id: r.try_get("job_id")?,
                repo: r.try_get("repo")?,
                path: r.try_get("path")?,
                size: r.try_get::<_, i64>("size")? as u64,
                source: r.try_get("source")?,
                target: r.try_get("target")?,
                bits_per_weight: r.try_get("bits_per_weight")?,
                sha256: r.try_get("sha256")?,
                pieces: serde_json::from_str(&pieces)
                    .map_err(|e| StoreError::Corrupt(format!("artifact {id}: {e}")))?,
                private: r.try_get("private")?,
                details: r.try_get("details")?,
            }))
        })
    }

    fn artifacts_of_job(&self, job_id: i64) -> Result<Vec<String>> {
        self.with(move |c| {
            c.query(
                "SELECT id FROM artifacts WHERE job_id = $1 ORDER BY path",
                &[&job_id],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn referenced_pieces(&self) -> Result<std::collections::HashSet<String>> {
        self.with(|c| {
            let mut column = |sql: &str| -> Result<Vec<String>> {
                c.query(sql, &[])?
                    .iter()
                    .map(|r| Ok(r.try_get(0)?))
                    .collect()
            };
            let pieces = column("SELECT pieces FROM artifacts")?;
            let files = column("SELECT files FROM repo_revisions")?;
            let in_use = column(
                "SELECT pieces_in_use FROM jobs
                 WHERE pieces_in_use IS NOT NULL AND state IN ('queued', 'running', 'waiting')",
            )?;
            super::referenced_in(pieces, files, in_use)
        })
    }

    fn add_revision(&self, r: &RepoRevision) -> Result<()> {
        let files =
            serde_json::to_string(&r.files).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let r = r.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO repo_revisions (repo, commit_id, files, created_at, private)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (repo, commit_id) DO NOTHING",
                &[&r.repo, &r.commit, &files, &r.created_at, &r.private],
            )?;
            Ok(())
        })
    }

    fn revision(&self, repo: &str, rev: &str) -> Result<Option<RepoRevision>> {
        let (repo, rev) = (repo.to_string(), rev.to_string());
        self.with(move |c| {
            let row = if rev == "main" {
                c.query_opt(
                    "SELECT repo, commit_id, files, created_at, private FROM repo_revisions
                     WHERE repo = $1 ORDER BY seq DESC LIMIT 1",
                    &[&repo],
                )?
            } else {
                c.query_opt(
                    "SELECT repo, commit_id, files, created_at, private FROM repo_revisions
                     WHERE repo = $1 AND commit_id = $2",
                    &[&repo, &rev],
                )?
            };
            let Some(r) = row else { return Ok(None) };
            revision_from(&r).map(Some)
        })
    }

    fn companions(&self, limit: i64) -> Result<Vec<RepoRevision>> {
        self.with(move |c| {
            c.query(
                "SELECT repo, commit_id, files, created_at, private FROM repo_revisions r
                 WHERE seq = (SELECT MAX(seq) FROM repo_revisions WHERE repo = r.repo)
                 ORDER BY seq DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(revision_from)
            .collect()
        })
    }
}

fn revision_from(r: &postgres::Row) -> Result<RepoRevision> {
    let files: String = r.try_get(2)?;
    super::revision_of(
        r.try_get(0)?,
        r.try_get(1)?,
        &files,
        r.try_get(3)?,
        r.try_get(4)?,
    )
}
