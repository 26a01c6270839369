//! Commits the way the Hub accepts them, for files of any size.
//!
//! 1. `POST /api/models/{repo}/preupload/{rev}` classifies each file: `regular` (sent
//!    inline, base64, in the commit) or `lfs` (large or binary: must be uploaded first).
//! 2. For `lfs` files, the LFS batch call (`POST /{repo}.git/info/lfs/objects/batch`,
//!    offering `basic`, `multipart` and `xet`) says which transfer the server takes:
//!    - `xet` (what huggingface.co answers): the `hf-hub` crate does the rest —
//!      `xet-write-token`, chunked upload to the CAS server (which deduplicates chunks it
//!      already holds, so a retried or repeated upload sends only what is new), then the
//!      commit with `lfsFile` lines;
//!    - `basic` / `multipart` (Hub-compatible servers without Xet; hf-hub 1.0 has no such
//!      path, so it is here): objects the server already has come back without
//!      `actions` and are skipped; others are PUT whole (`basic`) or in the presigned
//!      parts listed in the action's header (`multipart`, then the completion POST with
//!      each part's ETag), then `verify` when offered; the commit is this module's own
//!      NDJSON with `lfsFile` lines.
//!
//! Every request is retried on transient failures (connection errors, 429, 5xx) with
//! exponential back-off; progress (bytes processed, bytes actually sent) goes to a
//! callback.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{hub_error, split, Hub, Upload};
use crate::{Error, Result};

/// How the file contents travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transfer {
    /// All files inline in the commit.
    Inline,
    /// Large files through Xet storage.
    Xet,
    /// Large files by LFS `basic` (one PUT each).
    LfsBasic,
    /// Large files by LFS `multipart` (presigned parts + completion).
    LfsMultipart,
}

/// Progress of an upload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadProgress {
    /// Bytes of the files processed so far.
    pub bytes_done: u64,
    /// Bytes of all files.
    pub bytes_total: u64,
    /// Bytes sent over the network for file contents (after deduplication).
    pub bytes_sent: u64,
}

/// What a commit did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitReport {
    /// The new commit's sha, when the server reports it.
    pub commit: Option<String>,
    /// How the large files travelled.
    pub transfer: Transfer,
    /// Total bytes of the committed files.
    pub bytes_total: u64,
    /// Bytes of file contents sent (Xet: after chunk deduplication; LFS: objects the
    /// server did not have; inline: everything).
    pub bytes_sent: u64,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(UploadProgress) + Send + Sync>;

struct Prepared {
    path_in_repo: String,
    size: u64,
    sha256: String,
    sample: Vec<u8>,
    upload: Upload,
}

const RETRIES: u32 = 5;

/// A failed request: its status (when one came back) and message.
type Failure = (Option<u16>, String);

/// Sends the request `build` makes, again (a fresh request each time) while the failure
/// is transient (connection error, 429, 5xx) and attempts remain, with exponential
/// back-off from 250 ms; returns the first successful response.
async fn send(
    what: &str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> std::result::Result<reqwest::Response, Failure> {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        let (transient, failure) = match build().send().await {
            Ok(resp) if resp.status().is_success() => return Ok(resp),
            Ok(resp) => {
                let s = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                (
                    super::transient_status(s),
                    (Some(s), format!("{what}: HTTP {s}: {body}")),
                )
            }
            Err(e) => (true, (None, format!("{what}: {e}"))),
        };
        if !transient || attempt >= RETRIES {
            return Err(failure);
        }
        eprintln!(
            "{}; retrying in {delay:?} (attempt {attempt}/{RETRIES})",
            failure.1
        );
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

fn prepare(u: Upload) -> Result<Prepared> {
    use std::io::Read;
    let (path_in_repo, size, sha, sample) = match &u {
        Upload::Bytes {
            path_in_repo,
            bytes,
        } => (
            path_in_repo.clone(),
            bytes.len() as u64,
            hex::encode(Sha256::digest(bytes)),
            bytes[..bytes.len().min(512)].to_vec(),
        ),
        Upload::File {
            path_in_repo,
            source,
        } => {
            let mut f = std::fs::File::open(source).map_err(|e| Error::io("open", source, e))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut sample = Vec::new();
            let mut size = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(|e| Error::io("read", source, e))?;
                if n == 0 {
                    break;
                }
                if sample.len() < 512 {
                    let take = (512 - sample.len()).min(n);
                    sample.extend_from_slice(&buf[..take]);
                }
                h.update(&buf[..n]);
                size += n as u64;
            }
            (
                path_in_repo.clone(),
                size,
                hex::encode(h.finalize()),
                sample,
            )
        }
    };
    Ok(Prepared {
        path_in_repo,
        size,
        sha256: sha,
        sample,
        upload: u,
    })
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    transfer: Option<String>,
    #[serde(default)]
    objects: Vec<BatchObject>,
}

#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    actions: Option<BTreeMap<String, Action>>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize, Clone)]
struct Action {
    href: String,
    #[serde(default)]
    header: BTreeMap<String, String>,
}

/// Whether `url` has the scheme, host and port of `base`.
fn same_origin(url: &str, base: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(base)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

impl Hub {
    fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// [`Hub::auth`] for a URL the server supplied (LFS `verify`, multipart completion):
    /// the token goes only to the Hub's own origin, never to another host a response
    /// names (a compromised or hostile endpoint would otherwise collect it).
    fn auth_for(&self, url: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if same_origin(url, self.endpoint()) {
            self.auth(req)
        } else {
            req
        }
    }

    /// Commits `files` to `repo` on `main` in one commit, each file by the path the
    /// server asks for (see the module docs); reports progress to `progress`.
    pub async fn commit_files(
        &self,
        repo: &str,
        files: Vec<Upload>,
        message: &str,
        progress: Option<ProgressFn>,
    ) -> Result<CommitReport> {
        self.commit_files_on(repo, files, message, None, progress)
            .await
    }

    /// [`Hub::commit_files`] on top of `parent` only: the Hub refuses the commit (412)
    /// when `main` has moved past `parent` since the caller looked (the header line's
    /// `parentCommit`, as huggingface_hub sends it), so two writers racing cannot
    /// silently overwrite each other.
    pub async fn commit_files_on(
        &self,
        repo: &str,
        files: Vec<Upload>,
        message: &str,
        parent: Option<&str>,
        progress: Option<ProgressFn>,
    ) -> Result<CommitReport> {
        split(repo)?;
        let fail = |op: &'static str, (status, message): (Option<u16>, String)| Error::Hub {
            repo: repo.to_string(),
            op,
            status,
            message,
        };
        let prepared = tokio::task::spawn_blocking(move || {
            files.into_iter().map(prepare).collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| fail("prepare", (None, e.to_string())))??;
        let total: u64 = prepared.iter().map(|p| p.size).sum();
        let report = |p: UploadProgress| {
            if let Some(f) = &progress {
                f(p)
            }
        };
        report(UploadProgress {
            bytes_total: total,
            ..Default::default()
        });

        // 1. Which files must go through LFS/Xet.
        let url = format!("{}/api/models/{repo}/preupload/main", self.endpoint());
        let body = json!({ "files": prepared.iter().map(|p| json!({
            "path": p.path_in_repo, "size": p.size,
            "sample": base64::engine::general_purpose::STANDARD.encode(&p.sample),
        })).collect::<Vec<_>>() });
        let resp = send("preupload", || {
            self.auth(self.http().post(&url).json(&body))
        })
        .await
        .map_err(|e| fail("preupload", e))?;
        let modes: Value = resp
            .json()
            .await
            .map_err(|e| fail("preupload", (None, e.to_string())))?;
        let mut lfs_paths = std::collections::BTreeSet::new();
        for f in modes["files"].as_array().into_iter().flatten() {
            if f["uploadMode"] == "lfs" {
                if let Some(p) = f["path"].as_str() {
                    lfs_paths.insert(p.to_string());
                }
            }
        }
        let lfs: Vec<&Prepared> = prepared
            .iter()
            .filter(|p| p.size > 0 && lfs_paths.contains(&p.path_in_repo))
            .collect();
        if lfs.is_empty() {
            let mut r = self
                .commit_hf_hub(repo, prepared, message, parent, total, progress.clone())
                .await?;
            report(UploadProgress {
                bytes_done: total,
                bytes_total: total,
                bytes_sent: total,
            });
            r.transfer = Transfer::Inline;
            r.bytes_sent = total;
            return Ok(r);
        }

        // 2. Which transfer the server takes.
        let url = format!("{}/{repo}.git/info/lfs/objects/batch", self.endpoint());
        let body = json!({
            "operation": "upload",
            "transfers": ["basic", "multipart", "xet"],
            "objects": lfs.iter().map(|p| json!({ "oid": p.sha256, "size": p.size })).collect::<Vec<_>>(),
            "hash_algo": "sha256",
            "ref": { "name": "refs/heads/main" },
        });
        let resp = send("LFS batch", || {
            self.auth(self.http().post(&url).json(&body))
                .header("accept", "application/vnd.git-lfs+json")
                .header("content-type", "application/vnd.git-lfs+json")
        })
        .await
        .map_err(|e| fail("LFS batch", e))?;
        let batch: BatchAnswer = resp
            .json()
            .await
            .map_err(|e| fail("LFS batch", (None, e.to_string())))?;
        for o in &batch.objects {
            if let Some(e) = &o.error {
                return Err(fail("LFS batch", (None, format!("object {}: {e}", o.oid))));
            }
        }
        match batch.transfer.as_deref() {
            Some("xet") => {
                self.commit_hf_hub(repo, prepared, message, parent, total, progress)
                    .await
            }
            // No `transfer` in the answer means `basic` (the LFS default).
            Some("basic") | Some("multipart") | None => {
                self.commit_lfs(
                    repo, prepared, &lfs_paths, batch, message, parent, total, progress,
                )
                .await
            }
            Some(other) => Err(fail(
                "LFS batch",
                (
                    None,
                    format!(
                        "the server chose transfer {other:?}, which this client does not speak"
                    ),
                ),
            )),
        }
    }

    /// The commit through hf-hub: files the server classifies `regular` go inline,
    /// `lfs` ones through Xet; progress (bytes sent after deduplication) is forwarded.
    async fn commit_hf_hub(
        &self,
        repo: &str,
        prepared: Vec<Prepared>,
        message: &str,
        parent: Option<&str>,
        total: u64,
        progress: Option<ProgressFn>,
    ) -> Result<CommitReport> {
        use hf_hub::progress::{ProgressEvent, ProgressHandler, UploadEvent};
        struct Handler {
            last: Mutex<UploadProgress>,
            total: u64,
            f: Option<ProgressFn>,
        }
        impl ProgressHandler for Handler {
            fn on_progress(&self, event: &ProgressEvent) {
                if let ProgressEvent::Upload(UploadEvent::Progress {
                    bytes_completed,
                    transfer_bytes_completed,
                    ..
                }) = event
                {
                    let p = UploadProgress {
                        bytes_done: *bytes_completed,
                        bytes_total: self.total,
                        bytes_sent: *transfer_bytes_completed,
                    };
                    *self.last.lock().unwrap_or_else(|e| e.into_inner()) = p;
                    if let Some(f) = &self.f {
                        f(p);
                    }
                }
            }
        }
        let handler = Arc::new(Handler {
            last: Mutex::new(UploadProgress::default()),
            total,
            f: progress,
        });
        let (owner, name) = split(repo)?;
        let ops = prepared
            .into_iter()
            .map(|p| p.upload.into_operation())
            .collect();
        let info = self
            .client
            .model(owner, name)
            .create_commit()
            .operations(ops)
            .commit_message(message)
            .maybe_parent_commit(parent.map(str::to_string))
            .progress(hf_hub::progress::Progress::from(
                handler.clone() as Arc<dyn ProgressHandler>
            ))
            .send()
            .await
            .map_err(|e| hub_error(repo, "commit", e))?;
        let last = *handler.last.lock().unwrap_or_else(|e| e.into_inner());
        Ok(CommitReport {
            commit: info.commit_oid,
            transfer: Transfer::Xet,
            bytes_total: total,
            bytes_sent: last.bytes_sent,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit_lfs(
        &self,
        repo: &str,
        prepared: Vec<Prepared>,
        lfs_paths: &std::collections::BTreeSet<String>,
        batch: BatchAnswer,
        message: &str,
        parent: Option<&str>,
        total: u64,
        progress: Option<ProgressFn>,
    ) -> Result<CommitReport> {
        let fail = |op: &'static str, (status, message): (Option<u16>, String)| Error::Hub {
            repo: repo.to_string(),
            op,
            status,
            message,
        };
        let transfer = match batch.transfer.as_deref() {
            Some("multipart") => Transfer::LfsMultipart,
            _ => Transfer::LfsBasic,
        };
        let by_oid: BTreeMap<&str, &BatchObject> =
            batch.objects.iter().map(|o| (o.oid.as_str(), o)).collect();
        let mut done = 0u64;
        let mut sent = 0u64;
        let tell = |done: u64, sent: u64| {
            if let Some(f) = &progress {
                f(UploadProgress {
                    bytes_done: done,
                    bytes_total: total,
                    bytes_sent: sent,
                })
            }
        };
        for p in prepared
            .iter()
            .filter(|p| p.size > 0 && lfs_paths.contains(&p.path_in_repo))
        {
            let actions = by_oid
                .get(p.sha256.as_str())
                .and_then(|o| o.actions.clone());
            let Some(actions) = actions.filter(|a| a.contains_key("upload")) else {
                // The server has this object already.
                done += p.size;
                tell(done, sent);
                continue;
            };
            let upload = &actions["upload"];
            let source = match &p.upload {
                Upload::File { source, .. } => Source::File(source.clone()),
                Upload::Bytes { bytes, .. } => Source::Bytes(bytes::Bytes::from(bytes.clone())),
            };
            let chunk_size = upload
                .header
                .get("chunk_size")
                .and_then(|v| v.parse::<u64>().ok());
            match chunk_size {
                Some(cs) if cs > 0 => {
                    // Multipart: numbered part URLs in the header, then the completion.
                    let mut parts: Vec<(u32, &String)> = upload
                        .header
                        .iter()
                        .filter_map(|(k, v)| k.parse::<u32>().ok().map(|n| (n, v)))
                        .collect();
                    parts.sort();
                    if (parts.len() as u64) != p.size.div_ceil(cs) {
                        return Err(fail(
                            "LFS multipart",
                            (
                                None,
                                format!(
                                    "{} part URLs for {} bytes in parts of {cs}",
                                    parts.len(),
                                    p.size
                                ),
                            ),
                        ));
                    }
                    let mut etags = Vec::new();
                    for (n, url) in parts {
                        let start = (n as u64 - 1) * cs;
                        let len = cs.min(p.size - start);
                        let resp = send("LFS part upload", || {
                            self.http()
                                .put(url)
                                .header("content-length", len)
                                .body(source.body(start, len))
                        })
                        .await
                        .map_err(|e| fail("LFS part upload", e))?;
                        let etag = resp
                            .headers()
                            .get("etag")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        etags.push(json!({ "partNumber": n, "etag": etag }));
                        done += len;
                        sent += len;
                        tell(done, sent);
                    }
                    let body = json!({ "oid": p.sha256, "parts": etags });
                    send("LFS multipart completion", || {
                        self.auth_for(&upload.href, self.http().post(&upload.href).json(&body))
                            .header("content-type", "application/vnd.git-lfs+json")
                    })
                    .await
                    .map_err(|e| fail("LFS multipart completion", e))?;
                }
                _ => {
                    send("LFS upload", || {
                        let mut r = self
                            .http()
                            .put(&upload.href)
                            .header("content-length", p.size)
                            .body(source.body(0, p.size));
                        for (k, v) in &upload.header {
                            r = r.header(k, v);
                        }
                        r
                    })
                    .await
                    .map_err(|e| fail("LFS upload", e))?;
                    done += p.size;
                    sent += p.size;
                    tell(done, sent);
                }
            }
            if let Some(verify) = actions.get("verify") {
                let body = json!({ "oid": p.sha256, "size": p.size });
                send("LFS verify", || {
                    let mut r =
                        self.auth_for(&verify.href, self.http().post(&verify.href).json(&body));
                    for (k, v) in &verify.header {
                        r = r.header(k, v);
                    }
                    r
                })
                .await
                .map_err(|e| fail("LFS verify", e))?;
            }
        }

        // The commit: lfsFile lines for uploaded objects, the rest inline.
        let mut header = json!({ "summary": message, "description": "" });
        if let Some(p) = parent {
            header["parentCommit"] = json!(p);
        }
        let mut lines = vec![json!({ "key": "header", "value": header })];
        for p in &prepared {
            if p.size > 0 && lfs_paths.contains(&p.path_in_repo) {
                lines.push(json!({ "key": "lfsFile", "value": {
                    "path": p.path_in_repo, "algo": "sha256", "oid": p.sha256, "size": p.size } }));
            } else {
                let content = match &p.upload {
                    Upload::Bytes { bytes, .. } => bytes.clone(),
                    Upload::File { source, .. } => {
                        std::fs::read(source).map_err(|e| Error::io("read", source, e))?
                    }
                };
                sent += p.size;
                lines.push(json!({ "key": "file", "value": {
                    "content": base64::engine::general_purpose::STANDARD.encode(content),
                    "path": p.path_in_repo, "encoding": "base64" } }));
            }
        }
        let mut body = Vec::new();
        for l in &lines {
            body.extend_from_slice(l.to_string().as_bytes());
            body.push(b'\n');
        }
        let url = format!("{}/api/models/{repo}/commit/main", self.endpoint());
        let resp = send("commit", || {
            self.auth(self.http().post(&url).body(body.clone()))
                .header("content-type", "application/x-ndjson")
        })
        .await
        .map_err(|e| fail("commit", e))?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| fail("commit", (None, e.to_string())))?;
        tell(total, sent);
        Ok(CommitReport {
            commit: v["commitOid"].as_str().map(str::to_string),
            transfer,
            bytes_total: total,
            bytes_sent: sent,
        })
    }
}

enum Source {
    File(PathBuf),
    Bytes(bytes::Bytes),
}

impl Source {
    /// A request body streaming bytes `start..start+len` (a fresh one per attempt).
    fn body(&self, start: u64, len: u64) -> reqwest::Body {
        match self {
            Source::Bytes(b) => {
                reqwest::Body::from(b.slice(start as usize..(start + len) as usize))
            }
            Source::File(p) => {
                use futures_util::TryStreamExt;
                let p = p.clone();
                let stream = futures_util::stream::once(async move {
                    use tokio::io::{AsyncReadExt, AsyncSeekExt};
                    let mut f = tokio::fs::File::open(&p).await?;
                    f.seek(std::io::SeekFrom::Start(start)).await?;
                    Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(
                        f.take(len),
                        1 << 20,
                    ))
                })
                .try_flatten();
                reqwest::Body::wrap_stream(stream)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn the_token_goes_only_to_the_hub_itself() {
        let hub = "https://huggingface.co";
        assert!(same_origin(
            "https://huggingface.co/api/complete_multipart?x=1",
            hub
        ));
        assert!(same_origin("https://huggingface.co:443/x", hub));
        for other in [
            "https://evil.example/complete",
            "http://huggingface.co/x",
            "https://huggingface.co.evil.example/x",
            "https://huggingface.co:8443/x",
            "not a url",
        ] {
            assert!(!same_origin(other, hub), "{other}");
        }
        assert!(same_origin(
            "http://127.0.0.1:4000/lfs/verify",
            "http://127.0.0.1:4000"
        ));
    }
}
