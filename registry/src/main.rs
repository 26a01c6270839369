//! The `tenpak-registry` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tenpak_registry::config::{Overrides, Settings};
use tenpak_registry::store::JobStore;

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// Database, keys, chunk store, download cache and work files live here.
        #[arg(long, default_value = "tenpak-registry-data")]
        data_dir: PathBuf,
        /// Address to listen on (default 127.0.0.1:8787).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// TOML file with any of: listen, hub_endpoint, hub_token, webhook_secret,
        /// api_token, targets, companion, workers, branch, allow_private, max_attempts,
        /// eval_text, eval_tokens.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Concurrent jobs (0: accept deliveries, run nothing). Default 1.
        #[arg(long)]
        workers: Option<usize>,
        /// The job store: a `postgres://user@host/db` URL for a queue several registry
        /// processes share (also TENPAK_DATABASE_URL); default SQLite in the data dir.
        #[arg(long)]
        database: Option<String>,
    },
    /// Housekeeping now (the registry also runs it every six hours): prune old webhook
    /// deliveries and remove chunk-store pieces that no artifact or revision names and
    /// that are older than the grace period. Safe while the registry runs.
    Gc {
        /// The registry's data dir.
        #[arg(long, default_value = "tenpak-registry-data")]
        data_dir: PathBuf,
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
        /// The registry's data dir.
        #[arg(long, default_value = "tenpak-registry-data")]
        data_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            config,
            workers,
            database,
        } => {
            // Logs to stderr as tracing events inside per-request and per-job spans;
            // RUST_LOG filters them (default `info`; `tower_http=debug` shows every
            // request).
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            let settings = Settings::load(
                &data_dir,
                config.as_deref(),
                &Overrides {
                    listen,
                    workers,
                    database,
                },
            )?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(async {
                let ctx = tenpak_registry::open(settings)?;
                tenpak_registry::serve(ctx).await
            });
            // A job mid-pack is not waited for: it is requeued at the next start.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            r
        }
        Command::Gc {
            data_dir,
            grace_hours,
        } => {
            if !(grace_hours.is_finite() && grace_hours >= 0.0) {
                anyhow::bail!("--grace-hours must be a number of hours >= 0");
            }
            let db = data_dir.join("registry.sqlite3");
            if !db.exists() {
                anyhow::bail!("no registry database at {}", db.display());
            }
            let store = tenpak_registry::store::SqliteStore::open(&db)?;
            let chunks = tenpak_registry::chunks::ChunkStore::open(&data_dir.join("chunks"))?;
            let grace = std::time::Duration::from_secs_f64(grace_hours * 3600.0);
            let (pruned, s) =
                tenpak_registry::maintenance(&store, &chunks, &data_dir.join("hub-cache"), grace)?;
            println!(
                "{pruned} old deliveries pruned; pieces: {} kept, {} young spared, {} removed ({} bytes)",
                s.kept, s.young, s.removed, s.bytes_freed
            );
            Ok(())
        }
        Command::Tokenize { tokenizer, text } => {
            tenpak_registry::tokenize::child_main(&tokenizer, &text)
        }
        Command::Retry { id, data_dir } => {
            let db = data_dir.join("registry.sqlite3");
            if !db.exists() {
                anyhow::bail!("no registry database at {}", db.display());
            }
            let store = tenpak_registry::store::SqliteStore::open(&db)?;
            match store.retry(id)? {
                Some((_, true)) => {
                    println!("job {id} queued again");
                    Ok(())
                }
                Some((job, false)) => {
                    anyhow::bail!("job {id} is {}; only a failed job is retried", job.state)
                }
                None => anyhow::bail!("no job {id} in {}", db.display()),
            }
        }
    }
}
