//! The Hugging Face Hub, through the `hf-hub` crate: model info, download of a model's
//! files at an exact revision into the usual cache, repository creation and commits.
//!
//! The endpoint and token come from [`HubConfig`], which honours `HF_ENDPOINT` and
//! `HF_TOKEN` (and `HF_HOME`/`HF_HUB_CACHE` for the cache, as the Hub's own clients do).
//! The API is async (the registry runs it on its tokio runtime); the CLI drives it with
//! [`block_on`].
//!
//! Downloads resume at file granularity: files are content-addressed blobs in the cache
//! (`models--org--name/blobs/<etag>`), so a download interrupted after some files finds
//! them again and fetches only the rest; a file cut off mid-way is fetched again whole
//! (hf-hub 1.0 writes `<blob>.incomplete` and does not resume inside a file).

use std::future::Future;
use std::path::{Path, PathBuf};

use hf_hub::repository::{CommitOperation, RepoTreeEntry};
use hf_hub::{HFClient, HFError, RepoTypeModel};

use crate::{Error, Result};

pub mod card;
mod upload;
pub use upload::{CommitReport, ProgressFn, Transfer, UploadProgress};

/// Files of a model repository that packing needs; everything else (other formats,
/// images, training logs) is not downloaded.
pub const MODEL_FILES: &[&str] = &[
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "adapter_config.json",
];

/// Where the Hub is and who we are to it.
#[derive(Debug, Clone, Default)]
pub struct HubConfig {
    /// Base address (`https://huggingface.co` when neither this nor `HF_ENDPOINT` is set).
    pub endpoint: Option<String>,
    /// Access token (`HF_TOKEN`, then the token file of `huggingface-cli login`).
    pub token: Option<String>,
    /// Download cache (`HF_HUB_CACHE`, then `HF_HOME/hub`, then `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Longest wait for the next bytes of a response ([`READ_TIMEOUT`] when unset).
    pub read_timeout: Option<std::time::Duration>,
}

impl HubConfig {
    /// The configuration the environment gives (`HF_ENDPOINT`, `HF_TOKEN`).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            endpoint: var("HF_ENDPOINT"),
            token: var("HF_TOKEN"),
            cache_dir: None,
            read_timeout: None,
        }
    }
}

/// A model reference as users write it: `org/model` or `org/model@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// `org/model`.
    pub repo: String,
    /// A branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
}

impl ModelRef {
    /// Parses `org/model[@rev]`; `None` when `s` is not of that shape (a local path, say).
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, Some(rev.to_string())),
            Some(_) => return None,
            None => (s, None),
        };
        if !tenpak_hooks::is_repo_id(repo)
            || revision
                .as_deref()
                .is_some_and(|r| !tenpak_hooks::is_revision(r))
        {
            return None;
        }
        Some(Self {
            repo: repo.to_string(),
            revision,
        })
    }

    /// The revision, `main` when none was given.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

/// A model's files on disk at one commit.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The snapshot directory (symlinks into the cache's blobs).
    pub dir: PathBuf,
    /// The full commit sha the files come from.
    pub commit: String,
    /// Files fetched (repository paths).
    pub files: Vec<String>,
}

/// One file to commit.
#[derive(Debug, Clone)]
pub enum Upload {
    /// A local file, streamed.
    File {
        /// Path in the repository.
        path_in_repo: String,
        /// Local file.
        source: PathBuf,
    },
    /// Small contents held in memory (a model card).
    Bytes {
        /// Path in the repository.
        path_in_repo: String,
        /// The contents.
        bytes: Vec<u8>,
    },
}

/// An HTTP client that could not be built.
fn configure_error(e: impl std::fmt::Display) -> Error {
    Error::Hub {
        repo: String::new(),
        op: "configure",
        status: None,
        message: e.to_string(),
    }
}

/// Longest wait to connect to the Hub (or an upload server it names).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Longest wait for the next bytes of a response: a stalled transfer fails (and is
/// retried as a transient error) instead of hanging.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Caps on what is downloaded of a repository, checked against the Hub's listing
/// ([`Hub::list_files_sized`]) before any byte is fetched: a hostile or simply huge
/// repository is refused, not half downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// All `*.safetensors` together.
    pub max_weights_bytes: u64,
    /// Any other file packing reads (config, tokenizer, card).
    pub max_side_file_bytes: u64,
}

impl Default for DownloadLimits {
    /// No caps (the CLI: the user chose the model).
    fn default() -> Self {
        Self {
            max_weights_bytes: u64::MAX,
            max_side_file_bytes: u64::MAX,
        }
    }
}

impl DownloadLimits {
    /// `Error::LimitExceeded` naming the file (or the weights) over its cap.
    pub fn check(&self, repo: &str, commit: &str, files: &[(String, u64)]) -> Result<()> {
        let over = |what: &'static str, file: &str, value: u64, limit: u64| Error::LimitExceeded {
            path: PathBuf::from(format!("{repo}@{}/{file}", &commit[..12.min(commit.len())])),
            what,
            value,
            limit,
        };
        let weights: u64 = files
            .iter()
            .filter(|(f, _)| f.ends_with(".safetensors"))
            .map(|(_, s)| *s)
            .fold(0u64, u64::saturating_add);
        if weights > self.max_weights_bytes {
            return Err(over(
                "weight bytes",
                "*.safetensors",
                weights,
                self.max_weights_bytes,
            ));
        }
        if let Some((f, s)) = files
            .iter()
            .find(|(f, s)| !f.ends_with(".safetensors") && *s > self.max_side_file_bytes)
        {
            return Err(over("side-file bytes", f, *s, self.max_side_file_bytes));
        }
        Ok(())
    }
}

/// A revision of a repository and who may read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The full commit sha.
    pub commit: String,
    /// Private: only its owner (and those they allow) can see it.
    pub private: bool,
    /// Gated: readers must accept terms first (`auto` or `manual` approval).
    pub gated: Option<String>,
}

impl Access {
    /// Private or gated: what is made from it must not be open to everyone.
    pub fn restricted(&self) -> bool {
        self.private || self.gated.is_some()
    }

    /// "private", "gated (manual)", or "public".
    pub fn describe(&self) -> String {
        match (&self.gated, self.private) {
            (_, true) => "private".into(),
            (Some(g), false) => format!("gated ({g} approval)"),
            (None, false) => "public".into(),
        }
    }
}

/// A client of one Hub endpoint.
#[derive(Clone)]
pub struct Hub {
    client: HFClient,
    /// For the requests hf-hub does not make (preupload probe, LFS batch and transfers).
    http: reqwest::Client,
    token: Option<String>,
}

impl Upload {
    fn into_operation(self) -> CommitOperation {
        match self {
            Upload::File {
                path_in_repo,
                source,
            } => CommitOperation::add_file(path_in_repo, source),
            Upload::Bytes {
                path_in_repo,
                bytes,
            } => CommitOperation::add_bytes(path_in_repo, bytes),
        }
    }
}

/// The token the Hub's own clients would use: `HF_TOKEN`, then the file named by
/// `HF_TOKEN_PATH`, then `$HF_HOME/token` (none when `HF_HUB_DISABLE_IMPLICIT_TOKEN`).
fn implicit_token() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if var("HF_HUB_DISABLE_IMPLICIT_TOKEN").is_some() {
        return None;
    }
    if let Some(t) = var("HF_TOKEN") {
        return Some(t);
    }
    let file = var("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_hub::hf_home().join("token"));
    std::fs::read_to_string(file)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.client.endpoint())
            .finish()
    }
}

pub(crate) fn split(repo: &str) -> Result<(&str, &str)> {
    repo.split_once('/').ok_or_else(|| Error::Hub {
        repo: repo.to_string(),
        op: "parse",
        status: None,
        message: "a repository id is owner/name".into(),
    })
}

/// HTTP statuses worth retrying: 429 (rate limited) and every 5xx.
pub fn transient_status(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Whether an error is worth retrying (rate limits, server errors, connection trouble).
pub fn is_transient(e: &Error) -> bool {
    match e {
        Error::Hub { status, .. } | Error::Http { status, .. } => {
            status.is_none_or(transient_status)
        }
        _ => false,
    }
}

pub(crate) fn hub_error(repo: &str, op: &'static str, e: HFError) -> Error {
    let status = match &e {
        HFError::Http { context } => Some(context.status.as_u16()),
        HFError::AuthRequired { .. } => Some(401),
        HFError::Forbidden { .. } => Some(403),
        HFError::RepoNotFound { .. }
        | HFError::RevisionNotFound { .. }
        | HFError::EntryNotFound { .. } => Some(404),
        HFError::Conflict { .. } => Some(409),
        HFError::RateLimited { .. } => Some(429),
        _ => None,
    };
    // Errors without a status that are about the request rather than the network.
    let status = status.or(match &e {
        HFError::InvalidParameter(_) | HFError::CacheNotEnabled => Some(400),
        _ => None,
    });
    Error::Hub {
        repo: repo.to_string(),
        op,
        status,
        message: e.to_string(),
    }
}

impl Hub {
    /// A client for `cfg`.
    pub fn new(cfg: &HubConfig) -> Result<Self> {
        let ua = format!("tenpak/{}; hf-hub/1.0", env!("CARGO_PKG_VERSION"));
        let read_timeout = cfg.read_timeout.unwrap_or(READ_TIMEOUT);
        // hf-hub's default client has no timeouts: a server that accepts and then stalls
        // would hold a download (and the registry's worker) forever.
        let hf_http = reqwest13::Client::builder()
            .user_agent(&ua)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            .build()
            .map_err(configure_error)?;
        let mut b = HFClient::builder().user_agent(ua).client(hf_http);
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint(e.trim_end_matches('/'));
        }
        if let Some(t) = &cfg.token {
            b = b.token(t);
        }
        if let Some(d) = &cfg.cache_dir {
            b = b.cache_dir(d);
        }
        let client = b.build().map_err(|e| hub_error("", "configure", e))?;
        let http = reqwest::Client::builder()
            .user_agent(format!("tenpak/{}", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            .build()
            .map_err(configure_error)?;
        Ok(Self {
            client,
            http,
            token: cfg.token.clone().or_else(implicit_token),
        })
    }

    /// The endpoint in use, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    /// The download cache in use.
    pub fn cache_dir(&self) -> &Path {
        self.client.cache_dir()
    }

    /// The full commit sha that `revision` (branch, tag or sha) of `repo` names now.
    pub async fn resolve(&self, repo: &str, revision: &str) -> Result<String> {
        Ok(self.access(repo, revision).await?.commit)
    }

    /// The commit `revision` of `repo` names now, and who may read the repository (one
    /// model-info call, as the Hub answers it: `private`, and `gated` false, `"auto"` or
    /// `"manual"`).
    pub async fn access(&self, repo: &str, revision: &str) -> Result<Access> {
        let (owner, name) = split(repo)?;
        let info = self
            .client
            .model(owner, name)
            .info()
            .revision(revision.to_string())
            .send()
            .await
            .map_err(|e| hub_error(repo, "model info", e))?;
        let commit = info.sha.ok_or_else(|| Error::Hub {
            repo: repo.to_string(),
            op: "model info",
            status: None,
            message: format!("the Hub gave no commit sha for revision {revision}"),
        })?;
        let gated = match info.gated {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        };
        Ok(Access {
            commit,
            private: info.private.unwrap_or(false),
            gated,
        })
    }

    /// Downloads the files packing needs ([`MODEL_FILES`]) of `repo` at `revision` into
    /// the cache, and returns the snapshot directory. The revision is resolved to a
    /// commit first, so every file comes from the same commit.
    pub async fn download_model(&self, repo: &str, revision: &str) -> Result<Snapshot> {
        let (owner, name) = split(repo)?;
        let commit = if is_commit(revision) {
            revision.to_ascii_lowercase()
        } else {
            self.resolve(repo, revision).await?
        };
        let r = self.client.model(owner, name);
        let files = self.list_files(repo, &commit).await?;
        let wanted: Vec<String> = files.into_iter().filter(|f| wanted(f)).collect();
        if !wanted.iter().any(|f| f.ends_with(".safetensors")) {
            return Err(Error::Hub {
                repo: repo.to_string(),
                op: "download",
                status: None,
                message: format!(
                    "no .safetensors weights at {commit} (files: {})",
                    if wanted.is_empty() {
                        "none that packing reads".to_string()
                    } else {
                        wanted.join(", ")
                    }
                ),
            });
        }
        let dir = r
            .snapshot_download()
            .revision(commit.clone())
            .allow_patterns(wanted.iter().map(|f| glob_escape(f)).collect())
            .send()
            .await
            .map_err(|e| hub_error(repo, "download", e))?;
        Ok(Snapshot {
            dir,
            commit,
            files: wanted,
        })
    }

    /// Downloads one file of `repo` at `revision` into the cache (through Xet when the
    /// Hub says the file is Xet-stored) and returns its path.
    pub async fn download_file(&self, repo: &str, revision: &str, path: &str) -> Result<PathBuf> {
        let (owner, name) = split(repo)?;
        self.client
            .model(owner, name)
            .download_file()
            .filename(path)
            .revision(revision.to_string())
            .send()
            .await
            .map_err(|e| hub_error(repo, "download", e))
    }

    /// The contents of a small file of `repo` at `revision` (a model card, an adapter
    /// config), or `None` when the repository has no such file.
    pub async fn read_small_file(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>> {
        match self.download_file(repo, revision, path).await {
            Ok(p) => Ok(Some(
                std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?,
            )),
            Err(Error::Hub {
                status: Some(404), ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every file path of `repo` at `revision`.
    pub async fn list_files(&self, repo: &str, revision: &str) -> Result<Vec<String>> {
        Ok(self
            .list_files_sized(repo, revision)
            .await?
            .into_iter()
            .map(|(f, _)| f)
            .collect())
    }

    /// Every file path of `repo` at `revision`, with its size as the Hub lists it.
    pub async fn list_files_sized(&self, repo: &str, revision: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .listing(repo, revision)
            .await?
            .into_iter()
            .map(|f| (f.path, f.size))
            .collect())
    }

    /// Every file of `repo` at `revision` as the Hub's tree lists it: path, size, git
    /// object id, and the sha256 of LFS/Xet-stored files.
    pub async fn listing(&self, repo: &str, revision: &str) -> Result<Vec<ListedFile>> {
        use futures_util::StreamExt;
        let (owner, name) = split(repo)?;
        let r = self.client.model(owner, name);
        let stream = r
            .list_tree()
            .revision(revision.to_string())
            .recursive(true)
            .send()
            .map_err(|e| hub_error(repo, "list files", e))?;
        futures_util::pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(entry) = stream.next().await {
            if let RepoTreeEntry::File {
                path,
                size,
                oid,
                lfs,
                ..
            } = entry.map_err(|e| hub_error(repo, "list files", e))?
            {
                out.push(ListedFile {
                    path,
                    size,
                    git_oid: oid,
                    sha256: lfs.and_then(|l| l.sha256),
                });
            }
        }
        Ok(out)
    }

    /// The head commit of `repo`'s `main` and its files, or `None` when the repository
    /// does not exist (yet).
    pub async fn head_listing(&self, repo: &str) -> Result<Option<(String, Vec<ListedFile>)>> {
        let head = match self.resolve(repo, "main").await {
            Ok(h) => h,
            Err(Error::Hub {
                status: Some(404), ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        // The tree of that exact commit: a push in between cannot mix two states.
        Ok(Some((head.clone(), self.listing(repo, &head).await?)))
    }

    /// Creates model repository `repo` (no error when it exists).
    pub async fn create_repo(&self, repo: &str, private: bool) -> Result<()> {
        self.client
            .create_repository()
            .repo_id(repo)
            .repo_type(RepoTypeModel)
            .private(private)
            .exist_ok(true)
            .send()
            .await
            .map_err(|e| hub_error(repo, "create repository", e))?;
        Ok(())
    }
}

/// The Hub cache's directory of model `repo` (`models--org--name`, as huggingface_hub and
/// hf-hub lay it out).
pub fn cache_dir_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// A file as the Hub's tree API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Repository-relative path.
    pub path: String,
    /// Size in bytes (of the content, also for LFS files).
    pub size: u64,
    /// Git object id (of the LFS pointer for LFS files).
    pub git_oid: String,
    /// sha256 of the content, for LFS/Xet-stored files.
    pub sha256: Option<String>,
}

/// Git's object id of a blob: `sha1("blob <len>\0" + bytes)`, hex.
pub fn git_blob_oid(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

/// [`git_blob_oid`] of a file, read in pieces (bounded memory).
pub fn git_blob_oid_of_file(path: &Path) -> Result<String> {
    use sha1::{Digest, Sha1};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let mut h = Sha1::new();
    h.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether `s` is a full 40-hex commit sha (the Hub's rule, kept in `tenpak-hooks`).
pub use tenpak_hooks::is_commit;

/// Whether a repository file is one packing needs: a [`MODEL_FILES`] pattern matches it
/// in the top directory (`*` does not cross `/`).
pub fn wanted(path: &str) -> bool {
    MODEL_FILES
        .iter()
        .any(|p| crate::glob::matches(p, path, Some(b'/')))
}

/// `path` as a globset pattern that matches only itself.
fn glob_escape(path: &str) -> String {
    path.chars()
        .map(|c| {
            if "*?[]{}".contains(c) {
                format!("[{c}]")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Runs `fut` to completion on a fresh single-threaded runtime (for the CLI).
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Hub {
            repo: String::new(),
            op: "start runtime",
            status: None,
            message: e.to_string(),
        })?;
    Ok(rt.block_on(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs() {
        let r = ModelRef::parse("org/model@v1.0").expect("ref");
        assert_eq!(r.repo, "org/model");
        assert_eq!(r.revision.as_deref(), Some("v1.0"));
        assert_eq!(
            ModelRef::parse("HuggingFaceTB/SmolLM2-135M")
                .expect("ref")
                .revision_or_main(),
            "main"
        );
        for bad in [
            "model",
            "org/",
            "/m",
            "./x",
            "../x",
            "a/b/c",
            "org/model@",
            "/tmp/x.gguf",
        ] {
            assert!(ModelRef::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn model_files_filter() {
        assert!(wanted("model.safetensors"));
        assert!(wanted("model-00001-of-00002.safetensors"));
        assert!(!wanted("sub/model.safetensors"));
        assert!(wanted("model.safetensors.index.json"));
        assert!(wanted("config.json"));
        assert!(!wanted("x/config.json"));
        assert!(!wanted("pytorch_model.bin"));
    }
}
