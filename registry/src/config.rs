//! Settings: embedded defaults, then the config file (TOML), then the environment, then
//! command-line flags, each overriding the one before.
//!
//! Secrets never have to be typed: without `TENPAK_WEBHOOK_SECRET` / `TENPAK_API_TOKEN`
//! the registry creates random ones on first start and keeps them (mode 0600) in the
//! data dir, where the operator reads them to register the webhook.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use tenpak::plan::Target;

/// Everything the registry is configured by.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the database, keys, chunk store and work files live.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Hub endpoint (`HF_ENDPOINT`; default `https://huggingface.co`).
    pub hub_endpoint: Option<String>,
    /// Hub token (`HF_TOKEN`), needed to publish companion repos.
    pub hub_token: Option<String>,
    /// The webhook secret (`TENPAK_WEBHOOK_SECRET`).
    pub webhook_secret: String,
    /// Bearer token of the write endpoints (`TENPAK_API_TOKEN`).
    pub api_token: String,
    /// Targets packed for every model (`TENPAK_TARGETS`, comma-separated).
    pub targets: Vec<Target>,
    /// Companion repository pattern, `{owner}` and `{name}` substituted.
    pub companion: String,
    /// Concurrent jobs (0: accept webhooks and API calls, run nothing).
    pub workers: usize,
    /// The branch whose updates are compressed.
    pub branch: String,
    /// Whether private source repositories are compressed.
    pub allow_private: bool,
    /// Attempts per job before it is marked failed (transient errors only retry).
    pub max_attempts: i64,
    /// Text for the perplexity column of model cards (none: column says "not measured").
    pub eval_text: Option<PathBuf>,
    /// Tokens of `eval_text` evaluated.
    pub eval_tokens: usize,
    /// Texts `POST /evaluate` and `POST /optimize` may name (`"text": "NAME"`), by name;
    /// `eval_text`, when set, is also `eval`. `GET /texts` lists them.
    pub texts: std::collections::BTreeMap<String, PathBuf>,
    /// Hosts whose `.tnpk` URLs `POST /evaluate` may fetch (`url`); none by default (the
    /// registry fetching any URL it is given would let callers reach internal hosts).
    pub evaluate_url_hosts: Vec<String>,
    /// The optimizer's hardware table changes (`tenpak optimize --hardware-file`'s JSON).
    pub hardware_file: Option<PathBuf>,
    /// A delta job's budget in bits per fine-tune weight (`TENPAK_DELTA_BITS`; every
    /// byte counted): the tensors its base keeps raw (embeddings) are stored exactly
    /// when it allows, lossily (chosen by measured error) below. 2.0 keeps them exact on
    /// typical models; 0.7 made a SmolLM2 fine-tune's delta 0.093x of its own `balanced`
    /// artifact at +0.26% perplexity (bench/results/delta.md).
    pub delta_bits_per_weight: f64,
    /// Where the secrets came from (for the startup log).
    pub secret_files: Vec<PathBuf>,
    /// Longest wait for the next bytes from the Hub (or an upload server it names): a
    /// stalled transfer fails as a transient error and the job is retried.
    pub hub_read_timeout: std::time::Duration,
    /// The job store: `None` for SQLite in the data dir (the embedded default), or a
    /// `postgres://` URL for a queue several registry processes share.
    pub database: Option<String>,
    /// The chunk store: `None` for `chunks/` in the data dir (the embedded default), or
    /// `s3://bucket/prefix` for an S3-compatible object store several registry processes
    /// share (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, … configure the client).
    pub chunks: Option<String>,
    /// The signing key file: `None` for `signing-key` in the data dir (created on first
    /// start). Registry processes that publish for one organisation share one key.
    pub signing_key: Option<PathBuf>,
    /// Memory all running jobs may hold together, by their estimates
    /// ([`crate::pipeline::memory_estimate`]): a job waits until its estimate fits beside
    /// the running ones, and one larger than the whole budget fails before downloading.
    pub memory_budget: u64,
    /// Longest a model's own tokenizer may take on the evaluation text (it runs in a
    /// child process, killed at this limit: the card then says why perplexity was not
    /// measured).
    pub tokenize_timeout: std::time::Duration,
    /// How long a running job's lease lasts: its worker renews it every third of this;
    /// a job whose lease ran out (its process died or hung) goes back to the queue (or
    /// to `failed` after `max_attempts`), and a worker that lost its lease does not
    /// publish.
    pub job_lease: std::time::Duration,
    /// Connection and request limits of the HTTP server.
    pub limits: crate::server::Limits,
    /// Largest model accepted (all its safetensors) and largest side file (config,
    /// tokenizer, card), checked against the Hub's listing before downloading.
    pub download_limits: tenpak::hub::DownloadLimits,
    /// Models reported on GitHub: a Hub owner (`acme`) or model (`acme/llama`) → the GitHub
    /// repository (`acme-ml/models`) that gets an issue per model and a comment per revision.
    pub github_repos: std::collections::BTreeMap<String, String>,
    /// How to reach GitHub (credentials from `GITHUB_TOKEN`, or `GITHUB_APP_ID` +
    /// `GITHUB_APP_KEY` + `GITHUB_INSTALLATION_ID`); `None` without `github_repos`.
    pub github: Option<tenpak::github::GitHubConfig>,
}

/// The config file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Settings::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`Settings::hub_endpoint`].
    pub hub_endpoint: Option<String>,
    /// See [`Settings::hub_token`].
    pub hub_token: Option<String>,
    /// See [`Settings::webhook_secret`].
    pub webhook_secret: Option<String>,
    /// See [`Settings::api_token`].
    pub api_token: Option<String>,
    /// See [`Settings::targets`].
    pub targets: Option<Vec<String>>,
    /// See [`Settings::companion`].
    pub companion: Option<String>,
    /// See [`Settings::workers`].
    pub workers: Option<usize>,
    /// See [`Settings::branch`].
    pub branch: Option<String>,
    /// See [`Settings::allow_private`].
    pub allow_private: Option<bool>,
    /// See [`Settings::max_attempts`].
    pub max_attempts: Option<i64>,
    /// See [`Settings::eval_text`].
    pub eval_text: Option<PathBuf>,
    /// See [`Settings::eval_tokens`].
    pub eval_tokens: Option<usize>,
    /// See [`Settings::texts`].
    pub texts: Option<std::collections::BTreeMap<String, PathBuf>>,
    /// See [`Settings::evaluate_url_hosts`].
    pub evaluate_url_hosts: Option<Vec<String>>,
    /// See [`Settings::hardware_file`].
    pub hardware_file: Option<PathBuf>,
    /// See [`Settings::delta_bits_per_weight`].
    pub delta_bits_per_weight: Option<f64>,
    /// See [`crate::server::Limits::max_connections`].
    pub max_connections: Option<usize>,
    /// See [`crate::server::Limits::header_timeout`] (seconds).
    pub header_timeout_s: Option<f64>,
    /// See [`crate::server::Limits::body_timeout`] (seconds).
    pub body_timeout_s: Option<f64>,
    /// See [`crate::server::Limits::request_timeout`] (seconds).
    pub request_timeout_s: Option<f64>,
    /// See [`crate::server::Limits::max_body_bytes`].
    pub max_body_bytes: Option<usize>,
    /// See [`crate::server::Limits::idle_timeout`] (seconds).
    pub idle_timeout_s: Option<f64>,
    /// See [`Settings::hub_read_timeout`] (seconds).
    pub hub_read_timeout_s: Option<f64>,
    /// See [`Settings::job_lease`] (seconds).
    pub job_lease_s: Option<f64>,
    /// See [`Settings::tokenize_timeout`] (seconds).
    pub tokenize_timeout_s: Option<f64>,
    /// See [`Settings::memory_budget`] (bytes).
    pub memory_budget_bytes: Option<u64>,
    /// See [`Settings::database`].
    pub database: Option<String>,
    /// See [`Settings::chunks`].
    pub chunks: Option<String>,
    /// See [`Settings::signing_key`].
    pub signing_key: Option<PathBuf>,
    /// See [`Settings::download_limits`] (bytes of all weights).
    pub max_model_bytes: Option<u64>,
    /// See [`Settings::download_limits`] (bytes of one side file).
    pub max_side_file_bytes: Option<u64>,
    /// See [`Settings::github_repos`].
    pub github_repos: Option<std::collections::BTreeMap<String, String>>,
    /// GitHub's REST API (GitHub Enterprise: `https://HOST/api/v3`); `GITHUB_API_URL`.
    pub github_api_url: Option<String>,
    /// GitHub's upload host; `GITHUB_UPLOADS_URL`.
    pub github_uploads_url: Option<String>,
}

/// Default cap on a model's weights (all its safetensors): 64 GiB.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 64 << 30;

/// Default cap on one side file (config, tokenizer, card): 64 MiB.
pub const DEFAULT_MAX_SIDE_FILE_BYTES: u64 = 64 << 20;

/// Default memory budget: three quarters of the machine's memory (`MemTotal` in
/// `/proc/meminfo`), 8 GiB where that cannot be read.
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(8 << 30, |kib| kib * 1024 / 4 * 3)
}

/// Default job lease.
pub const DEFAULT_JOB_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// The named texts: those configured, and `eval_text` as `eval`. Names are short
/// identifiers (they appear in job requests and URLs).
fn texts(
    mut named: std::collections::BTreeMap<String, PathBuf>,
    eval_text: Option<&Path>,
) -> anyhow::Result<std::collections::BTreeMap<String, PathBuf>> {
    if let Some(p) = eval_text {
        named
            .entry("eval".into())
            .or_insert_with(|| p.to_path_buf());
    }
    for (name, p) in &named {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("text name {name:?}: use letters, digits, '-', '_' or '.' (at most 64)");
        }
        if !p.is_file() {
            bail!("text {name}: {} is not a file", p.display());
        }
    }
    Ok(named)
}

/// Parses `balanced,quality` into targets.
pub fn parse_targets(s: &[String]) -> anyhow::Result<Vec<Target>> {
    use clap::ValueEnum;
    let mut out = Vec::new();
    for t in s.iter().flat_map(|t| t.split(',')).map(str::trim) {
        if t.is_empty() {
            continue;
        }
        let target = Target::from_str(t, true)
            .map_err(|_| anyhow::anyhow!("unknown target {t:?} (quality, balanced, size)"))?;
        if !out.contains(&target) {
            out.push(target);
        }
    }
    if out.is_empty() {
        bail!("no targets given");
    }
    Ok(out)
}

/// A target's name as written in files and the API.
pub fn target_name(t: Target) -> &'static str {
    match t {
        Target::Quality => "quality",
        Target::Balanced => "balanced",
        Target::Size => "size",
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// The job store: the flag, else `TENPAK_DATABASE_URL`, else the config file's
/// `database`; `None` (or empty) is SQLite in the data dir. Only `postgres://` URLs are
/// another engine. Every command that opens the job store decides it here.
pub fn database_url(flag: Option<String>, file: Option<String>) -> anyhow::Result<Option<String>> {
    match flag
        .filter(|u| !u.trim().is_empty())
        .or_else(|| env("TENPAK_DATABASE_URL"))
        .or(file)
    {
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok(Some(u)),
        Some(u) if u.is_empty() => Ok(None),
        Some(u) => bail!("database {u:?}: a postgres:// URL, or none for SQLite in the data dir"),
        None => Ok(None),
    }
}

/// The chunk store: the flag, else `TENPAK_CHUNKS`, else the config file's `chunks`;
/// `None` (or empty) is `chunks/` in the data dir, else an `s3://bucket/prefix` URL.
pub fn chunks_spec(flag: Option<String>, file: Option<String>) -> anyhow::Result<Option<String>> {
    match flag
        .filter(|u| !u.trim().is_empty())
        .or_else(|| env("TENPAK_CHUNKS"))
        .or(file)
    {
        Some(u) if u.is_empty() => Ok(None),
        Some(u) if u.starts_with("s3://") && u.len() > "s3://".len() => Ok(Some(u)),
        Some(u) => {
            bail!("chunks {u:?}: an s3://bucket/prefix URL, or none for chunks/ in the data dir")
        }
        None => Ok(None),
    }
}

/// Reads `path`, or creates it with a fresh random token (hex, 32 bytes).
fn secret_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = hex::encode(b);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

/// Command-line overrides.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--database`.
    pub database: Option<String>,
    /// `--chunks`.
    pub chunks: Option<String>,
    /// `--signing-key`.
    pub signing_key: Option<PathBuf>,
}

impl Settings {
    /// Builds the settings for `data_dir` from the config file, the environment and
    /// the flags; creates the data dir and missing secrets.
    pub fn load(data_dir: &Path, config: Option<&Path>, flags: &Overrides) -> anyhow::Result<Self> {
        private_dir(data_dir)?;
        let file: FileConfig = match config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("config {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let mut secret_files = Vec::new();
        let webhook_secret = match env("TENPAK_WEBHOOK_SECRET").or(file.webhook_secret) {
            Some(s) => s,
            None => {
                let p = data_dir.join("webhook-secret");
                secret_files.push(p.clone());
                secret_file(&p)?
            }
        };
        let api_token = match env("TENPAK_API_TOKEN").or(file.api_token) {
            Some(s) => s,
            None => {
                let p = data_dir.join("api-token");
                secret_files.push(p.clone());
                secret_file(&p)?
            }
        };
        let targets = match env("TENPAK_TARGETS") {
            Some(t) => parse_targets(&[t])?,
            None => match file.targets {
                Some(t) => parse_targets(&t)?,
                None => vec![Target::Balanced],
            },
        };
        let companion = file
            .companion
            .unwrap_or_else(|| "{owner}/{name}-tnpk".to_string());
        check_companion(&companion)?;
        for (what, v) in [
            ("webhook_secret", &webhook_secret),
            ("api_token", &api_token),
        ] {
            if v.trim().is_empty() {
                bail!(
                    "{what} is empty: leave it unset to have one generated, or give a real secret"
                );
            }
        }
        let hub_token = env("HF_TOKEN").or(file.hub_token);
        if hub_token.as_deref().is_none_or(|t| t.trim().is_empty()) {
            bail!(
                "no Hub token: set HF_TOKEN or hub_token in the config file (a token with \
                 write access to the companion repos' owners). The registry does not fall back \
                 to the token file of `huggingface-cli login`: that is the operator's own."
            );
        }
        let delta_bits_per_weight = match env("TENPAK_DELTA_BITS") {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .with_context(|| format!("TENPAK_DELTA_BITS={v:?} is not a number"))?,
            None => file.delta_bits_per_weight.unwrap_or(2.0),
        };
        if !(delta_bits_per_weight.is_finite() && delta_bits_per_weight > 0.0) {
            bail!("delta_bits_per_weight must be a positive number, not {delta_bits_per_weight}");
        }
        let d = crate::server::Limits::default();
        let secs = |what: &str, v: Option<f64>, default: std::time::Duration| match v {
            None => Ok(default),
            Some(s) if s.is_finite() && s > 0.0 && s < 1e6 => {
                Ok(std::time::Duration::from_secs_f64(s))
            }
            Some(s) => Err(anyhow::anyhow!(
                "{what} must be a positive number of seconds, not {s}"
            )),
        };
        let limits = crate::server::Limits {
            max_connections: match file.max_connections.unwrap_or(d.max_connections) {
                0 => bail!("max_connections must be at least 1"),
                n => n,
            },
            header_timeout: secs("header_timeout_s", file.header_timeout_s, d.header_timeout)?,
            body_timeout: secs("body_timeout_s", file.body_timeout_s, d.body_timeout)?,
            request_timeout: secs(
                "request_timeout_s",
                file.request_timeout_s,
                d.request_timeout,
            )?,
            max_body_bytes: file.max_body_bytes.unwrap_or(d.max_body_bytes),
            idle_timeout: secs("idle_timeout_s", file.idle_timeout_s, d.idle_timeout)?,
            shutdown_grace: d.shutdown_grace,
        };
        let github_repos = file.github_repos.clone().unwrap_or_default();
        for (from, to) in &github_repos {
            let parts: Vec<&str> = from.split('/').collect();
            if parts.is_empty()
                || parts.len() > 2
                || !parts
                    .iter()
                    .all(|p| tenpak_hooks::is_repo_id(&format!("{p}/x")))
            {
                bail!("github_repos: {from:?} is neither a Hub owner nor owner/name");
            }
            tenpak::github::RepoName::parse(to)
                .map_err(|e| anyhow::anyhow!("github_repos.{from}: {e}"))?;
        }
        let github = if github_repos.is_empty() {
            None
        } else {
            let mut cfg = tenpak::github::GitHubConfig::from_env()?.ok_or_else(|| {
                anyhow::anyhow!(
                    "github_repos is set but there are no GitHub credentials: set GITHUB_TOKEN, \
                     or GITHUB_APP_ID, GITHUB_APP_KEY and GITHUB_INSTALLATION_ID"
                )
            })?;
            if cfg.api_url.is_none() {
                cfg.api_url = file.github_api_url.clone();
            }
            if cfg.uploads_url.is_none() {
                cfg.uploads_url = file.github_uploads_url.clone();
            }
            Some(cfg)
        };
        let max_attempts = file.max_attempts.unwrap_or(3);
        if max_attempts < 1 {
            bail!("max_attempts must be at least 1");
        }
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address")),
            hub_endpoint: env("HF_ENDPOINT").or(file.hub_endpoint),
            hub_token,
            webhook_secret,
            api_token,
            targets,
            companion,
            workers: flags.workers.or(file.workers).unwrap_or(1),
            branch: file.branch.unwrap_or_else(|| "main".into()),
            allow_private: file.allow_private.unwrap_or(false),
            max_attempts,
            texts: texts(file.texts.unwrap_or_default(), file.eval_text.as_deref())?,
            evaluate_url_hosts: file.evaluate_url_hosts.unwrap_or_default(),
            hardware_file: file.hardware_file,
            eval_text: file.eval_text,
            eval_tokens: file.eval_tokens.unwrap_or(4096),
            delta_bits_per_weight,
            secret_files,
            hub_read_timeout: secs(
                "hub_read_timeout_s",
                file.hub_read_timeout_s,
                tenpak::hub::READ_TIMEOUT,
            )?,
            job_lease: secs("job_lease_s", file.job_lease_s, DEFAULT_JOB_LEASE)?,
            memory_budget: file
                .memory_budget_bytes
                .unwrap_or_else(default_memory_budget),
            database: database_url(flags.database.clone(), file.database)?,
            chunks: chunks_spec(flags.chunks.clone(), file.chunks)?,
            signing_key: flags
                .signing_key
                .clone()
                .or_else(|| env("TENPAK_SIGNING_KEY").map(PathBuf::from))
                .or(file.signing_key),
            tokenize_timeout: secs(
                "tokenize_timeout_s",
                file.tokenize_timeout_s,
                std::time::Duration::from_secs(120),
            )?,
            limits,
            download_limits: tenpak::hub::DownloadLimits {
                max_weights_bytes: file.max_model_bytes.unwrap_or(DEFAULT_MAX_MODEL_BYTES),
                max_side_file_bytes: file
                    .max_side_file_bytes
                    .unwrap_or(DEFAULT_MAX_SIDE_FILE_BYTES),
            },
            github_repos,
            github,
        })
    }

    /// The GitHub repository a model's reports go to: its own mapping, else its owner's.
    pub fn github_repo_for(&self, model: &str) -> Option<&str> {
        let owner = model.split('/').next().unwrap_or(model);
        self.github_repos
            .get(model)
            .or_else(|| self.github_repos.get(owner))
            .map(String::as_str)
    }

    /// The companion repository of `repo` (`owner/name`).
    pub fn companion_of(&self, repo: &str) -> String {
        let (owner, name) = repo.split_once('/').unwrap_or(("", repo));
        self.companion
            .replace("{owner}", owner)
            .replace("{name}", name)
    }

    /// The suffix companion names end with (to ignore the registry's own pushes).
    pub fn companion_suffix(&self) -> String {
        self.companion
            .rsplit_once("{name}")
            .map(|(_, s)| s.to_string())
            .unwrap_or_default()
    }
}

/// Creates the data dir readable by its owner only (it holds the Hub cache, which may
/// hold private weights, the database and the secrets), and tightens an existing one.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("data dir {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700)).with_context(
            || format!("making data dir {} private (mode {mode:o})", dir.display()),
        )?;
    }
    Ok(())
}

/// A companion pattern must name a repository of the source's owner other than the
/// source itself: `{owner}` (else owners' models collide) and `{name}` with something
/// added (else the registry overwrites the source's card and reacts to its own pushes).
fn check_companion(pattern: &str) -> anyhow::Result<()> {
    if !pattern.contains("{name}") || !pattern.contains("{owner}") {
        bail!("companion pattern {pattern:?} must contain {{owner}} and {{name}}");
    }
    if pattern.matches('/').count() != 1 {
        bail!("companion pattern {pattern:?} must be owner/name (one '/')");
    }
    let (owner, name) = pattern.split_once('/').unwrap_or_default();
    if name == "{name}" && owner == "{owner}" {
        bail!(
            "companion pattern {pattern:?} names the source repository itself; \
             add a suffix such as {{owner}}/{{name}}-tnpk"
        );
    }
    if !name.contains("{name}") {
        bail!("companion pattern {pattern:?} must have {{name}} in the repository name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(toml: &str) -> anyhow::Result<Settings> {
        let tmp = tempfile::tempdir().expect("tmp");
        let cfg = tmp.path().join("registry.toml");
        std::fs::write(&cfg, format!("hub_token = \"hf_test\"\n{toml}")).expect("config");
        Settings::load(&tmp.path().join("data"), Some(&cfg), &Overrides::default())
    }

    #[test]
    fn every_command_reads_the_stores_the_same_way() {
        // (The variables are not set in this test process; flags and files decide.)
        assert_eq!(database_url(None, None).expect("none"), None);
        assert_eq!(
            database_url(Some(String::new()), None).expect("empty"),
            None
        );
        assert_eq!(
            database_url(None, Some("postgres://u@h/db".into())).expect("file"),
            Some("postgres://u@h/db".into())
        );
        assert_eq!(
            database_url(
                Some("postgresql://a@b/c".into()),
                Some("postgres://x@y/z".into())
            )
            .expect("flag first"),
            Some("postgresql://a@b/c".into())
        );
        assert!(database_url(Some("mysql://h/db".into()), None).is_err());
        assert!(database_url(Some("registry.sqlite3".into()), None).is_err());
        assert_eq!(chunks_spec(None, None).expect("none"), None);
        assert_eq!(
            chunks_spec(Some("s3://bucket/p".into()), None).expect("s3"),
            Some("s3://bucket/p".into())
        );
        for bad in ["s3://", "file:///etc", "/tmp/chunks", "gs://b"] {
            assert!(chunks_spec(Some(bad.into()), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn configs_that_must_not_be_accepted_are_refused() {
        for bad in [
            "webhook_secret = \"\"",
            "api_token = \"  \"",
            "companion = \"{owner}/{name}\"",
            "companion = \"tenpak/{name}\"",
            "companion = \"{owner}/tnpk\"",
            "companion = \"{owner}/{name}/x\"",
            "companion = \"{name}-{owner}\"",
        ] {
            if std::env::var_os("TENPAK_WEBHOOK_SECRET").is_some()
                || std::env::var_os("TENPAK_API_TOKEN").is_some()
            {
                break; // the environment overrides the file
            }
            let e = load_with(bad).expect_err(bad);
            tracing::warn!("{bad}: {e}");
        }
        load_with("companion = \"{owner}/{name}-int4\"").expect("a good pattern");
        load_with("companion = \"{owner}/tnpk-{name}\"").expect("a good pattern");
        // No token at all: refused (the operator's own login token is never used).
        if std::env::var_os("HF_TOKEN").is_none() {
            let tmp = tempfile::tempdir().expect("tmp");
            let e = Settings::load(&tmp.path().join("d"), None, &Overrides::default())
                .expect_err("no token");
            assert!(e.to_string().contains("no Hub token"), "{e}");
        }
    }

    #[test]
    fn the_data_dir_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for d in [tmp.path().join("new/data"), open] {
            private_dir(&d).expect("data dir");
            let mode = std::fs::metadata(&d).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
    }

    #[test]
    fn the_delta_budget_comes_from_the_config_and_is_checked() {
        if std::env::var_os("TENPAK_DELTA_BITS").is_some() {
            return; // the environment overrides the file; nothing to check here
        }
        assert_eq!(load_with("").expect("defaults").delta_bits_per_weight, 2.0);
        let s = load_with("delta_bits_per_weight = 0.7").expect("config");
        assert_eq!(s.delta_bits_per_weight, 0.7);
        for bad in [
            "delta_bits_per_weight = -1.0",
            "delta_bits_per_weight = 0.0",
        ] {
            assert!(load_with(bad).is_err(), "{bad}");
        }
    }
}
