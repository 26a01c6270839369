//! The SQLite implementation of [`JobStore`] and [`Catalog`]: the embedded default (one
//! file under the data dir, WAL mode, one connection behind a mutex).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    now, revision_of, ArtifactRow, Catalog, Enqueued, Interrupted, Job, JobState, JobStore, NewJob,
    RepoRevision, Result, StoreError,
};

// The states by the names the SQL below was written with.
const QUEUED: JobState = JobState::Queued;
const RUNNING: JobState = JobState::Running;
const WAITING: JobState = JobState::Waiting;
const DONE: JobState = JobState::Done;
const FAILED: JobState = JobState::Failed;

impl ToSql for JobState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for JobState {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = v.as_str()?;
        JobState::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown job state {s:?}").into()))
    }
}

type RevisionRow = (String, String, String, f64, bool);

fn revision_row(r: &Row<'_>) -> rusqlite::Result<RevisionRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

/// The store (one connection behind a mutex; every statement is short).
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    repo TEXT NOT NULL,
    revision TEXT NOT NULL,
    targets TEXT NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    companion TEXT NOT NULL,
    published_commit TEXT,
    upload TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_repo ON jobs(repo, revision);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    webhook_id TEXT,
    scope TEXT,
    repo TEXT,
    decision TEXT NOT NULL,
    job_id INTEGER
);
CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    repo TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    bits_per_weight REAL NOT NULL,
    sha256 TEXT NOT NULL,
    pieces TEXT NOT NULL,
    created_at REAL NOT NULL
);
-- The chunk store's sweep lease (one row): while it runs, no job declares pieces.
CREATE TABLE IF NOT EXISTS gc_state (id INTEGER PRIMARY KEY, sweeping_until REAL);
INSERT OR IGNORE INTO gc_state (id) VALUES (1);
CREATE TABLE IF NOT EXISTS repo_revisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    files TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE(repo, commit_id)
);
";

fn job_of(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get("id")?,
        repo: r.get("repo")?,
        revision: r.get("revision")?,
        targets: r.get("targets")?,
        origin: r.get("origin")?,
        state: r.get("state")?,
        kind: r.get("kind")?,
        params: r
            .get::<_, Option<String>>("params")?
            .and_then(|u| serde_json::from_str(&u).ok()),
        base: r.get("base")?,
        waits_on: r.get("waits_on")?,
        note: r.get("note")?,
        stage: r.get("stage")?,
        progress: r.get("progress")?,
        attempts: r.get("attempts")?,
        error: r.get("error")?,
        companion: r.get("companion")?,
        published_commit: r.get("published_commit")?,
        upload: r
            .get::<_, Option<String>>("upload")?
            .and_then(|u| serde_json::from_str(&u).ok()),
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        finished_at: r.get("finished_at")?,
    })
}

/// Columns added after the first schema: added to older databases on open.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("jobs", "kind", "TEXT NOT NULL DEFAULT 'auto'"),
    ("jobs", "base", "TEXT"),
    ("jobs", "waits_on", "INTEGER"),
    ("jobs", "note", "TEXT"),
    // Made from a private or gated source: served only with the API token.
    ("artifacts", "private", "INTEGER NOT NULL DEFAULT 0"),
    ("repo_revisions", "private", "INTEGER NOT NULL DEFAULT 0"),
    // The worker holding a running job, and until when (seconds since the epoch).
    ("jobs", "lease_owner", "TEXT"),
    ("jobs", "lease_until", "REAL"),
    // Chunk-store pieces the job declared before looking for them (JSON array).
    ("jobs", "pieces_in_use", "TEXT"),
    // What the dashboard shows of an artifact (JSON).
    ("artifacts", "details", "TEXT"),
    // An evaluate or optimize job's request and result (JSON).
    ("jobs", "params", "TEXT"),
    ("jobs", "result", "TEXT"),
];

fn migrate(conn: &Connection) -> Result<()> {
    for (table, name, ty) in ADDED_COLUMNS {
        let have: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {ty}"))?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable (every statement
        // is atomic in SQLite), so a poisoned lock is taken over.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Running jobs (all, or those whose lease ended before `expired_before`) back to the
    /// queue, or to failed when out of attempts.
    fn requeue(&self, max_attempts: i64, expired_before: Option<f64>) -> Result<Interrupted> {
        let c = self.conn();
        let t = now();
        let (why, stage) = super::requeue_wording(expired_before.is_some());
        let failed = c.execute(
            "UPDATE jobs SET state = ?1, finished_at = ?2, updated_at = ?2,
                 lease_owner = NULL, lease_until = NULL,
                 error = ?5 || attempts || ' attempts (out of memory, killed, or a crash); not tried again'
             WHERE state = ?3 AND attempts >= ?4 AND (?6 IS NULL OR lease_until < ?6)",
            params![FAILED, t, RUNNING, max_attempts, why, expired_before],
        )?;
        let requeued = c.execute(
            "UPDATE jobs SET state = ?1, stage = ?4, updated_at = ?2,
                 lease_owner = NULL, lease_until = NULL
             WHERE state = ?3 AND (?5 IS NULL OR lease_until < ?5)",
            params![QUEUED, t, RUNNING, stage, expired_before],
        )?;
        Ok(Interrupted { requeued, failed })
    }
}

/// The methods are documented on the traits.
impl JobStore for SqliteStore {
    fn declare_pieces(&self, id: i64, shas: &[String]) -> Result<bool> {
        let mut c = self.conn();
        // IMMEDIATE: the write lock from the start, so the sweep lease read here cannot
        // change before the declaration commits (SQLite has one writer at a time).
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let until: Option<f64> = tx.query_row(
            "SELECT sweeping_until FROM gc_state WHERE id = 1",
            [],
            |r| r.get(0),
        )?;
        if until.is_some_and(|u| u > now()) {
            return Ok(false);
        }
        let have: Option<Option<String>> = tx
            .query_row("SELECT pieces_in_use FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(have) = have else {
            return Err(StoreError::Corrupt(format!("no job {id}")));
        };
        let merged = super::merge_pieces(have.as_deref(), shas)?;
        tx.execute(
            "UPDATE jobs SET pieces_in_use = ?2 WHERE id = ?1",
            params![id, merged],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn requeue_interrupted(&self, max_attempts: i64) -> Result<Interrupted> {
        self.requeue(max_attempts, None)
    }

    fn requeue_expired(&self, max_attempts: i64) -> Result<Interrupted> {
        self.requeue(max_attempts, Some(now()))
    }

    fn renew(&self, id: i64, owner: &str, lease: std::time::Duration) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND lease_owner = ?2 AND state = ?4",
            params![id, owner, now() + lease.as_secs_f64(), RUNNING],
        )?;
        Ok(n == 1)
    }

    fn retry(&self, id: i64) -> Result<Option<(Job, bool)>> {
        let c = self.conn();
        let n = c.execute(
            "UPDATE jobs SET state = ?2, attempts = 0, stage = 'queued (retry)', progress = 0,
                 updated_at = ?3, finished_at = NULL
             WHERE id = ?1 AND state = ?4",
            params![id, QUEUED, now(), FAILED],
        )?;
        Ok(
            c.query_row("SELECT * FROM jobs WHERE id = ?1", [id], job_of)
                .optional()?
                .map(|j| (j, n == 1)),
        )
    }

    fn enqueue(&self, j: &NewJob<'_>) -> Result<Enqueued> {
        let c = self.conn();
        let t = now();
        let n = c.execute(
            "INSERT INTO jobs (key, repo, revision, targets, origin, state, stage, companion,
                               kind, created_at, updated_at, params)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?9, ?9, ?10)
             ON CONFLICT(key) DO NOTHING",
            params![
                j.key,
                j.repo,
                j.revision,
                j.targets,
                j.origin,
                QUEUED,
                j.companion,
                j.kind,
                t,
                j.params
            ],
        )?;
        let job = c.query_row("SELECT * FROM jobs WHERE key = ?1", [j.key], job_of)?;
        Ok(Enqueued {
            job,
            created: n == 1,
            retried: false,
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
        self.conn().execute(
            "INSERT INTO deliveries (received_at, webhook_id, scope, repo, decision, job_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![now(), webhook_id, scope, repo, decision, job_id],
        )?;
        Ok(())
    }

    fn delivery_count(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))?)
    }

    fn claim(&self, owner: &str, lease: std::time::Duration) -> Result<Option<Job>> {
        let c = self.conn();
        let t = now();
        let id: Option<i64> = c
            .query_row(
                "UPDATE jobs SET state = ?1, attempts = attempts + 1, updated_at = ?2, error = NULL,
                     lease_owner = ?7, lease_until = ?8
                 WHERE id = (SELECT j.id FROM jobs j
                             WHERE j.state = ?3
                                OR (j.state = ?4 AND NOT EXISTS (
                                      SELECT 1 FROM jobs b WHERE b.id = j.waits_on
                                      AND b.state NOT IN (?5, ?6)))
                             ORDER BY j.id LIMIT 1)
                 RETURNING id",
                params![
                    RUNNING,
                    t,
                    QUEUED,
                    WAITING,
                    DONE,
                    FAILED,
                    owner,
                    t + lease.as_secs_f64()
                ],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            None => Ok(None),
            Some(id) => Ok(Some(c.query_row(
                "SELECT * FROM jobs WHERE id = ?1",
                [id],
                job_of,
            )?)),
        }
    }

    fn set_kind(&self, id: i64, kind: &str, base: Option<&str>, note: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET kind = ?2, base = ?3, note = ?4, updated_at = ?5 WHERE id = ?1",
            params![id, kind, base, note.map(crate::redact::redact), now()],
        )?;
        Ok(())
    }

    fn set_note(&self, id: i64, note: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET note = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, crate::redact::redact(note), now()],
        )?;
        Ok(())
    }

    fn wait_on(&self, id: i64, on: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET state = ?2, waits_on = ?3, attempts = MAX(attempts - 1, 0),
                    lease_owner = NULL, lease_until = NULL,
                    stage = 'waiting for job ' || ?3, updated_at = ?4 WHERE id = ?1",
            params![id, WAITING, on, now()],
        )?;
        Ok(())
    }

    fn active_repos(&self) -> Result<std::collections::HashSet<String>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT DISTINCT repo FROM jobs WHERE state IN (?1, ?2, ?3)")?;
        let rows = st.query_map(params![QUEUED, RUNNING, WAITING], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn repo_busy(&self, repo: &str, except: i64) -> Result<bool> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM jobs WHERE repo = ?1 AND id != ?2 AND state IN (?3, ?4, ?5)",
            params![repo, except, QUEUED, RUNNING, WAITING],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    fn job_for(&self, repo: &str, commit: &str) -> Result<Option<Job>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT * FROM jobs WHERE repo = ?1 AND revision = ?2
                 ORDER BY CASE state WHEN ?3 THEN 0 WHEN ?4 THEN 2 ELSE 1 END, id DESC LIMIT 1",
                params![repo, commit, DONE, FAILED],
                job_of,
            )
            .optional()?)
    }

    fn waiters(&self, id: i64) -> Result<Vec<i64>> {
        let c = self.conn();
        let mut st =
            c.prepare("SELECT id FROM jobs WHERE waits_on = ?1 AND state = ?2 ORDER BY id")?;
        let rows = st
            .query_map(params![id, WAITING], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn progress(&self, id: i64, stage: &str, progress: f64) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET stage = ?2, progress = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, stage, progress.clamp(0.0, 1.0), now()],
        )?;
        Ok(())
    }

    fn set_revision(&self, id: i64, revision: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET revision = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, revision, now()],
        )?;
        Ok(())
    }

    fn set_published(&self, id: i64, commit: &str, upload: &serde_json::Value) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET published_commit = ?2, upload = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, commit, upload.to_string(), now()],
        )?;
        Ok(())
    }

    fn finish(&self, id: i64) -> Result<()> {
        let t = now();
        self.conn().execute(
            "UPDATE jobs SET state = ?2, progress = 1, error = NULL,
                    stage = CASE WHEN kind IN (?4, ?5) THEN 'done' ELSE 'published' END,
                    lease_owner = NULL, lease_until = NULL,
                    updated_at = ?3, finished_at = ?3 WHERE id = ?1",
            params![id, DONE, t, super::KIND_EVALUATE, super::KIND_OPTIMIZE],
        )?;
        Ok(())
    }

    fn set_result(&self, id: i64, result: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET result = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, result, now()],
        )?;
        Ok(())
    }

    fn result(&self, id: i64) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT result FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .flatten())
    }

    fn fail(&self, id: i64, error: &str, retry: bool) -> Result<()> {
        let t = now();
        let (state, finished) = if retry {
            (QUEUED, None)
        } else {
            (FAILED, Some(t))
        };
        self.conn().execute(
            "UPDATE jobs SET state = ?2, error = ?3, updated_at = ?4, finished_at = ?5,
                 lease_owner = NULL, lease_until = NULL
             WHERE id = ?1",
            params![id, state, crate::redact::redact(error), t, finished],
        )?;
        Ok(())
    }

    fn job(&self, id: i64) -> Result<Option<Job>> {
        Ok(self
            .conn()
            .query_row("SELECT * FROM jobs WHERE id = ?1", [id], job_of)
            .optional()?)
    }

    fn jobs(&self, state: Option<JobState>, limit: i64, offset: i64) -> Result<(Vec<Job>, i64)> {
        let c = self.conn();
        let total: i64 = c.query_row(
            "SELECT COUNT(*) FROM jobs WHERE ?1 IS NULL OR state = ?1",
            [state],
            |r| r.get(0),
        )?;
        let mut st = c.prepare(
            "SELECT * FROM jobs WHERE ?1 IS NULL OR state = ?1 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
        )?;
        let rows = st
            .query_map(params![state, limit, offset], job_of)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((rows, total))
    }

    fn counts(&self) -> Result<Vec<(String, i64)>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn prune_deliveries(&self, keep: i64) -> Result<usize> {
        Ok(self.conn().execute(
            "DELETE FROM deliveries WHERE id <= (SELECT MAX(id) FROM deliveries) - ?1",
            [keep],
        )?)
    }
}

impl Catalog for SqliteStore {
    fn add_artifact(&self, a: &ArtifactRow) -> Result<()> {
        let pieces =
            serde_json::to_string(&a.pieces).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn().execute(
            "INSERT INTO artifacts (id, job_id, repo, path, size, source, target,
                                    bits_per_weight, sha256, pieces, created_at, private, details)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT(id) DO UPDATE SET private = MAX(private, excluded.private),
                 details = COALESCE(excluded.details, details)",
            params![
                a.id,
                a.job_id,
                a.repo,
                a.path,
                a.size as i64,
                a.source,
                a.target,
                a.bits_per_weight,
                a.sha256,
                pieces,
                now(),
                a.private,
                a.details
            ],
        )?;
        Ok(())
    }

    fn artifact(&self, id: &str) -> Result<Option<ArtifactRow>> {
        let c = self.conn();
        let row = c
            .query_row("SELECT * FROM artifacts WHERE id = ?1", [id], |r| {
                Ok((
                    ArtifactRow {
                        id: r.get("id")?,
                        job_id: r.get("job_id")?,
                        repo: r.get("repo")?,
                        path: r.get("path")?,
                        size: r.get::<_, i64>("size")? as u64,
                        source: r.get("source")?,
                        target: r.get("target")?,
                        bits_per_weight: r.get("bits_per_weight")?,
                        sha256: r.get("sha256")?,
                        pieces: Vec::new(),
                        private: r.get("private")?,
                        details: r.get("details")?,
                    },
                    r.get::<_, String>("pieces")?,
                ))
            })
            .optional()?;
        match row {
            None => Ok(None),
            Some((mut a, pieces)) => {
                a.pieces = serde_json::from_str(&pieces)
                    .map_err(|e| StoreError::Corrupt(format!("artifact {id}: {e}")))?;
                Ok(Some(a))
            }
        }
    }

    fn artifacts_of_job(&self, job_id: i64) -> Result<Vec<String>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT id FROM artifacts WHERE job_id = ?1 ORDER BY path")?;
        let rows = st
            .query_map([job_id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn referenced_pieces(&self) -> Result<std::collections::HashSet<String>> {
        let c = self.conn();
        let column = |sql: &str| -> Result<Vec<String>> {
            let mut st = c.prepare(sql)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        };
        super::referenced_in(
            column("SELECT pieces FROM artifacts")?,
            column("SELECT files FROM repo_revisions")?,
            column(
                "SELECT pieces_in_use FROM jobs
                 WHERE pieces_in_use IS NOT NULL AND state IN ('queued', 'running', 'waiting')",
            )?,
        )
    }

    fn begin_sweep(&self, lease: std::time::Duration) -> Result<bool> {
        let t = now();
        let n = self.conn().execute(
            "UPDATE gc_state SET sweeping_until = ?1
             WHERE id = 1 AND (sweeping_until IS NULL OR sweeping_until < ?2)",
            params![t + lease.as_secs_f64(), t],
        )?;
        Ok(n == 1)
    }

    fn renew_sweep(&self, lease: std::time::Duration) -> Result<()> {
        self.conn().execute(
            "UPDATE gc_state SET sweeping_until = ?1 WHERE id = 1 AND sweeping_until IS NOT NULL",
            params![now() + lease.as_secs_f64()],
        )?;
        Ok(())
    }

    fn end_sweep(&self) -> Result<()> {
        self.conn()
            .execute("UPDATE gc_state SET sweeping_until = NULL WHERE id = 1", [])?;
        Ok(())
    }

    fn add_revision(&self, r: &RepoRevision) -> Result<()> {
        let files =
            serde_json::to_string(&r.files).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn().execute(
            "INSERT INTO repo_revisions (repo, commit_id, files, created_at, private)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(repo, commit_id) DO NOTHING",
            params![r.repo, r.commit, files, r.created_at, r.private],
        )?;
        Ok(())
    }

    fn companions(&self, limit: i64) -> Result<Vec<RepoRevision>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT repo, commit_id, files, created_at, private FROM repo_revisions r
             WHERE seq = (SELECT MAX(seq) FROM repo_revisions WHERE repo = r.repo)
             ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = st
            .query_map([limit], revision_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(repo, commit, files, created_at, private)| {
                revision_of(repo, commit, &files, created_at, private)
            })
            .collect()
    }

    fn revision(&self, repo: &str, rev: &str) -> Result<Option<RepoRevision>> {
        let c = self.conn();
        let q = if rev == "main" {
            c.query_row(
                "SELECT repo, commit_id, files, created_at, private FROM repo_revisions
                 WHERE repo = ?1 ORDER BY seq DESC LIMIT 1",
                [repo],
                revision_row,
            )
        } else {
            c.query_row(
                "SELECT repo, commit_id, files, created_at, private FROM repo_revisions
                 WHERE repo = ?1 AND commit_id = ?2",
                [repo, rev],
                revision_row,
            )
        }
        .optional()?;
        match q {
            None => Ok(None),
            Some((repo, commit, files, created_at, private)) => {
                revision_of(repo, commit, &files, created_at, private).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KIND_AUTO, KIND_FULL};

    fn job(store: &SqliteStore, key: &str, repo: &str, kind: &str) -> Job {
        store
            .enqueue(&NewJob {
                key,
                repo,
                revision: "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c",
                targets: "balanced",
                origin: "webhook",
                companion: "x/y-tnpk",
                kind,
                params: None,
            })
            .expect("enqueue")
            .job
    }

    #[test]
    fn a_database_of_the_first_schema_gains_the_new_columns() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("jobs.db");
        {
            // The jobs table as the first registry created it.
            let c = Connection::open(&path).expect("db");
            c.execute_batch(
                "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
                 repo TEXT NOT NULL, revision TEXT NOT NULL, targets TEXT NOT NULL,
                 origin TEXT NOT NULL, state TEXT NOT NULL, stage TEXT NOT NULL DEFAULT '',
                 progress REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
                 companion TEXT NOT NULL, published_commit TEXT, upload TEXT,
                 created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL);
                 INSERT INTO jobs (key, repo, revision, targets, origin, state, companion,
                   created_at, updated_at) VALUES ('k', 'a/b', 'main', 'balanced', 'api',
                   'done', 'a/b-tnpk', 1, 1);",
            )
            .expect("old schema");
        }
        let s = SqliteStore::open(&path).expect("open and migrate");
        let old = s.job(1).expect("read").expect("the old job");
        assert_eq!(old.kind, KIND_AUTO);
        assert_eq!((old.base, old.waits_on, old.note), (None, None, None));
        // Opening again changes nothing.
        drop(s);
        SqliteStore::open(&path).expect("open again");
    }

    const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

    #[test]
    fn a_lease_that_runs_out_returns_the_job_and_its_old_holder_cannot_renew_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("jobs.db");
        // Two handles on one database: two worker processes sharing the store.
        let (a, b) = (
            SqliteStore::open(&path).expect("a"),
            SqliteStore::open(&path).expect("b"),
        );
        let j = job(&a, "k", "a/m", KIND_AUTO);
        let short = std::time::Duration::from_millis(200);
        let got = a.claim("worker-a", short).expect("claim").expect("job");
        assert_eq!(got.id, j.id);
        // Alive: renewing keeps it; nothing has expired.
        assert!(a.renew(j.id, "worker-a", short).expect("renew"));
        assert_eq!(b.requeue_expired(3).expect("sweep").requeued, 0);
        assert!(!b.renew(j.id, "worker-b", short).expect("not b's"));
        // Worker a hangs: its lease runs out and b's sweep requeues the job ...
        std::thread::sleep(std::time::Duration::from_millis(300));
        let i = b.requeue_expired(3).expect("sweep");
        assert_eq!((i.requeued, i.failed), (1, 0));
        let again = b.claim("worker-b", LEASE).expect("claim").expect("the job");
        assert_eq!((again.id, again.attempts), (j.id, 2));
        // ... and a, waking up, learns it lost the job (it must not publish).
        assert!(!a.renew(j.id, "worker-a", LEASE).expect("renew"));
        assert!(b.renew(j.id, "worker-b", LEASE).expect("b holds it"));
        // A job whose lease ran out max_attempts times is failed with the reason.
        std::thread::sleep(std::time::Duration::from_millis(10));
        b.renew(j.id, "worker-b", std::time::Duration::ZERO)
            .expect("expire");
        std::thread::sleep(std::time::Duration::from_millis(10));
        let i = a.requeue_expired(2).expect("sweep");
        assert_eq!((i.requeued, i.failed), (0, 1));
        let dead = a.job(j.id).expect("read").expect("job");
        assert_eq!(dead.state, FAILED);
        assert!(
            dead.error
                .as_deref()
                .unwrap_or("")
                .contains("lease ran out"),
            "{:?}",
            dead.error
        );
    }

    #[test]
    fn a_job_interrupted_max_attempts_times_fails_and_the_next_job_still_runs() {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(&tmp.path().join("jobs.db")).expect("open");
        let poison = job(&s, "poison", "a/oom", KIND_AUTO);
        let next = job(&s, "next", "a/ok", KIND_AUTO);
        // The process dies while the poison job runs, three starts in a row.
        for start in 1..=3 {
            let got = s.claim("w", LEASE).expect("claim").expect("a job");
            assert_eq!((got.id, got.attempts), (poison.id, start));
            let i = s.requeue_interrupted(3).expect("restart");
            let want = if start < 3 { (1, 0) } else { (0, 1) };
            assert_eq!((i.requeued, i.failed), want, "start {start}");
        }
        let dead = s.job(poison.id).expect("job").expect("poison");
        assert_eq!(dead.state, FAILED);
        assert!(
            dead.error.as_deref().unwrap_or("").contains("3 attempts"),
            "{:?}",
            dead.error
        );
        assert!(dead.finished_at.is_some());
        assert_eq!(
            s.claim("w", LEASE).expect("claim").map(|j| j.id),
            Some(next.id)
        );
        // A retry puts it back with its attempts counted afresh; only a failed job.
        let (again, changed) = s.retry(poison.id).expect("retry").expect("job");
        assert!(changed);
        assert_eq!((again.state, again.attempts), (QUEUED, 0));
        let (same, changed) = s.retry(poison.id).expect("retry").expect("job");
        assert!(!changed, "a queued job is not retried");
        assert_eq!(same.state, QUEUED);
        assert_eq!(s.retry(9999).expect("retry"), None);
    }

    #[test]
    fn a_waiting_job_is_claimed_only_once_its_base_job_has_finished() {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = SqliteStore::open(&tmp.path().join("jobs.db")).expect("open");
        let ft = job(&s, "ft", "a/ft", KIND_AUTO);
        assert_eq!(
            s.claim("w", LEASE).expect("claim").map(|j| j.id),
            Some(ft.id)
        );
        let base = job(&s, "base", "a/base", KIND_FULL);
        s.wait_on(ft.id, base.id).expect("wait");
        let w = s.job(ft.id).expect("job").expect("ft");
        assert_eq!(
            (w.state, w.waits_on, w.attempts),
            (WAITING, Some(base.id), 0)
        );
        assert_eq!(s.waiters(base.id).expect("waiters"), vec![ft.id]);
        // The base runs first; the fine-tune stays parked while it does.
        assert_eq!(
            s.claim("w", LEASE).expect("claim").map(|j| j.id),
            Some(base.id)
        );
        assert_eq!(s.claim("w", LEASE).expect("claim"), None);
        s.finish(base.id).expect("finish");
        let again = s.claim("w", LEASE).expect("claim").expect("the fine-tune");
        assert_eq!((again.id, again.attempts), (ft.id, 1));
        assert_eq!(
            s.job_for("a/base", "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c")
                .expect("lookup")
                .map(|j| j.id),
            Some(base.id)
        );
    }
}
