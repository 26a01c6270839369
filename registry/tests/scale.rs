//! Scale-out on real engines: several `tenpak-registry` processes (API-only `serve
//! --workers 0` and workers-only `work`) sharing one PostgreSQL job store and one S3
//! chunk store. The services are real: the machine's PostgreSQL (a temporary database),
//! a private PostgreSQL server where a test restarts it, and `moto_server` standing for
//! Amazon S3 (see `common/services.rs`). Skipped with a line when one is absent, except
//! under CI=true.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::services::*;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tenpak_registry::chunks::ChunkStore;
use tenpak_registry::store::{ArtifactRow, JobStore, NewJob, PgStore, SqliteStore, Store};

/// A 40-hex commit id for model `i`.
fn sha_of(i: usize) -> String {
    format!("{:040x}", 0xc0ffee_u64 * 1000 + i as u64)
}

fn repo_of(i: usize) -> String {
    format!("acme/model-{i:02}")
}

/// What the processes of one test share: the Hub stand-in serving `n` repositories (one
/// model's files under `n` names, so their artifacts share chunks), a database, a
/// bucket, a signing key.
struct Shared {
    tmp: tempfile::TempDir,
    hub: hub::Running,
    s3: S3Server,
    database: String,
    key: PathBuf,
    prefix: String,
    config: PathBuf,
}

impl Shared {
    fn new(n: usize, database: String, s3: S3Server, config: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let model = model_dir(tmp.path());
        let hub = hub::start(
            (0..n)
                .map(|i| hub::ModelRepo {
                    repo: repo_of(i),
                    sha: sha_of(i),
                    dir: model.clone(),
                })
                .collect(),
            HUB_TOKEN,
            true,
        );
        // One organisation, one key: every process signs with it.
        let key = tmp.path().join("signing-key");
        let k = tenpak::artifact::sign::generate().expect("key");
        tenpak::artifact::sign::write_keypair(&k, &key).expect("write key");
        let config_path = tmp.path().join("registry.toml");
        std::fs::write(&config_path, config).expect("config");
        Self {
            prefix: format!("t{}", std::process::id()),
            tmp,
            hub,
            s3,
            database: database.to_string(),
            key,
            config: config_path,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        self.s3.env()
    }

    fn args(&self, workers: usize) -> Vec<String> {
        vec![
            "--database".into(),
            self.database.clone(),
            "--chunks".into(),
            self.s3.chunks(&self.prefix),
            "--signing-key".into(),
            self.key.display().to_string(),
            "--workers".into(),
            workers.to_string(),
            "--config".into(),
            self.config.display().to_string(),
        ]
    }

    fn spawn(&self, name: &str, api: bool, workers: usize, more_env: &[(&str, &str)]) -> Registry {
        let env: Vec<(&str, String)> = self.env();
        let mut e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.extend_from_slice(more_env);
        let args = self.args(workers);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let data = self.tmp.path().join(name);
        if api {
            Registry::start_args(&data, &self.hub.url, &e, &a)
        } else {
            Registry::start_worker(&data, &self.hub.url, &e, &a)
        }
    }
}

/// Delivers the `main` update of model `i` to `api`; the job id.
fn deliver_model(api: &Registry, i: usize) -> i64 {
    let v: Value = api
        .webhook(&content_update(&repo_of(i), &sha_of(i)), Some(SECRET))
        .json()
        .expect("json");
    v["job_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("job id: {v}"))
}

/// The services a test needs, or None (skipped) outside CI.
fn services() -> Option<(TempDb, S3Server)> {
    let db = TempDb::new("scale")?;
    let s3 = S3Server::start()?;
    Some((db, s3))
}

/// Jobs each worker process ran, once they add up to `n` (a worker logs "published in"
/// just after the job is marked done, so the API may say done a moment before).
fn jobs_run_by(workers: &[Registry], n: usize) -> Vec<usize> {
    let t0 = Instant::now();
    loop {
        let ran: Vec<usize> = workers.iter().map(jobs_run).collect();
        if ran.iter().sum::<usize>() >= n || t0.elapsed() > Duration::from_secs(30) {
            return ran;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Jobs a worker process ran ("worker N: job ID … published" lines).
fn jobs_run(r: &Registry) -> usize {
    r.log
        .lock()
        .expect("log")
        .iter()
        .filter(|l| l.contains(" published in "))
        .count()
}

fn wait_all(api: &Registry, ids: &[i64], timeout: Duration) -> Vec<Value> {
    ids.iter().map(|id| api.wait_job(*id, timeout)).collect()
}

/// One commit per companion, and the count of companions.
fn commits_per_companion(hub: &hub::Running) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in hub.hub.commits() {
        *out.entry(c.repo.clone()).or_insert(0) += 1;
    }
    out
}

#[test]
fn thirty_jobs_over_three_workers_and_two_apis_complete_exactly_once() {
    let Some((db, s3)) = services() else { return };
    let n = 30;
    let sh = Shared::new(n, db.url.clone(), s3, "job_lease_s = 10\n");
    let apis = [
        sh.spawn("api-0", true, 0, &[]),
        sh.spawn("api-1", true, 0, &[]),
    ];
    let workers: Vec<Registry> = (0..3)
        .map(|k| sh.spawn(&format!("worker-{k}"), false, 1, &[]))
        .collect();
    let t0 = Instant::now();
    // Deliveries alternate between the two API processes.
    let ids: Vec<i64> = (0..n).map(|i| deliver_model(&apis[i % 2], i)).collect();
    let jobs = wait_all(&apis[1], &ids, Duration::from_secs(600));
    let took = t0.elapsed();
    for j in &jobs {
        assert_eq!(j["state"], "done", "{j}");
        assert_eq!(j["attempts"], 1, "run once: {j}");
    }
    let per = commits_per_companion(&sh.hub);
    assert_eq!(per.len(), n, "{per:?}");
    assert!(per.values().all(|c| *c == 1), "one commit each: {per:?}");
    let ran = jobs_run_by(&workers, n);
    assert_eq!(ran.iter().sum::<usize>(), n, "{ran:?}");
    assert!(
        ran.iter().filter(|r| **r > 0).count() >= 2,
        "the work spread over the workers: {ran:?}"
    );
    // Every artifact reads back whole from the bucket through either API process,
    // matching the file the Hub received.
    let mut pieces = HashSet::new();
    for (k, j) in jobs.iter().enumerate() {
        let url = j["artifacts"][0]["url"].as_str().expect("artifact url");
        let body = apis[k % 2].get(url).bytes().expect("artifact");
        let digest = hex::encode(Sha256::digest(&body));
        let companion = format!("{}-tnpk", repo_of(k));
        let c = sh
            .hub
            .hub
            .commits()
            .into_iter()
            .find(|c| c.repo == companion)
            .expect("commit");
        let published = c
            .lfs_files
            .values()
            .any(|(oid, size)| *oid == digest && *size == body.len() as u64)
            || c.files
                .values()
                .any(|f| hex::encode(Sha256::digest(f)) == digest);
        assert!(
            published,
            "{companion}: the served artifact is the published one"
        );
        pieces.insert(digest);
    }
    // Thirty repositories of one model: the artifacts' chunks are stored once.
    let keys = sh.s3.keys(&sh.prefix);
    eprintln!(
        "SCALE | 30 jobs, 3 workers, 2 APIs | {:.1} s | per worker {ran:?} | {} objects in the bucket",
        took.as_secs_f64(),
        keys.len()
    );
    assert!(
        keys.len() < 30 * 4,
        "chunks shared between the thirty artifacts are stored once: {} objects",
        keys.len()
    );
}

#[test]
fn a_worker_killed_mid_pack_has_its_job_finished_by_another() {
    let Some((db, s3)) = services() else { return };
    let sh = Shared::new(1, db.url.clone(), s3, "job_lease_s = 3\n");
    let api = sh.spawn("api", true, 0, &[]);
    let mut a = sh.spawn(
        "worker-a",
        false,
        1,
        &[("TENPAK_REGISTRY_PAUSE_AT", "pack")],
    );
    let id = deliver_model(&api, 0);
    a.wait_log("fault injection", Duration::from_secs(120));
    a.kill();
    let killed = Instant::now();
    let b = sh.spawn("worker-b", false, 1, &[]);
    let job = api.wait_job(id, Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(sh.hub.hub.commits().len(), 1);
    assert_eq!(jobs_run_by(std::slice::from_ref(&b), 1), [1]);
    eprintln!(
        "FAULT | SIGKILL of a worker process (PostgreSQL + S3) | pack | done after 2 attempts by another worker; 1 Hub commit | {:.1} s |",
        killed.elapsed().as_secs_f64()
    );
}

#[test]
fn postgres_restarted_mid_run_loses_nothing() {
    let Some(pg) = PrivatePg::start() else { return };
    let Some(db) = TempDb::on(&pg.server(), "restart") else {
        return;
    };
    let Some(s3) = S3Server::start() else { return };
    let n = 6;
    let sh = Shared::new(n, db.url.clone(), s3, "job_lease_s = 10\n");
    // Downloads held: every job is mid-flight when the server goes.
    sh.hub.hub.set_gate(false);
    let api = sh.spawn("api", true, 0, &[]);
    let workers: Vec<Registry> = (0..2)
        .map(|k| sh.spawn(&format!("worker-{k}"), false, 1, &[]))
        .collect();
    let ids: Vec<i64> = (0..n).map(|i| deliver_model(&api, i)).collect();
    wait_downloads(&sh.hub, 2);
    let t0 = Instant::now();
    pg.stop();
    std::thread::sleep(Duration::from_secs(3));
    pg.start_again();
    sh.hub.hub.set_gate(true);
    let jobs = wait_all(&api, &ids, Duration::from_secs(300));
    for j in &jobs {
        assert_eq!(j["state"], "done", "{j}");
    }
    let per = commits_per_companion(&sh.hub);
    assert_eq!(per.len(), n, "{per:?}");
    assert!(per.values().all(|c| *c == 1), "one commit each: {per:?}");
    // The API process took deliveries again after the restart.
    assert_eq!(
        deliver_model(&api, 0),
        ids[0],
        "the same commit, the same job"
    );
    let ran: usize = jobs_run_by(&workers, n).iter().sum();
    let attempts: Vec<i64> = jobs
        .iter()
        .map(|j| j["attempts"].as_i64().unwrap_or(0))
        .collect();
    eprintln!(
        "FAULT | PostgreSQL stopped (immediate) 3 s and started, 6 jobs mid-download | download | all done, {ran} published, attempts {attempts:?}; 1 Hub commit each | {:.1} s |",
        t0.elapsed().as_secs_f64()
    );
}

fn new_job(key: &str) -> NewJob<'_> {
    NewJob {
        key,
        repo: "a/b",
        revision: "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c",
        targets: "balanced",
        origin: "api",
        companion: "a/b-tnpk",
        kind: "full",
        params: None,
    }
}

/// A file of `n` chunks of 4 KiB: chunk `k` holds bytes seeded by `seeds[k]` (equal
/// seeds, equal chunks), after a 100-byte header.
fn chunked_file(
    dir: &Path,
    name: &str,
    seeds: &[u64],
) -> (PathBuf, Vec<tenpak::artifact::format::Chunk>) {
    let mut bytes = vec![7u8; 100];
    let mut chunks = Vec::new();
    for s in seeds {
        let c: Vec<u8> = (0..4096u64)
            .map(|i| ((i * 31 + s * 7919) % 251) as u8)
            .collect();
        chunks.push(tenpak::artifact::format::Chunk {
            offset: bytes.len() as u64,
            length: c.len() as u64,
            sha256: hex::encode(Sha256::digest(&c)),
        });
        bytes.extend_from_slice(&c);
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    (path, chunks)
}

/// The race of the chunk store's garbage collection: a sweeper removes every
/// unreferenced piece at once (grace 0) in a loop, while a writer ingests artifacts
/// made partly of pieces that exist only as orphans (what a failed job leaves) and
/// records them. No recorded artifact may ever miss a piece, and the orphans nobody
/// takes up again do go.
fn gc_race(store: Arc<dyn Store>, chunks: ChunkStore, rounds: usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let stop = Arc::new(AtomicBool::new(false));
    let sweeps = Arc::new(AtomicUsize::new(0));
    let removed = Arc::new(AtomicUsize::new(0));
    let sweeper = {
        let (store, chunks, stop, sweeps, removed) = (
            store.clone(),
            chunks.clone(),
            stop.clone(),
            sweeps.clone(),
            removed.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if store.begin_sweep(Duration::from_secs(60)).expect("begin") {
                    let refs = store.referenced_pieces().expect("mark");
                    let s = chunks
                        .sweep(
                            &refs,
                            Duration::ZERO,
                            Instant::now() + Duration::from_secs(50),
                        )
                        .expect("sweep");
                    store.end_sweep().expect("end");
                    sweeps.fetch_add(1, Ordering::Relaxed);
                    removed.fetch_add(s.removed as usize, Ordering::Relaxed);
                }
            }
        })
    };
    let mut recorded: Vec<ArtifactRow> = Vec::new();
    for r in 0..rounds {
        // An orphan: a job that stored its pieces and failed before recording.
        let (orphan, oc) =
            chunked_file(tmp.path(), "orphan", &[r as u64 * 2, 1_000_000 + r as u64]);
        chunks.ingest(&orphan, &oc, &|_| Ok(())).expect("orphan");
        // A job taking up one of the orphan's pieces (and a new one).
        let key = format!("job-{r}");
        let job = store.enqueue(&new_job(&key)).expect("enqueue").job;
        let got = store
            .claim("w", Duration::from_secs(60))
            .expect("claim")
            .expect("job");
        assert_eq!(got.id, job.id);
        let (file, fc) = chunked_file(tmp.path(), "art", &[r as u64 * 2, r as u64 * 2 + 1]);
        let declare = |shas: &[String]| -> std::io::Result<()> {
            while !store
                .declare_pieces(job.id, shas)
                .map_err(std::io::Error::other)?
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        };
        let ing = chunks.ingest(&file, &fc, &declare).expect("ingest");
        let row = ArtifactRow {
            id: format!("{r:064x}"),
            job_id: job.id,
            repo: "a/b-tnpk".into(),
            path: format!("r{r}.tnpk"),
            size: ing.pieces.iter().map(|p| p.1).sum(),
            source: "a/b@c".into(),
            target: "balanced".into(),
            bits_per_weight: 4.0,
            sha256: ing.sha256.clone(),
            pieces: ing.pieces.clone(),
            private: false,
            details: None,
        };
        store.add_artifact(&row).expect("record");
        store.finish(job.id).expect("finish");
        recorded.push(row);
        // Every piece of every artifact recorded so far is there.
        for a in &recorded {
            for (sha, _) in &a.pieces {
                assert!(
                    chunks.contains(sha),
                    "round {r}: piece {sha} of {} was swept",
                    a.path
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    sweeper.join().expect("sweeper");
    let out = tmp.path().join("check");
    for a in &recorded {
        chunks
            .materialize(&a.pieces, &a.sha256, &out)
            .expect("whole");
    }
    eprintln!(
        "GC race on {}: {rounds} artifacts recorded under {} sweeps; {} orphan pieces removed; none of a recorded artifact",
        chunks.describe(),
        sweeps.load(Ordering::Relaxed),
        removed.load(Ordering::Relaxed)
    );
    assert!(sweeps.load(Ordering::Relaxed) > 0);
    assert!(
        removed.load(Ordering::Relaxed) > 0,
        "orphans nobody took up are removed"
    );
}

#[test]
fn gc_never_removes_a_piece_a_recorded_artifact_or_running_job_needs_sqlite_local() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&tmp.path().join("r.sqlite3")).expect("sqlite"));
    let chunks = ChunkStore::open(&tmp.path().join("chunks")).expect("chunks");
    gc_race(store, chunks, 60);
}

#[test]
fn gc_never_removes_a_piece_a_recorded_artifact_or_running_job_needs_postgres_s3() {
    let Some((db, s3)) = services() else { return };
    let store: Arc<dyn Store> = Arc::new(PgStore::open(&db.url).expect("pg"));
    let rt = tokio::runtime::Runtime::new().expect("rt");
    gc_race(store, s3.chunk_store("gc-race", &rt), 40);
}

#[test]
fn two_writers_of_one_piece_store_it_once() {
    let Some(s3) = S3Server::start() else { return };
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let chunks = s3.chunk_store("once", &rt);
    let tmp = tempfile::tempdir().expect("tmp");
    let (file, fc) = chunked_file(tmp.path(), "a", &[1, 2, 3]);
    let written = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (chunks, file, fc, written) =
                (chunks.clone(), file.clone(), fc.clone(), written.clone());
            std::thread::spawn(move || {
                let ing = chunks.ingest(&file, &fc, &|_| Ok(())).expect("ingest");
                written.fetch_add(ing.new_bytes as usize, Ordering::Relaxed);
                ing
            })
        })
        .collect();
    let ings: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let total = std::fs::metadata(&file).expect("meta").len() as usize;
    assert!(ings
        .windows(2)
        .all(|w| w[0] == w[1] || w[0].pieces == w[1].pieces));
    assert_eq!(
        written.load(Ordering::Relaxed),
        total,
        "eight writers at once: every byte written by exactly one"
    );
    assert_eq!(
        s3.keys("once").len(),
        4,
        "the header and three chunks: {:?}",
        s3.keys("once")
    );
    let out = tmp.path().join("back");
    chunks
        .materialize(&ings[0].pieces, &ings[0].sha256, &out)
        .expect("read back");
    assert_eq!(
        std::fs::read(&out).expect("read"),
        std::fs::read(&file).expect("read")
    );
}

/// Benchmark (ignored; `bash bench/scale.sh` runs it and records the table): jobs per
/// minute with 1, 2 and 4 worker processes on I/O-bound jobs — every weight download
/// held to a per-connection bandwidth by the Hub stand-in, so that a job spends most of
/// its time waiting on the network as it does against the real Hub — and the ratio to
/// one worker measured in the same run. No job may run twice.
#[test]
#[ignore]
fn bench_jobs_per_minute_by_worker_processes() {
    println!();
    let Some((db, s3)) = services() else { return };
    let jobs_per_run = 12;
    let counts = [1usize, 2, 4];
    let total: usize = counts.len() * jobs_per_run;
    let sh = Shared::new(total, db.url.clone(), s3, "job_lease_s = 30\n");
    let weights: u64 = std::fs::read_dir(sh.tmp.path().join("model"))
        .expect("model")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    // Two seconds of download per job.
    let bw = (weights / 2).max(1);
    sh.hub.hub.bandwidth.store(bw, Ordering::Relaxed);
    let api = sh.spawn("api", true, 0, &[]);
    let mut rows = Vec::new();
    let mut base = 0.0;
    for (run, &w) in counts.iter().enumerate() {
        let workers: Vec<Registry> = (0..w)
            .map(|k| sh.spawn(&format!("w{run}-{k}"), false, 1, &[]))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        let ids: Vec<i64> = (run * jobs_per_run..(run + 1) * jobs_per_run)
            .map(|i| deliver_model(&api, i))
            .collect();
        let jobs = wait_all(&api, &ids, Duration::from_secs(600));
        let secs = t0.elapsed().as_secs_f64();
        assert!(jobs
            .iter()
            .all(|j| j["state"] == "done" && j["attempts"] == 1));
        let per_min = jobs_per_run as f64 * 60.0 / secs;
        if w == 1 {
            base = per_min;
        }
        let ran = jobs_run_by(&workers, jobs_per_run);
        rows.push(format!(
            "| {w} | {jobs_per_run} | {secs:.1} | {per_min:.1} | {:.2}x | {ran:?} |",
            per_min / base
        ));
        drop(workers);
    }
    let per = commits_per_companion(&sh.hub);
    assert_eq!(per.len(), total);
    assert!(per.values().all(|c| *c == 1), "no job ran twice: {per:?}");
    println!(
        "BENCH jobs | weights {weights} bytes per job, downloads held to {bw} B/s each (about 2 s)"
    );
    println!("BENCH jobs | worker processes | jobs | seconds | jobs/min | vs 1 worker | jobs per worker |");
    for r in rows {
        println!("BENCH jobs {r}");
    }
}

/// Benchmark (ignored; see above): claim latency with 1,000 queued jobs and 8 workers
/// (8 connections, one thread each, claiming and finishing until the queue is empty):
/// p50/p99/max, and no job claimed twice.
#[test]
#[ignore]
fn bench_claim_latency_1000_jobs_8_workers() {
    // Off the line libtest starts with the test's name.
    println!();
    let Some(db) = TempDb::new("claims_bench") else {
        return;
    };
    let setup = PgStore::open(&db.url).expect("pg");
    let keys: Vec<String> = (0..1000).map(|i| format!("bench-{i}")).collect();
    for k in &keys {
        setup.enqueue(&new_job(k)).expect("enqueue");
    }
    let t0 = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|w| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let s = PgStore::open(&url).expect("pg");
                let mut lat = Vec::new();
                let mut ids = Vec::new();
                loop {
                    let t = Instant::now();
                    let got = s
                        .claim(&format!("w{w}"), Duration::from_secs(60))
                        .expect("claim");
                    lat.push(t.elapsed());
                    let Some(job) = got else { break };
                    ids.push(job.id);
                    s.finish(job.id).expect("finish");
                }
                (lat, ids)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut ids = Vec::new();
    for t in threads {
        let (l, i) = t.join().expect("thread");
        lat.extend(l);
        ids.extend(i);
    }
    let wall = t0.elapsed().as_secs_f64();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 1000, "every job claimed");
    assert_eq!(unique.len(), 1000, "no job claimed twice");
    lat.sort();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!("BENCH claims | jobs | workers | claims/s | p50 ms | p99 ms | max ms |");
    println!(
        "BENCH claims | 1000 | 8 | {:.0} | {:.2} | {:.2} | {:.2} |",
        1000.0 / wall,
        q(0.5),
        q(0.99),
        q(1.0)
    );
}
