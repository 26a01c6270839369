//! The PostgreSQL job store (the machine's PostgreSQL at 127.0.0.1:5432, or
//! `TENPAK_TEST_POSTGRES`; each test makes and drops a database of its own): the same
//! contract as SQLite's, claims that never hand one job to two workers under
//! concurrency, and a registry process running a job through it. Skipped with a line
//! when no server answers, unless CI=true.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::services::*;
use common::*;
use tenpak_registry::store::{
    ArtifactRow, JobState, JobStore, NewJob, PgStore, RepoFile, RepoRevision, SqliteStore, Store,
};

fn new_job<'a>(key: &'a str, repo: &'a str, kind: &'a str) -> NewJob<'a> {
    NewJob {
        key,
        repo,
        revision: "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c",
        targets: "balanced",
        origin: "api",
        companion: "a/b-tnpk",
        kind,
        params: None,
    }
}

/// The contract every store keeps (run on SQLite and on PostgreSQL).
fn contract(s: &dyn Store) {
    let lease = Duration::from_secs(60);
    // Idempotent enqueue.
    let a = s.enqueue(&new_job("k1", "a/one", "auto")).expect("enqueue");
    assert!(a.created);
    assert!(
        !s.enqueue(&new_job("k1", "a/one", "auto"))
            .expect("again")
            .created
    );
    let b = s.enqueue(&new_job("k2", "a/two", "full")).expect("enqueue");
    // Oldest first, attempts counted, leases held and renewed.
    let got = s.claim("w1", lease).expect("claim").expect("job");
    assert_eq!(
        (got.id, got.attempts, got.state),
        (a.job.id, 1, JobState::Running)
    );
    assert!(s.renew(a.job.id, "w1", lease).expect("renew"));
    assert!(!s.renew(a.job.id, "w2", lease).expect("not w2's"));
    // A lease that ran out is requeued; its old holder cannot renew it.
    s.renew(a.job.id, "w1", Duration::ZERO).expect("expire");
    std::thread::sleep(Duration::from_millis(20));
    let i = s.requeue_expired(3).expect("sweep");
    assert_eq!((i.requeued, i.failed), (1, 0));
    assert!(!s.renew(a.job.id, "w1", lease).expect("lost"));
    // Waiting on a base: claimed only once the base is done.
    let again = s.claim("w2", lease).expect("claim").expect("job");
    assert_eq!((again.id, again.attempts), (a.job.id, 2));
    s.wait_on(a.job.id, b.job.id).expect("wait");
    assert_eq!(s.waiters(b.job.id).expect("waiters"), vec![a.job.id]);
    let base = s.claim("w2", lease).expect("claim").expect("base");
    assert_eq!(base.id, b.job.id);
    assert_eq!(s.claim("w2", lease).expect("claim"), None);
    s.progress(b.job.id, "pack balanced", 0.5)
        .expect("progress");
    s.set_kind(b.job.id, "full", None, Some("note hf_secret123"))
        .expect("kind");
    s.set_published(b.job.id, "abc", &serde_json::json!({"bytes": 1}))
        .expect("published");
    s.finish(b.job.id).expect("finish");
    let waiting = s.claim("w2", lease).expect("claim").expect("the waiter");
    assert_eq!(waiting.id, a.job.id);
    // Fail for good, retry, counts, paging, dead letters.
    s.fail(a.job.id, "bad model at https://x/y?sig=secret", false)
        .expect("fail");
    let dead = s.job(a.job.id).expect("job").expect("dead");
    assert_eq!(dead.state, JobState::Failed);
    assert!(
        !dead.error.unwrap_or_default().contains("secret"),
        "redacted"
    );
    assert_eq!(s.jobs(Some(JobState::Failed), 10, 0).expect("jobs").1, 1);
    let (page, total) = s.jobs(None, 1, 0).expect("page");
    assert_eq!((page.len(), total), (1, 2));
    assert_eq!(
        s.retry(a.job.id)
            .expect("retry")
            .map(|(j, ok)| (j.state, ok)),
        Some((JobState::Queued, true))
    );
    assert_eq!(
        s.retry(b.job.id).expect("retry done").map(|(_, ok)| ok),
        Some(false)
    );
    let counts = s.counts().expect("counts");
    assert!(
        counts.contains(&("done".into(), 1)) && counts.contains(&("queued".into(), 1)),
        "{counts:?}"
    );
    assert_eq!(
        s.job_for("a/two", "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c")
            .expect("for")
            .map(|j| j.id),
        Some(b.job.id)
    );
    assert_eq!(
        s.active_repos().expect("active"),
        HashSet::from(["a/one".to_string()])
    );
    assert!(
        s.repo_busy("a/one", -1).expect("busy") && !s.repo_busy("a/one", a.job.id).expect("busy")
    );
    // Interrupted at start: requeued, or failed past max_attempts.
    s.claim("w3", lease).expect("claim").expect("job");
    let i = s.requeue_interrupted(1).expect("restart");
    assert_eq!((i.requeued, i.failed), (0, 1));
    // Catalog: artifacts, revisions, referenced pieces.
    let art = ArtifactRow {
        id: "d".repeat(64),
        job_id: b.job.id,
        repo: "a/two-tnpk".into(),
        path: "two-balanced.tnpk".into(),
        size: 10,
        source: "a/two@c7a1".into(),
        target: "balanced".into(),
        bits_per_weight: 4.25,
        sha256: "e".repeat(64),
        pieces: vec![("p1".into(), 6), ("p2".into(), 4)],
        private: false,
        details: Some(r#"{"target":"balanced"}"#.into()),
    };
    s.add_artifact(&art).expect("artifact");
    // Recorded again (a retried job) without details: they are kept.
    s.add_artifact(&ArtifactRow {
        private: true,
        details: None,
        ..art.clone()
    })
    .expect("again, private");
    let back = s.artifact(&art.id).expect("read").expect("artifact");
    assert_eq!(
        (back.pieces.clone(), back.private, back.details.clone()),
        (art.pieces.clone(), true, art.details.clone())
    );
    assert_eq!(
        s.artifacts_of_job(b.job.id).expect("of job"),
        vec![art.id.clone()]
    );
    assert_eq!(s.artifact_rows_of_job(b.job.id).expect("rows").len(), 1);
    let rev = RepoRevision {
        repo: "a/two-tnpk".into(),
        commit: "f".repeat(40),
        files: vec![
            RepoFile {
                path: "two-balanced.tnpk".into(),
                sha256: "e".repeat(64),
                size: 10,
                artifact: Some(art.id.clone()),
            },
            RepoFile {
                path: "README.md".into(),
                sha256: "c".repeat(64),
                size: 3,
                artifact: None,
            },
        ],
        created_at: 1.0,
        private: false,
    };
    s.add_revision(&rev).expect("revision");
    s.add_revision(&rev).expect("idempotent");
    assert_eq!(
        s.revision("a/two-tnpk", "main").expect("main"),
        Some(rev.clone())
    );
    assert_eq!(
        s.revision("a/two-tnpk", &"f".repeat(40)).expect("by id"),
        Some(rev.clone())
    );
    assert_eq!(s.revision("a/none", "main").expect("none"), None);
    // The newest revision of each companion, newest first.
    let newer = RepoRevision {
        commit: "9".repeat(40),
        created_at: 3.0,
        ..rev.clone()
    };
    let other = RepoRevision {
        repo: "a/one-tnpk".into(),
        commit: "8".repeat(40),
        created_at: 2.0,
        ..rev.clone()
    };
    s.add_revision(&other).expect("other repo");
    s.add_revision(&newer).expect("newer revision");
    assert_eq!(
        s.companions(10).expect("companions"),
        vec![newer.clone(), other.clone()]
    );
    assert_eq!(s.companions(1).expect("one"), vec![newer]);
    let refd = s.referenced_pieces().expect("pieces");
    assert_eq!(
        refd,
        HashSet::from(["p1".into(), "p2".into(), "c".repeat(64)])
    );
    for k in 0..4 {
        s.record_delivery(
            Some(&format!("w{k}")),
            Some("repo.content"),
            Some("a/b"),
            "ignore",
            None,
        )
        .expect("delivery");
    }
    assert_eq!(s.prune_deliveries(1).expect("prune"), 3);
    assert_eq!(s.delivery_count().expect("count"), 1);
    // Pieces a running job declares are referenced until it ends; no declaration is
    // taken while a sweep holds its lease, and one sweep at a time.
    let j = s
        .enqueue(&new_job("k9", "a/nine", "full"))
        .expect("enqueue")
        .job;
    let got = s.claim("w9", lease).expect("claim").expect("job");
    assert_eq!(got.id, j.id);
    assert!(s
        .declare_pieces(j.id, &["d1".into(), "d2".into()])
        .expect("declare"));
    assert!(s
        .declare_pieces(j.id, &["d2".into(), "d3".into()])
        .expect("again"));
    let refd = s.referenced_pieces().expect("pieces");
    assert!(
        ["d1", "d2", "d3", "p1"].iter().all(|p| refd.contains(*p)),
        "{refd:?}"
    );
    assert!(s.begin_sweep(lease).expect("sweep"));
    assert!(!s.begin_sweep(lease).expect("a second sweeper waits"));
    assert!(!s
        .declare_pieces(j.id, &["d4".into()])
        .expect("declare during a sweep"));
    s.end_sweep().expect("end");
    assert!(s
        .declare_pieces(j.id, &["d4".into()])
        .expect("declare after"));
    s.finish(j.id).expect("finish");
    let refd = s.referenced_pieces().expect("pieces");
    assert!(!refd.contains("d1") && refd.contains("p1"), "{refd:?}");
    // A lease that ran out (its sweeper died) is taken over.
    assert!(s.begin_sweep(Duration::ZERO).expect("sweep"));
    std::thread::sleep(Duration::from_millis(20));
    assert!(s.begin_sweep(lease).expect("taken over"));
    s.end_sweep().expect("end");
    // A short lease renewed by its sweeper's heartbeat outlives its first term; renewing
    // a lease nobody holds takes nothing.
    assert!(s.begin_sweep(Duration::from_millis(300)).expect("sweep"));
    s.renew_sweep(lease).expect("renew");
    std::thread::sleep(Duration::from_millis(400));
    assert!(!s
        .begin_sweep(lease)
        .expect("the renewed lease is still held"));
    s.end_sweep().expect("end");
    s.renew_sweep(lease).expect("renew a free lease");
    assert!(s.begin_sweep(lease).expect("still free"));
    s.end_sweep().expect("end");
    // Analysis jobs: the request stored with the job, the result beside it, and the
    // stage `done` (nothing is published).
    let ev = s
        .enqueue(&NewJob {
            params: Some(r#"{"text":"builtin:emma"}"#),
            ..new_job("k-eval", "a/one", "evaluate")
        })
        .expect("enqueue evaluate")
        .job;
    assert_eq!(ev.params, Some(serde_json::json!({"text": "builtin:emma"})));
    assert_eq!(s.result(ev.id).expect("no result yet"), None);
    let got = s
        .claim("w4", lease)
        .expect("claim")
        .expect("the evaluate job");
    assert_eq!(got.id, ev.id);
    s.set_result(ev.id, r#"{"ppl":12.5}"#).expect("result");
    s.finish(ev.id).expect("finish");
    assert_eq!(
        s.result(ev.id).expect("result").as_deref(),
        Some(r#"{"ppl":12.5}"#)
    );
    let done = s.job(ev.id).expect("job").expect("it");
    assert_eq!((done.state, done.stage.as_str()), (JobState::Done, "done"));
    assert_eq!(s.result(-1).expect("no job"), None);
}

#[test]
fn both_stores_keep_the_same_contract() {
    let tmp = tempfile::tempdir().expect("tmp");
    contract(&SqliteStore::open(&tmp.path().join("jobs.db")).expect("sqlite"));
    let Some(db) = TempDb::new("contract") else {
        return;
    };
    contract(&PgStore::open(&db.url).expect("postgres"));
    // Opening again applies no migration twice.
    PgStore::open(&db.url).expect("reopen");
}

#[test]
fn concurrent_claims_hand_each_job_to_one_worker() {
    let Some(db) = TempDb::new("claims") else {
        return;
    };
    let s = PgStore::open(&db.url).expect("open");
    let n = 60;
    for k in 0..n {
        s.enqueue(&new_job(&format!("k{k}"), &format!("a/m{k}"), "auto"))
            .expect("enqueue");
    }
    // Four workers, each with a connection of its own (as four processes would have).
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let s = Arc::new(PgStore::open(&url).expect("open"));
                let mut mine = vec![];
                while let Some(j) = s
                    .claim(&format!("w{w}"), Duration::from_secs(60))
                    .expect("claim")
                {
                    mine.push(j.id);
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<i64> = workers
        .into_iter()
        .flat_map(|h| h.join().expect("worker"))
        .collect();
    let claimed = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        (claimed, all.len()),
        (n, n),
        "every job claimed exactly once"
    );
}

#[test]
fn a_registry_runs_a_job_through_postgres() {
    let Some(db) = TempDb::new("registry") else {
        return;
    };
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let reg = Registry::start(
        &tmp.path().join("data"),
        &hub.url,
        &[("TENPAK_DATABASE_URL", &db.url)],
    );
    let job = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(hub.hub.commits().len(), 1);
    // The queue is in PostgreSQL, not in the data dir.
    assert!(!tmp.path().join("data/registry.sqlite3").exists());
    let s = PgStore::open(&db.url).expect("open");
    assert_eq!(
        s.job(job["id"].as_i64().expect("id"))
            .expect("job")
            .map(|j| j.state),
        Some(JobState::Done)
    );
}

#[test]
fn a_connection_the_server_closed_is_replaced() {
    let Some(db) = TempDb::new("reconnect") else {
        return;
    };
    let s = PgStore::open(&db.url).expect("open");
    s.enqueue(&new_job("k", "a/b", "auto")).expect("enqueue");
    // As a PostgreSQL restart (or an admin) does: the server ends the store's session.
    let mut admin =
        postgres::Client::connect(&format!("{}/postgres", pg_server()), postgres::NoTls)
            .expect("admin");
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .expect("terminate");
    assert_eq!(ended.len(), 1, "one session of the store");
    // Termination is asynchronous: wait until the session is gone.
    let t0 = std::time::Instant::now();
    while admin
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1",
            &[&db.name],
        )
        .expect("activity")
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the session did not end"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The next call may meet the closed connection (a store error, not a panic: the
    // client may also have seen the close already and reconnected first); the one after
    // runs on a new connection for sure, and nothing was lost. Without reconnection both
    // fail.
    let _ = s.counts();
    assert_eq!(
        s.counts().expect("reconnected"),
        vec![("queued".to_string(), 1)]
    );
    assert!(
        !s.enqueue(&new_job("k", "a/b", "auto"))
            .expect("enqueue")
            .created
    );
}

#[test]
fn idle_workers_are_woken_by_notify_when_another_process_queues_or_ends_a_job() {
    let Some(db) = TempDb::new("notify") else {
        return;
    };
    let listener = PgStore::open(&db.url).expect("open");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    listener
        .watch(Arc::new(move || {
            let _ = tx.lock().expect("lock").send(());
        }))
        .expect("watch");
    // The first call comes when the listener is connected (anything may have happened
    // before it listened).
    rx.recv_timeout(Duration::from_secs(30)).expect("listening");
    // Another connection (another process, as far as the server knows) queues a job,
    // then ends it: each wakes the listener; a claim (queued -> running) does not.
    let other = PgStore::open(&db.url).expect("open");
    let j = other
        .enqueue(&new_job("n1", "a/n", "full"))
        .expect("enqueue")
        .job;
    rx.recv_timeout(Duration::from_secs(30))
        .expect("woken by a new job");
    other.claim("w", Duration::from_secs(60)).expect("claim");
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a claim wakes nobody"
    );
    other.finish(j.id).expect("finish");
    rx.recv_timeout(Duration::from_secs(30))
        .expect("woken by a job that ended");
}
