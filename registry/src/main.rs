//! The `tenpak-registry` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tenpak_registry::config::{Overrides, Settings};

/// TenPak registry: receives Hugging Face Hub webhooks, compresses new model commits into
/// signed .tnpk artifacts, publishes them to companion repos, and serves them by HTTP
/// ranges (also through a Hub-compatible read API, so HF_ENDPOINT can point here).
///
/// Settings come from, in rising precedence: defaults, --config FILE (TOML), the
/// environment (HF_ENDPOINT, HF_TOKEN, TENPAK_WEBHOOK_SECRET, TENPAK_API_TOKEN,
/// TENPAK_TARGETS), then flags. Missing secrets are generated on first start and kept
/// in the data dir (webhook-secret, api-token).
#[derive(Debug, Parser)]
#[command(name = "tenpak-registry", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a registry process keeps its state, and what it shares with others.
#[derive(Debug, clap::Args)]
struct Stores {
    /// Keys, secrets, download cache and work files live here (also the database and the
    /// chunk store unless --database / --chunks put them elsewhere). One process per
    /// data dir.
    #[arg(long, default_value = "tenpak-registry-data")]
    data_dir: PathBuf,
    /// The job store: a `postgres://user@host/db` URL for a queue several registry
    /// processes share (also TENPAK_DATABASE_URL); default SQLite in the data dir.
    #[arg(long)]
    database: Option<String>,
    /// The chunk store: `s3://bucket/prefix` for an S3-compatible object store several
    /// registry processes share (also TENPAK_CHUNKS; the client reads AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); default chunks/ in the
    /// data dir.
    #[arg(long)]
    chunks: Option<String>,
}

/// How a registry process runs.
#[derive(Debug, clap::Args)]
struct Run {
    #[command(flatten)]
    stores: Stores,
    /// TOML file with any of: listen, hub_endpoint, hub_token, webhook_secret,
    /// api_token, targets, companion, workers, branch, allow_private, max_attempts,
    /// eval_text, eval_tokens, database, chunks, signing_key and the limits (see
    /// docs/REGISTRY.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Concurrent jobs in this process (0: accept deliveries and serve, run nothing).
    /// Default 1.
    #[arg(long)]
    workers: Option<usize>,
    /// The ed25519 signing key file (also TENPAK_SIGNING_KEY): processes publishing for
    /// one organisation share one. Default: `signing-key` in the data dir, made on first
    /// start.
    #[arg(long)]
    signing_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry: the HTTP API (webhooks, Studio API, Hub-compatible reads) and,
    /// unless --workers 0, workers that pack and publish.
    Serve {
        #[command(flatten)]
        run: Run,
        /// Address to listen on (default 127.0.0.1:8787).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run workers only, no HTTP API: scale packing out over processes and hosts that
    /// share --database (PostgreSQL) and --chunks (S3) with `serve --workers 0`
    /// processes answering the API.
    Work {
        #[command(flatten)]
        run: Run,
    },
    /// Housekeeping now (the registry also runs it every six hours): prune old webhook
    /// deliveries and remove chunk-store pieces that no artifact, revision or running job
    /// names and that are older than the grace period. Safe while registries run.
    Gc {
        #[command(flatten)]
        stores: Stores,
        /// Unreferenced pieces younger than this are kept (hours).
        #[arg(long, default_value_t = 24.0)]
        grace_hours: f64,
    },
    /// (Internal) Tokenize TEXT with the untrusted TOKENIZER and print the ids as JSON: the
    /// registry runs this as a child process with a time limit (see `tokenize.rs`).
    #[command(hide = true)]
    Tokenize {
        /// A tokenizer.json.
        tokenizer: PathBuf,
        /// A UTF-8 text file.
        text: PathBuf,
    },
    /// Put a failed job back in the queue, its attempts counted afresh (the same as
    /// `POST /jobs/{id}/retry`; a running registry picks it up within seconds).
    Retry {
        /// The job id (`/jobs?state=failed` lists them).
        id: i64,
        #[command(flatten)]
        stores: Stores,
    },
}

fn logs() {
    // Logs to stderr as tracing events inside per-request and per-job spans; RUST_LOG
    // filters them (default `info`, the migration library's own chatter at `warn`;
    // `tower_http=debug` shows every request).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,refinery_core=warn")),
        )
        .init();
}

/// Runs the registry (`serve` with an address, `work` without) until it is stopped.
fn run(run: Run, listen: Option<Option<SocketAddr>>) -> anyhow::Result<()> {
    logs();
    let settings = Settings::load(
        &run.stores.data_dir,
        run.config.as_deref(),
        &Overrides {
            listen: listen.flatten(),
            workers: run.workers,
            database: run.stores.database,
            chunks: run.stores.chunks,
            signing_key: run.signing_key,
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(async {
        let ctx = tenpak_registry::open(settings)?;
        match listen {
            Some(_) => tenpak_registry::serve(ctx).await,
            None => tenpak_registry::work(ctx).await,
        }
    });
    // A job mid-pack is not waited for: its lease runs out (or it is requeued at the
    // next start) and a worker takes it again.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    r
}

/// The job store a one-shot command works on.
fn store_of(s: &Stores) -> anyhow::Result<Box<dyn tenpak_registry::store::Store>> {
    match tenpak_registry::config::database_url(s.database.clone(), None)? {
        Some(url) => Ok(Box::new(tenpak_registry::store::PgStore::open(&url)?)),
        None => {
            let db = s.data_dir.join("registry.sqlite3");
            if !db.exists() {
                anyhow::bail!("no registry database at {}", db.display());
            }
            Ok(Box::new(tenpak_registry::store::SqliteStore::open(&db)?))
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { run: r, listen } => run(r, Some(listen)),
        Command::Work { run: r } => run(r, None),
        Command::Gc {
            stores,
            grace_hours,
        } => {
            if !(grace_hours.is_finite() && grace_hours >= 0.0) {
                anyhow::bail!("--grace-hours must be a number of hours >= 0");
            }
            let store = store_of(&stores)?;
            let rt = tokio::runtime::Runtime::new()?;
            // The object store's client runs on the runtime; the sweep waits on it from
            // this (non-async) thread.
            let _guard = rt.enter();
            let chunks = match tenpak_registry::config::chunks_spec(stores.chunks.clone(), None)? {
                Some(spec) => tenpak_registry::chunks::ChunkStore::open_spec(&spec)?,
                None => tenpak_registry::chunks::ChunkStore::open(&stores.data_dir.join("chunks"))?,
            };
            let grace = std::time::Duration::from_secs_f64(grace_hours * 3600.0);
            let (pruned, s) = tenpak_registry::maintenance(
                store.as_ref(),
                &chunks,
                &stores.data_dir.join("hub-cache"),
                grace,
            )?;
            println!(
                "{pruned} old deliveries pruned; pieces: {} kept, {} young spared, {} removed ({} bytes){}",
                s.kept,
                s.young,
                s.removed,
                s.bytes_freed,
                if s.cut_short { "; stopped at the sweep lease's end, run again" } else { "" }
            );
            Ok(())
        }
        Command::Tokenize { tokenizer, text } => {
            tenpak_registry::tokenize::child_main(&tokenizer, &text)
        }
        Command::Retry { id, stores } => {
            let store = store_of(&stores)?;
            match store.retry(id)? {
                Some((_, true)) => {
                    println!("job {id} queued again");
                    Ok(())
                }
                Some((job, false)) => {
                    anyhow::bail!("job {id} is {}; only a failed job is retried", job.state)
                }
                None => anyhow::bail!("no job {id}"),
            }
        }
    }
}
