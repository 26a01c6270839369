//! `tenpak-registry`: Hub webhooks in, signed companion repos out, range-served artifacts.
//!
//! - [`api`]: the HTTP surface, split by audience (webhook receiver, Studio API with
//!   artifact ranges, the Hub-compatible read API, service endpoints), one `AppError`,
//!   the OpenAPI document;
//! - [`store`]: the `JobStore` and `Catalog` traits, SQLite their embedded implementation;
//! - [`chunks`]: the content-addressed chunk store;
//! - [`pipeline`]: workers and the per-job pipeline;
//! - [`card`]: the companion repo's model card;
//! - [`redact`]: what of an error's text the public API may show;
//! - [`server`]: the HTTP server loop with connection and request limits;
//! - [`config`]: settings from defaults, file, environment and flags;
//! - [`tokenize`]: untrusted tokenizers run in a child process under a time limit;
//! - [`metrics`]: the Prometheus `/metrics` endpoint's counters and histograms.

pub mod analysis;
pub mod api;
pub mod card;
pub mod charts;
pub mod chunks;
pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod redact;
pub mod report;
pub mod reports;
pub mod server;
pub mod store;
pub mod tokenize;

use std::sync::Arc;

use anyhow::Context;
use store::JobStore;
use tenpak::artifact::sign;

/// Opens the registry's signing key: `file` when given (it must exist: processes that
/// share a key must not each make their own), else `signing-key` under the data dir,
/// created on first start.
pub fn signing_key(
    dir: &std::path::Path,
    file: Option<&std::path::Path>,
) -> anyhow::Result<ed25519_dalek::SigningKey> {
    if let Some(f) = file {
        return sign::load_signing_key(f)
            .with_context(|| format!("reading the signing key {}", f.display()));
    }
    let path = dir.join("signing-key");
    if !path.exists() {
        let key = sign::generate()?;
        sign::write_keypair(&key, &path)?;
        tracing::info!("created signing key {}", path.display());
    }
    Ok(sign::load_signing_key(&path)?)
}

/// Opens everything the registry needs; requeues interrupted jobs.
pub fn open(settings: config::Settings) -> anyhow::Result<Arc<pipeline::Ctx>> {
    let dir = settings.data_dir.clone();
    let lock = lock_data_dir(&dir)?;
    let key = signing_key(&dir, settings.signing_key.as_deref())?;
    let instance = instance_id(&dir)?;
    let (store, i): (Arc<dyn store::Store>, _) = match &settings.database {
        None => {
            let s = store::SqliteStore::open(&dir.join("registry.sqlite3"))
                .with_context(|| format!("opening the job store in {}", dir.display()))?;
            // This process owns the data dir (its lock): every running job was ours.
            let i = s.requeue_interrupted(settings.max_attempts)?;
            (Arc::new(s), i)
        }
        Some(url) => {
            let s = store::PgStore::open(url).context("opening the PostgreSQL job store")?;
            // Other processes share this queue: only jobs whose lease ran out are theirs
            // no more, and those an earlier process on this data dir held (its lock is
            // ours now, so that process is gone).
            let mut i = s.requeue_expired(settings.max_attempts)?;
            let p =
                s.requeue_predecessors(&pipeline::owner_prefix(&instance), settings.max_attempts)?;
            i.requeued += p.requeued;
            i.failed += p.failed;
            (Arc::new(s), i)
        }
    };
    if i.requeued > 0 {
        tracing::info!(
            "requeued {} job(s) interrupted by the last shutdown",
            i.requeued
        );
    }
    if i.failed > 0 {
        tracing::info!(
            "failed {} job(s) interrupted in each of their {} attempts",
            i.failed,
            settings.max_attempts
        );
    }
    let chunks = match &settings.chunks {
        None => chunks::ChunkStore::open(&dir.join("chunks"))?,
        Some(spec) => chunks::ChunkStore::open_spec(spec)
            .with_context(|| format!("opening the chunk store {spec}"))?,
    };
    let github = match &settings.github {
        Some(cfg) => Some(Arc::new(
            tenpak::github::GitHub::new(cfg).context("the GitHub client")?,
        )),
        None => None,
    };
    let hub = tenpak::hub::Hub::new(&tenpak::hub::HubConfig {
        endpoint: settings.hub_endpoint.clone(),
        token: settings.hub_token.clone(),
        cache_dir: Some(dir.join("hub-cache")),
        read_timeout: Some(settings.hub_read_timeout),
    })?;
    let settings_memory_mib = settings.memory_budget.div_ceil(1 << 20);
    Ok(Arc::new(pipeline::Ctx {
        settings,
        store,
        chunks,
        hub,
        key,
        wake: tokio::sync::Notify::new(),
        _lock: lock,
        owner: pipeline::lease_owner(&instance),
        metrics: metrics::Metrics::new(),
        memory: tokio::sync::Semaphore::new(
            usize::try_from(settings_memory_mib).unwrap_or(usize::MAX >> 4),
        ),
        github,
    }))
}

/// The data dir's instance id (random, made on first start, kept in `instance-id`): lease
/// holders name it, so that the next process on the data dir requeues its predecessor's
/// running jobs at once.
pub fn instance_id(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("instance-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.len() == 16 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Ok(s.to_string());
        }
    }
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let id = hex::encode(b);
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Takes the data dir's lock for as long as the returned file is open: a second
/// registry on the same data dir would requeue and run the first one's running jobs.
/// The lock is the operating system's (released when the process dies, even by kill -9).
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("registry.lock");
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another tenpak-registry is running on {} (it holds {}); one process per data dir",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Webhook deliveries kept (the newest; [`maintenance`] deletes older rows).
pub const DELIVERIES_KEPT: i64 = 100_000;

/// How old an unreferenced chunk-store piece must be before a sweep removes it.
pub const SWEEP_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Longest a sweep runs (jobs wait to declare pieces while it does): it stops removing
/// pieces a minute before.
pub const SWEEP_LEASE: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// The sweep lease as taken and renewed: a sweeping process renews it every third of
/// this while it sweeps, so a process killed mid-sweep holds it this long at most
/// (rather than [`SWEEP_LEASE`], which would stall every job's store stage for minutes).
pub const SWEEP_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);

/// One round of housekeeping: prunes old webhook deliveries, removes the Hub-cache
/// downloads of repositories no queued, running or waiting job needs (left by jobs that
/// ended with the process, as a poison job does), and sweeps chunk-store pieces no
/// artifact, revision or active job names (orphans of failed jobs) older than `grace`,
/// under the job store's sweep lease (skipped when another process holds it). Safe while
/// registries run, on any number of hosts (see [`chunks::ChunkStore::sweep`]; a download
/// that races with the Hub-cache sweep fails as local trouble and is retried).
pub fn maintenance(
    store: &dyn store::Store,
    chunks: &chunks::ChunkStore,
    hub_cache: &std::path::Path,
    grace: std::time::Duration,
) -> anyhow::Result<(usize, chunks::Swept)> {
    let pruned = store.prune_deliveries(DELIVERIES_KEPT)?;
    let active: std::collections::HashSet<String> = store
        .active_repos()?
        .into_iter()
        .map(|r| tenpak::hub::cache_dir_name(&r))
        .collect();
    if let Ok(rd) = std::fs::read_dir(hub_cache) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("models--") && !active.contains(&name) {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => tracing::info!("maintenance: removed {name} from the Hub cache"),
                    Err(err) => tracing::warn!("maintenance: {}: {err}", e.path().display()),
                }
            }
        }
    }
    if !store.begin_sweep(SWEEP_HEARTBEAT)? {
        tracing::info!("maintenance: another process is sweeping the chunk store");
        return Ok((pruned, chunks::Swept::default()));
    }
    let deadline = std::time::Instant::now() + SWEEP_LEASE - std::time::Duration::from_secs(60);
    // The mark, read under the lease: every declaration made before is in it, and none
    // is made until the lease is given back.
    let done = std::sync::atomic::AtomicBool::new(false);
    let swept = std::thread::scope(|s| {
        // The heartbeat: renews the lease while the sweep runs.
        s.spawn(|| {
            let beat = SWEEP_HEARTBEAT / 3;
            let mut last = std::time::Instant::now();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if last.elapsed() >= beat {
                    if let Err(e) = store.renew_sweep(SWEEP_HEARTBEAT) {
                        tracing::warn!("maintenance: renewing the sweep lease: {e}");
                    }
                    last = std::time::Instant::now();
                }
            }
        });
        let swept = store
            .referenced_pieces()
            .map_err(anyhow::Error::from)
            .and_then(|referenced| Ok(chunks.sweep(&referenced, grace, deadline)?));
        done.store(true, std::sync::atomic::Ordering::Release);
        swept
    });
    store.end_sweep()?;
    Ok((pruned, swept?))
}

/// Runs [`maintenance`] at start and every six hours, off the async threads.
async fn maintain(ctx: Arc<pipeline::Ctx>) {
    loop {
        let c = ctx.clone();
        match tokio::task::spawn_blocking(move || maintenance(c.store.as_ref(), &c.chunks, c.hub.cache_dir(), SWEEP_GRACE))
            .await
        {
            Ok(Ok((pruned, s))) if pruned > 0 || s.removed > 0 => tracing::info!(
                "maintenance: {pruned} old deliveries pruned; {} unreferenced pieces ({} bytes) removed",
                s.removed, s.bytes_freed
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::info!("maintenance: {e:#}"),
            Err(e) => tracing::warn!("maintenance: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(6 * 3600)).await;
    }
}

/// Ctrl-C or SIGTERM (systemd, docker stop).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down; running jobs resume at the next start");
}

/// Starts what runs beside (or without) the HTTP API: the workers, housekeeping, and
/// the job store's wake-ups from other processes.
fn background(ctx: &Arc<pipeline::Ctx>) -> anyhow::Result<()> {
    if ctx.settings.workers > 0 {
        let c = ctx.clone();
        ctx.store.watch(Arc::new(move || c.wake.notify_waiters()))?;
    }
    for n in 0..ctx.settings.workers {
        tokio::spawn(pipeline::worker(ctx.clone(), n));
    }
    if ctx.settings.workers > 0 {
        // Reports a stopped process did not get to send (idempotent on GitHub's side).
        reports::catch_up(ctx.clone());
    }
    tokio::spawn(maintain(ctx.clone()));
    Ok(())
}

/// Runs workers only, no HTTP API (`tenpak-registry work`): a process of a scaled-out
/// registry that shares its database and chunk store with `serve --workers 0` processes
/// answering the API. Runs until Ctrl-C or SIGTERM (a running job's lease then runs out
/// and another worker takes it).
pub async fn work(ctx: Arc<pipeline::Ctx>) -> anyhow::Result<()> {
    if ctx.settings.workers == 0 {
        anyhow::bail!("work with 0 workers would do nothing: give --workers 1 or more");
    }
    tracing::info!(
        "tenpak-registry {} working: {} worker(s), jobs from {}, chunks in {}, hub {}",
        env!("CARGO_PKG_VERSION"),
        ctx.settings.workers,
        job_store_name(&ctx.settings),
        ctx.chunks.describe(),
        ctx.hub.endpoint()
    );
    background(&ctx)?;
    shutdown_signal().await;
    Ok(())
}

/// The job store, as the startup log names it (a database URL without its password).
fn job_store_name(settings: &config::Settings) -> String {
    settings
        .database
        .as_deref()
        .map(redact_url)
        .unwrap_or_else(|| "SQLite in the data dir".into())
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Serves until the process is stopped (Ctrl-C / SIGTERM end it; jobs left running
/// are picked up again at the next start).
pub async fn serve(ctx: Arc<pipeline::Ctx>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(ctx.settings.listen)
        .await
        .with_context(|| format!("binding {}", ctx.settings.listen))?;
    let addr = listener.local_addr()?;
    let public = ctx.key.verifying_key();
    tracing::info!(
        "tenpak-registry {} listening on http://{addr} (data {}, jobs {}, chunks {}, hub {}, targets {}, {} worker(s))",
        env!("CARGO_PKG_VERSION"),
        ctx.settings.data_dir.display(),
        job_store_name(&ctx.settings),
        ctx.chunks.describe(),
        ctx.hub.endpoint(),
        ctx.settings
            .targets
            .iter()
            .map(|t| config::target_name(*t))
            .collect::<Vec<_>>()
            .join(","),
        ctx.settings.workers
    );
    tracing::info!(
        "signing key {} (public {})",
        sign::key_id(&public),
        hex::encode(public.as_bytes())
    );
    for f in &ctx.settings.secret_files {
        tracing::info!("secret kept in {}", f.display());
    }
    background(&ctx)?;
    let limits = ctx.settings.limits;
    server::serve(listener, api::router(ctx), limits, shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_urls_lose_their_password_in_logs() {
        assert_eq!(
            super::redact_url("postgres://tenpak:s3cret@db.internal:5432/registry"),
            "postgres://tenpak:***@db.internal:5432/registry"
        );
        assert_eq!(
            super::redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(super::redact_url("postgres:///x"), "postgres:///x");
    }
}
