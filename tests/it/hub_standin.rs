//! A local stand-in for the Hugging Face Hub (huggingface.co), speaking the endpoints
//! the registry's Hub client (the `hf-hub` crate) uses, with the Hub's request and
//! response shapes:
//!
//! - `GET /api/models/{owner}/{name}[/revision/{rev}]`: model info (`id`, `sha`,
//!   `private`, `gated` as `false`/`"auto"`/`"manual"`, `siblings`);
//! - `GET /api/models/{owner}/{name}/tree/{rev}?recursive=true`: the file listing;
//! - `HEAD|GET /{owner}/{name}/resolve/{rev}/{path}`: files with `ETag`,
//!   `X-Repo-Commit`, `Content-Length` and Range;
//! - `POST /api/repos/create`: `{name, organization, type, private}` → `{url}`, 409 when
//!   it exists;
//! - `POST /api/models/{owner}/{name}/preupload/{rev}`: `{files: [{path, size, sample}]}`
//!   → `{files: [{path, uploadMode, shouldIgnore}]}`: in [`Mode::Regular`] every file is
//!   `regular` (inline in the commit); in the other modes `.tnpk`/`.safetensors` files
//!   and anything over 10 MiB are `lfs`, and the commit refuses them inline, as the Hub
//!   does;
//! - `POST /{owner}/{name}.git/info/lfs/objects/batch`: the LFS batch API; answers
//!   `transfer: "xet"` ([`Mode::Xet`]), or `basic` / `multipart` with upload actions
//!   (none for objects already stored);
//! - `GET /api/models/{owner}/{name}/xet-write-token/{rev}` (and `xet-read-token`):
//!   `{casUrl, accessToken, exp}` pointing at a real Xet CAS server (the tests run
//!   xet-client's `LocalServer`);
//! - LFS transfers: `PUT` of a whole object (basic) or of presigned parts, the multipart
//!   completion `POST` (`{oid, parts: [{partNumber, etag}]}`), and `verify`;
//! - `POST /api/models/{owner}/{name}/commit/{rev}`: the NDJSON commit (`header`, `file`
//!   with base64 content, `lfsFile`, `deletedFile` lines) → `{commitOid, commitUrl}`;
//!   a header with `parentCommit` other than the branch head is refused with 412, as the
//!   Hub does; committed files are then served by `resolve` (Xet-stored ones with
//!   `X-Xet-Hash`, once the test has told the stand-in that hash with
//!   [`Hub::register_xet`]), and repositories made by commits answer model info (`sha`:
//!   the head) and the tree (git blob ids for inline files, `lfs.oid` for LFS ones).
//!
//! Downloads of `*.safetensors` can be held at a gate, so a test can kill the registry
//! while a job is mid-download.

#![allow(dead_code)]

// (Each stand-in includes the server helper; the `it` binary holds both stand-ins.)
#[allow(clippy::duplicate_mod)]
#[path = "standin_server.rs"]
mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A committed file as the tree lists it: size, git blob id, sha256 of an LFS file.
type Listed = (u64, String, Option<String>);

/// One commit received.
#[derive(Debug, Clone)]
pub struct Commit {
    /// `owner/name`.
    pub repo: String,
    /// Branch committed to.
    pub revision: String,
    /// The header's summary.
    pub summary: String,
    /// Files added (path → bytes).
    pub files: BTreeMap<String, Vec<u8>>,
    /// `lfsFile` lines: path → (sha256 oid, size).
    pub lfs_files: BTreeMap<String, (String, u64)>,
    /// Lines of other kinds, verbatim.
    pub other_lines: Vec<Value>,
    /// The commit id the stand-in gave it.
    pub oid: String,
}

/// How the stand-in takes large files.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Everything inline in the commit.
    Regular,
    /// LFS batch answers `xet`; the write token points at this CAS server.
    Xet {
        /// The CAS server's address.
        cas_url: String,
    },
    /// LFS batch answers `basic`.
    LfsBasic,
    /// LFS batch answers `multipart` with parts of this size.
    LfsMultipart {
        /// Part size in bytes.
        part_size: u64,
    },
}

/// A model repository the stand-in serves.
#[derive(Debug, Clone)]
pub struct ModelRepo {
    /// `owner/name`.
    pub repo: String,
    /// Its head commit (`main`).
    pub sha: String,
    /// Local directory with its files.
    pub dir: PathBuf,
}

struct Inner {
    models: Vec<ModelRepo>,
    created: Vec<String>,
    commits: Vec<Commit>,
    mode: Mode,
    base_url: String,
    /// LFS objects received (oid → bytes).
    lfs: BTreeMap<String, Vec<u8>>,
    /// Multipart parts received ((oid, part) → bytes).
    parts: BTreeMap<(String, u32), Vec<u8>>,
    /// sha256 → Xet file hash, as registered by tests.
    xet: BTreeMap<String, String>,
    /// Bytes received by LFS PUTs.
    lfs_bytes_received: u64,
    /// Who may read a served repository: (private, gated as `auto`/`manual`); absent
    /// means public.
    access: BTreeMap<String, (bool, Option<String>)>,
    /// Repositories created with `private: true`.
    created_private: Vec<String>,
}

/// Shared state (also read by the tests).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    /// GETs of weight files received.
    pub weight_gets: Arc<AtomicUsize>,
    /// Commit requests received (including ones held at the commit gate).
    pub commit_requests: Arc<AtomicUsize>,
    /// While set, commits released from the gate are refused (503) instead of recorded:
    /// a client killed while its commit was held never gets it in.
    pub drop_held: Arc<std::sync::atomic::AtomicBool>,
    /// Commits refused that way.
    pub dropped: Arc<AtomicUsize>,
    commit_gate: Arc<tokio::sync::watch::Sender<bool>>,
    /// Closed: a commit is recorded, then its answer is held (a client killed meanwhile
    /// has its commit on the Hub without having heard so).
    answer_gate: Arc<tokio::sync::watch::Sender<bool>>,
    /// Commits recorded while the answer gate was closed.
    pub answers_held: Arc<AtomicUsize>,
    /// Requests whose token was not `Bearer <token>`.
    pub unauthorized: Arc<AtomicUsize>,
    /// Bytes per second each weight download is held to (0: as fast as it goes): the
    /// per-connection throughput a real Hub or CDN gives one client, for benchmarks of
    /// I/O-bound jobs.
    pub bandwidth: Arc<std::sync::atomic::AtomicU64>,
    token: String,
}

impl Hub {
    /// Commits received so far.
    pub fn commits(&self) -> Vec<Commit> {
        self.inner.lock().expect("lock").commits.clone()
    }

    /// Repositories created so far.
    pub fn created(&self) -> Vec<String> {
        self.inner.lock().expect("lock").created.clone()
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.inner.lock().expect("lock").mode.clone()
    }

    /// Tells the stand-in the Xet file hash of an object (the real Hub learns it from
    /// the CAS server).
    pub fn register_xet(&self, sha256: &str, xet_hash: &str) {
        self.inner
            .lock()
            .expect("lock")
            .xet
            .insert(sha256.into(), xet_hash.into());
    }

    /// Bytes received by LFS PUTs (basic and multipart).
    pub fn lfs_bytes_received(&self) -> u64 {
        self.inner.lock().expect("lock").lfs_bytes_received
    }

    /// Opens or closes the gate on commits (closed: commit requests wait).
    pub fn set_commit_gate(&self, open: bool) {
        self.commit_gate.send_replace(open);
    }

    /// A commit made by someone else (a person pushing to the repository): recorded at
    /// once, past every gate. Returns its id.
    pub fn push_commit(&self, repo: &str, path: &str, bytes: &[u8]) -> String {
        let parent = self.head_of(repo).unwrap_or_default();
        let oid = hex::encode(
            &Sha256::digest([parent.as_bytes(), path.as_bytes(), bytes].concat())[..20],
        );
        self.inner.lock().expect("lock").commits.push(Commit {
            repo: repo.into(),
            revision: "main".into(),
            summary: format!("a person edits {path}"),
            files: BTreeMap::from([(path.to_string(), bytes.to_vec())]),
            lfs_files: BTreeMap::new(),
            other_lines: vec![],
            oid: oid.clone(),
        });
        oid
    }

    /// Opens or closes the gate on commit answers (closed: commits are recorded, their
    /// answers wait).
    pub fn set_answer_gate(&self, open: bool) {
        self.answer_gate.send_replace(open);
    }

    /// The head commit of a repository made by commits (or created empty): the Hub's
    /// `sha` of `main`.
    pub fn head_of(&self, repo: &str) -> Option<String> {
        let inner = self.inner.lock().expect("lock");
        inner
            .commits
            .iter()
            .rev()
            .find(|c| c.repo == repo)
            .map(|c| c.oid.clone())
            .or_else(|| {
                inner.created.contains(&repo.to_string()).then(|| {
                    hex::encode(&Sha256::digest(format!("initial commit of {repo}"))[..20])
                })
            })
    }

    /// Files of a repository made by commits, as of commit `rev` (or `main`): path →
    /// (size, git blob id, sha256 of an LFS file).
    fn committed_files(&self, repo: &str, rev: &str) -> Option<BTreeMap<String, Listed>> {
        let head = self.head_of(repo)?;
        let inner = self.inner.lock().expect("lock");
        let commits: Vec<&Commit> = inner.commits.iter().filter(|c| c.repo == repo).collect();
        let upto = if rev == "main" || rev == head {
            commits.len()
        } else {
            commits.iter().position(|c| c.oid == rev)? + 1
        };
        let mut files = BTreeMap::new();
        for c in &commits[..upto] {
            for (p, b) in &c.files {
                files.insert(p.clone(), (b.len() as u64, git_blob_oid(b), None));
            }
            for (p, (oid, size)) in &c.lfs_files {
                files.insert(
                    p.clone(),
                    (*size, format!("{:0>40}", &oid[..8]), Some(oid.clone())),
                );
            }
        }
        Some(files)
    }

    /// Makes a served repository private and/or gated (`"auto"` or `"manual"`), as its
    /// model info will say.
    pub fn set_access(&self, repo: &str, private: bool, gated: Option<&str>) {
        self.inner
            .lock()
            .expect("lock")
            .access
            .insert(repo.into(), (private, gated.map(str::to_string)));
    }

    /// Repositories created private so far.
    pub fn created_private(&self) -> Vec<String> {
        self.inner.lock().expect("lock").created_private.clone()
    }

    /// Serves one more model repository.
    pub fn add_model(&self, m: ModelRepo) {
        self.inner.lock().expect("lock").models.push(m);
    }

    /// Opens or closes the gate on weight downloads.
    pub fn set_gate(&self, open: bool) {
        self.gate.send_replace(open);
    }

    fn model(&self, repo: &str, rev: &str) -> Option<ModelRepo> {
        self.inner
            .lock()
            .expect("lock")
            .models
            .iter()
            .find(|m| m.repo == repo && (rev == "main" || rev == m.sha))
            .cloned()
    }

    fn check_token(&self, h: &HeaderMap) -> bool {
        let ok = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", self.token));
        if !ok {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// A running stand-in.
pub struct Running {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Its state.
    pub hub: Hub,
    _thread: std::thread::JoinHandle<()>,
}

/// Git's blob id: `sha1("blob <len>\0" + bytes)`.
fn git_blob_oid(b: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex::encode(h.finalize())
}

fn files_of(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("model dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

/// sha256 of a file, computed once per path (weights can be hundreds of MB).
fn sha256_file(p: &Path) -> String {
    static CACHE: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());
    if let Some(s) = CACHE.lock().expect("lock").get(p) {
        return s.clone();
    }
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).expect("open");
    std::io::copy(&mut f, &mut h).expect("read");
    let s = hex::encode(h.finalize());
    CACHE
        .lock()
        .expect("lock")
        .insert(p.to_path_buf(), s.clone());
    s
}

fn not_found(code: &str, msg: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        [("x-error-code", code.to_string())],
        Json(json!({ "error": msg })),
    )
        .into_response()
}

async fn info(State(hub): State<Hub>, UrlPath((o, n)): UrlPath<(String, String)>) -> Response {
    info_rev(State(hub), UrlPath((o, n, "main".into()))).await
}

async fn info_rev(
    State(hub): State<Hub>,
    UrlPath((o, n, rev)): UrlPath<(String, String, String)>,
) -> Response {
    let repo = format!("{o}/{n}");
    let Some(m) = hub.model(&repo, &rev) else {
        // A repository the registry made (a companion): its head and files.
        if let (Some(head), Some(files)) = (hub.head_of(&repo), hub.committed_files(&repo, &rev)) {
            let private = hub.created_private().contains(&repo);
            return Json(json!({
                "_id": "6512aa01c2d3e4f5a6b7c8da", "id": repo, "modelId": repo, "author": o,
                "sha": if rev == "main" { head } else { rev }, "private": private,
                "disabled": false, "gated": false, "tags": [],
                "siblings": files.keys().map(|f| json!({ "rfilename": f })).collect::<Vec<_>>(),
            }))
            .into_response();
        }
        return not_found(
            "RepoNotFound",
            format!("Repository Not Found for url: {repo}"),
        );
    };
    let (private, gated) = hub
        .inner
        .lock()
        .expect("lock")
        .access
        .get(&repo)
        .cloned()
        .unwrap_or_default();
    Json(json!({
        "_id": "6512aa01c2d3e4f5a6b7c8d9",
        "id": m.repo,
        "modelId": m.repo,
        "author": o,
        "sha": m.sha,
        "lastModified": "2026-11-26T09:00:00.000Z",
        "private": private,
        "disabled": false,
        "gated": gated.map_or(json!(false), |g| json!(g)),
        "tags": ["safetensors", "llama"],
        "library_name": "transformers",
        "siblings": files_of(&m.dir).into_iter().map(|(f, _)| json!({ "rfilename": f })).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn tree(
    State(hub): State<Hub>,
    UrlPath((o, n, rev)): UrlPath<(String, String, String)>,
) -> Response {
    let repo = format!("{o}/{n}");
    let Some(m) = hub.model(&repo, &rev) else {
        if let Some(files) = hub.committed_files(&repo, &rev) {
            return Json(
                files
                    .into_iter()
                    .map(|(path, (size, oid, lfs))| {
                        let mut v =
                            json!({ "type": "file", "oid": oid, "size": size, "path": path });
                        if let Some(sha) = lfs {
                            v["lfs"] = json!({ "oid": sha, "size": size, "pointerSize": 134 });
                        }
                        v
                    })
                    .collect::<Vec<_>>(),
            )
            .into_response();
        }
        return not_found("RevisionNotFound", format!("Invalid rev id: {rev}"));
    };
    Json(
        files_of(&m.dir)
            .into_iter()
            .map(|(f, size)| {
                let mut v = json!({ "type": "file", "oid": format!("{:0>40}", size), "size": size, "path": f });
                if f.ends_with(".safetensors") {
                    let sha = sha256_file(&m.dir.join(&f));
                    v["lfs"] = json!({ "oid": sha, "size": size, "pointerSize": 134 });
                }
                v
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn resolve(
    State(hub): State<Hub>,
    UrlPath((o, n, rev, path)): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{o}/{n}");
    let Some(m) = hub.model(&repo, &rev) else {
        return resolve_committed(&hub, &repo, &rev, &path, &method, &headers);
    };
    let file = m.dir.join(&path);
    if path.contains("..") || !file.is_file() {
        return not_found("EntryNotFound", format!("{path} does not exist on {rev}"));
    }
    let weights = method == Method::GET && path.ends_with(".safetensors");
    if weights {
        hub.weight_gets.fetch_add(1, Ordering::Relaxed);
        let mut rx = hub.gate.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
    let etag = sha256_file(&file);
    let served = tenpak::serve::ServedFile::new(file, &etag).expect("served file");
    let mut h = HeaderMap::new();
    h.insert("x-repo-commit", HeaderValue::from_str(&m.sha).expect("sha"));
    let response = tenpak::serve::range_response_with(&served, &method, &headers, h);
    let bw = hub.bandwidth.load(Ordering::Relaxed);
    if !weights || bw == 0 {
        return response;
    }
    // Each block of the body waits out its share of the per-download bandwidth.
    use futures_util::StreamExt;
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().then(move |block| async move {
        if let Ok(b) = &block {
            tokio::time::sleep(std::time::Duration::from_secs_f64(
                b.len() as f64 / bw as f64,
            ))
            .await;
        }
        block
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// Serves a file of a repository the stand-in received commits for.
fn resolve_committed(
    hub: &Hub,
    repo: &str,
    rev: &str,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let inner = hub.inner.lock().expect("lock");
    let commits: Vec<&Commit> = inner.commits.iter().filter(|c| c.repo == repo).collect();
    let Some(last) = commits.iter().rev().find(|c| rev == "main" || c.oid == rev) else {
        return not_found("RevisionNotFound", format!("{repo}@{rev}"));
    };
    // The file as of that commit (latest commit touching it, up to there).
    let upto = commits.iter().position(|c| c.oid == last.oid).unwrap_or(0);
    let mut found: Option<(Option<Vec<u8>>, String, u64)> = None;
    for c in &commits[..=upto] {
        if let Some(b) = c.files.get(path) {
            found = Some((
                Some(b.clone()),
                hex::encode(Sha256::digest(b)),
                b.len() as u64,
            ));
        }
        if let Some((oid, size)) = c.lfs_files.get(path) {
            found = Some((inner.lfs.get(oid).cloned(), oid.clone(), *size));
        }
    }
    let Some((bytes, sha, size)) = found else {
        return not_found("EntryNotFound", format!("{path} does not exist on {rev}"));
    };
    let mut h = HeaderMap::new();
    h.insert(
        "x-repo-commit",
        HeaderValue::from_str(&last.oid).expect("oid"),
    );
    h.insert("x-linked-size", HeaderValue::from(size));
    h.insert(
        "x-linked-etag",
        HeaderValue::from_str(&format!("\"{sha}\"")).expect("etag"),
    );
    match bytes {
        Some(b) => {
            let rep = Mem {
                bytes: Bytes::from(b),
                etag: format!("\"{sha}\""),
            };
            tenpak::serve::range_response_with(&rep, method, headers, h)
        }
        None => {
            // Stored in Xet: the client fetches it from the CAS server.
            let Some(xet) = inner.xet.get(&sha) else {
                return not_found("EntryNotFound", format!("{path}: Xet hash not registered"));
            };
            h.insert("x-xet-hash", HeaderValue::from_str(xet).expect("hash"));
            h.insert(
                "etag",
                HeaderValue::from_str(&format!("\"{sha}\"")).expect("etag"),
            );
            h.insert("content-length", HeaderValue::from(size));
            (StatusCode::OK, h).into_response()
        }
    }
}

/// In-memory bytes served by ranges.
struct Mem {
    bytes: Bytes,
    etag: String,
}

impl tenpak::serve::Representation for Mem {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn etag(&self) -> &str {
        &self.etag
    }
    fn body(&self, start: u64, len: u64) -> axum::body::Body {
        axum::body::Body::from(self.bytes.slice(start as usize..(start + len) as usize))
    }
}

/// The Hub's answer to a write without a valid token (401) or to a repository that
/// does not exist (404); `None` when the write may proceed.
fn refuse_write(hub: &Hub, headers: &HeaderMap, repo: &str) -> Option<Response> {
    if !hub.check_token(headers) {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "Invalid credentials in Authorization header" })),
            )
                .into_response(),
        );
    }
    if !hub.created().iter().any(|r| r == repo) {
        return Some(not_found(
            "RepoNotFound",
            format!("Repository Not Found for url: {repo}"),
        ));
    }
    None
}

fn must_be_lfs(mode: &Mode, path: &str, size: u64) -> bool {
    *mode != Mode::Regular
        && (path.ends_with(".tnpk") || path.ends_with(".safetensors") || size > 10 << 20)
}

async fn xet_token(
    State(hub): State<Hub>,
    UrlPath((o, n, kind, _rev)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if kind != "xet-write-token" && kind != "xet-read-token" {
        return not_found("NotFound", kind);
    }
    let Mode::Xet { cas_url } = hub.mode() else {
        return not_found("XetNotEnabled", format!("{o}/{n} is not Xet-backed"));
    };
    if !hub.check_token(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "unauthorized" })),
        )
            .into_response();
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    Json(json!({ "casUrl": cas_url, "accessToken": "stand-in-cas-token", "exp": exp }))
        .into_response()
}

async fn lfs_batch(
    State(hub): State<Hub>,
    UrlPath((o, n_git)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !hub.check_token(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "message": "unauthorized" })),
        )
            .into_response();
    }
    let Some(n) = n_git.strip_suffix(".git") else {
        return not_found("RepoNotFound", n_git);
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": "bad json" })),
        )
            .into_response();
    };
    if req["operation"] != "upload" || req["hash_algo"] != "sha256" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": "upload with sha256 only" })),
        )
            .into_response();
    }
    let inner = hub.inner.lock().expect("lock");
    if !inner.created.contains(&format!("{o}/{n}")) {
        return not_found("RepoNotFound", format!("{o}/{n}"));
    }
    let base = inner.base_url.clone();
    let objects = req["objects"].as_array().cloned().unwrap_or_default();
    let transfers: Vec<&str> = req["transfers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let (transfer, objs): (&str, Vec<Value>) = match &inner.mode {
        Mode::Regular => return (StatusCode::BAD_REQUEST, Json(json!({ "message": "no LFS here" }))).into_response(),
        Mode::Xet { .. } => ("xet", objects.iter().map(|o| json!({ "oid": o["oid"], "size": o["size"] })).collect()),
        Mode::LfsBasic => ("basic", objects.iter().map(|o| {
            let oid = o["oid"].as_str().unwrap_or_default();
            if inner.lfs.contains_key(oid) {
                json!({ "oid": oid, "size": o["size"] })
            } else {
                json!({ "oid": oid, "size": o["size"], "authenticated": true, "actions": {
                    "upload": { "href": format!("{base}/lfs/upload/{oid}"), "header": { "x-amz-meta-oid": oid } },
                    "verify": { "href": format!("{base}/lfs/verify") } } })
            }
        }).collect()),
        Mode::LfsMultipart { part_size } => ("multipart", objects.iter().map(|o| {
            let oid = o["oid"].as_str().unwrap_or_default();
            let size = o["size"].as_u64().unwrap_or(0);
            if inner.lfs.contains_key(oid) {
                return json!({ "oid": oid, "size": size });
            }
            let mut header = serde_json::Map::new();
            header.insert("chunk_size".into(), json!(part_size.to_string()));
            for k in 1..=size.div_ceil(*part_size) {
                header.insert(format!("{k:05}"), json!(format!("{base}/lfs/part/{oid}/{k}")));
            }
            json!({ "oid": oid, "size": size, "authenticated": true, "actions": {
                "upload": { "href": format!("{base}/lfs/complete/{oid}"), "header": header },
                "verify": { "href": format!("{base}/lfs/verify") } } })
        }).collect()),
    };
    if !transfers.contains(&transfer) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "message": format!("client does not offer {transfer}") })),
        )
            .into_response();
    }
    (
        [("content-type", "application/vnd.git-lfs+json")],
        Json(json!({ "transfer": transfer, "objects": objs, "hash_algo": "sha256" })),
    )
        .into_response()
}

async fn lfs_put(State(hub): State<Hub>, UrlPath(oid): UrlPath<String>, body: Bytes) -> Response {
    if hex::encode(Sha256::digest(&body)) != oid {
        return (StatusCode::BAD_REQUEST, "sha256 mismatch").into_response();
    }
    let mut inner = hub.inner.lock().expect("lock");
    inner.lfs_bytes_received += body.len() as u64;
    inner.lfs.insert(oid, body.to_vec());
    StatusCode::OK.into_response()
}

async fn lfs_part(
    State(hub): State<Hub>,
    UrlPath((oid, k)): UrlPath<(String, u32)>,
    body: Bytes,
) -> Response {
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
    let mut inner = hub.inner.lock().expect("lock");
    inner.lfs_bytes_received += body.len() as u64;
    inner.parts.insert((oid, k), body.to_vec());
    ([("etag", etag)], StatusCode::OK).into_response()
}

async fn lfs_complete(
    State(hub): State<Hub>,
    UrlPath(oid): UrlPath<String>,
    Json(req): Json<Value>,
) -> Response {
    let mut inner = hub.inner.lock().expect("lock");
    let mut data = Vec::new();
    for (i, p) in req["parts"].as_array().into_iter().flatten().enumerate() {
        let k = p["partNumber"].as_u64().unwrap_or(0) as u32;
        if k as usize != i + 1 {
            return (StatusCode::BAD_REQUEST, "parts out of order").into_response();
        }
        let Some(b) = inner.parts.get(&(oid.clone(), k)) else {
            return (StatusCode::BAD_REQUEST, format!("part {k} missing")).into_response();
        };
        let etag = format!("\"{}\"", hex::encode(&Sha256::digest(b)[..16]));
        if p["etag"].as_str() != Some(etag.as_str()) {
            return (StatusCode::BAD_REQUEST, format!("part {k}: wrong etag")).into_response();
        }
        data.extend_from_slice(b);
    }
    if req["oid"].as_str() != Some(oid.as_str()) || hex::encode(Sha256::digest(&data)) != oid {
        return (
            StatusCode::BAD_REQUEST,
            "assembled object does not match its oid",
        )
            .into_response();
    }
    inner.parts.retain(|(o, _), _| *o != oid);
    inner.lfs.insert(oid, data);
    StatusCode::OK.into_response()
}

async fn lfs_verify(State(hub): State<Hub>, Json(req): Json<Value>) -> Response {
    let inner = hub.inner.lock().expect("lock");
    let oid = req["oid"].as_str().unwrap_or_default();
    match inner.lfs.get(oid) {
        Some(b) if b.len() as u64 == req["size"].as_u64().unwrap_or(u64::MAX) => {
            StatusCode::OK.into_response()
        }
        _ => (StatusCode::NOT_FOUND, "object not found").into_response(),
    }
}

async fn create_repo(
    State(hub): State<Hub>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !hub.check_token(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "Invalid credentials in Authorization header" })),
        )
            .into_response();
    }
    let name = body["name"].as_str().unwrap_or_default();
    let org = body["organization"].as_str().unwrap_or("me");
    if body["type"].as_str() != Some("model") || name.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "bad request" })),
        )
            .into_response();
    }
    let repo = format!("{org}/{name}");
    let mut inner = hub.inner.lock().expect("lock");
    if inner.created.contains(&repo) {
        return (StatusCode::CONFLICT, Json(json!({ "error": "You already created this model repo", "url": format!("https://huggingface.co/{repo}") }))).into_response();
    }
    inner.created.push(repo.clone());
    if body["private"].as_bool() == Some(true) {
        inner.created_private.push(repo.clone());
    }
    Json(json!({ "url": format!("https://huggingface.co/{repo}"), "name": repo, "id": "66aa00" }))
        .into_response()
}

async fn preupload(
    State(hub): State<Hub>,
    UrlPath((o, n, _rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let repo = format!("{o}/{n}");
    if let Some(refused) = refuse_write(&hub, &headers, &repo) {
        return refused;
    }
    let files: Vec<Value> = body["files"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let path = f["path"].as_str().unwrap_or_default();
            let lfs = must_be_lfs(&hub.mode(), path, f["size"].as_u64().unwrap_or(0));
            json!({ "path": path, "uploadMode": if lfs { "lfs" } else { "regular" }, "shouldIgnore": false })
        })
        .collect();
    Json(json!({ "files": files, "commitOid": null })).into_response()
}

async fn commit(
    State(hub): State<Hub>,
    UrlPath((o, n, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let repo = format!("{o}/{n}");
    if let Some(refused) = refuse_write(&hub, &headers, &repo) {
        return refused;
    }
    hub.commit_requests.fetch_add(1, Ordering::Relaxed);
    let mut rx = hub.commit_gate.subscribe();
    let _ = rx.wait_for(|open| *open).await;
    if hub.drop_held.load(Ordering::SeqCst) {
        hub.dropped.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "commit dropped" })),
        )
            .into_response();
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-ndjson") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "expected application/x-ndjson" })),
        )
            .into_response();
    }
    let mut c = Commit {
        repo: repo.clone(),
        revision: rev,
        summary: String::new(),
        files: BTreeMap::new(),
        lfs_files: BTreeMap::new(),
        other_lines: vec![],
        oid: String::new(),
    };
    let mode = hub.mode();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "bad ndjson line" })),
            )
                .into_response();
        };
        match v["key"].as_str() {
            Some("header") => {
                c.summary = v["value"]["summary"].as_str().unwrap_or_default().into();
                if let Some(parent) = v["value"]["parentCommit"].as_str() {
                    if hub.head_of(&repo).as_deref() != Some(parent) {
                        return (
                            StatusCode::PRECONDITION_FAILED,
                            Json(json!({ "error": "A commit has happened since. Please refresh and try again." })),
                        )
                            .into_response();
                    }
                }
            }
            Some("file") => {
                let path = v["value"]["path"].as_str().unwrap_or_default().to_string();
                if v["value"]["encoding"].as_str() != Some("base64") {
                    return (
                        StatusCode::BAD_REQUEST,
                        Json(json!({ "error": "file encoding must be base64" })),
                    )
                        .into_response();
                }
                let Ok(bytes) = base64::engine::general_purpose::STANDARD
                    .decode(v["value"]["content"].as_str().unwrap_or_default())
                else {
                    return (
                        StatusCode::BAD_REQUEST,
                        Json(json!({ "error": "bad base64" })),
                    )
                        .into_response();
                };
                if must_be_lfs(&mode, &path, bytes.len() as u64) {
                    return (StatusCode::BAD_REQUEST, Json(json!({ "error": format!(
                        "Your push was rejected because it contains binary files ({path}); use LFS/Xet") }))).into_response();
                }
                c.files.insert(path, bytes);
            }
            Some("lfsFile") => {
                let path = v["value"]["path"].as_str().unwrap_or_default().to_string();
                let oid = v["value"]["oid"].as_str().unwrap_or_default().to_string();
                let size = v["value"]["size"].as_u64().unwrap_or(0);
                let known = match &mode {
                    Mode::LfsBasic | Mode::LfsMultipart { .. } => hub
                        .inner
                        .lock()
                        .expect("lock")
                        .lfs
                        .get(&oid)
                        .is_some_and(|b| b.len() as u64 == size),
                    // Xet uploads land on the CAS server; the test checks them there.
                    Mode::Xet { .. } => true,
                    Mode::Regular => false,
                };
                if !known || v["value"]["algo"] != "sha256" {
                    return (StatusCode::BAD_REQUEST, Json(json!({ "error": format!("LFS object {oid} for {path} was never uploaded") }))).into_response();
                }
                c.lfs_files.insert(path, (oid, size));
            }
            _ => c.other_lines.push(v),
        }
    }
    // The commit id also covers the parent, as git's does (the same files committed
    // twice give two commits).
    let parent = hub.head_of(&repo).unwrap_or_default();
    let oid = hex::encode(&Sha256::digest([parent.as_bytes(), &body].concat())[..20]);
    c.oid = oid.clone();
    hub.inner.lock().expect("lock").commits.push(c);
    let mut answer = hub.answer_gate.subscribe();
    if !*answer.borrow() {
        hub.answers_held.fetch_add(1, Ordering::SeqCst);
    }
    let _ = answer.wait_for(|open| *open).await;
    Json(json!({
        "success": true,
        "commitOid": oid,
        "commitUrl": format!("https://huggingface.co/{repo}/commit/{oid}"),
        "commitMessage": "",
        "hookOutput": ""
    }))
    .into_response()
}

/// Starts the stand-in with `models`, accepting writes with `token`, every file inline.
pub fn start(models: Vec<ModelRepo>, token: &str, gate_open: bool) -> Running {
    start_with(models, token, gate_open, Mode::Regular)
}

/// Starts the stand-in in `mode`.
pub fn start_with(models: Vec<ModelRepo>, token: &str, gate_open: bool, mode: Mode) -> Running {
    let (gate, _) = tokio::sync::watch::channel(gate_open);
    let hub = Hub {
        inner: Arc::new(Mutex::new(Inner {
            models,
            created: vec![],
            commits: vec![],
            mode,
            base_url: String::new(),
            lfs: BTreeMap::new(),
            parts: BTreeMap::new(),
            xet: BTreeMap::new(),
            lfs_bytes_received: 0,
            access: BTreeMap::new(),
            created_private: vec![],
        })),
        gate: Arc::new(gate),
        weight_gets: Arc::new(AtomicUsize::new(0)),
        bandwidth: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        commit_requests: Arc::new(AtomicUsize::new(0)),
        drop_held: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        dropped: Arc::new(AtomicUsize::new(0)),
        commit_gate: Arc::new(tokio::sync::watch::channel(true).0),
        answer_gate: Arc::new(tokio::sync::watch::channel(true).0),
        answers_held: Arc::new(AtomicUsize::new(0)),
        unauthorized: Arc::new(AtomicUsize::new(0)),
        token: token.to_string(),
    };
    let app = Router::new()
        .route("/api/models/{o}/{n}", get(info))
        .route("/api/models/{o}/{n}/revision/{rev}", get(info_rev))
        .route("/api/models/{o}/{n}/tree/{rev}", get(tree))
        .route("/api/models/{o}/{n}/preupload/{rev}", post(preupload))
        // Inline commits of whole artifacts: no body limit here (the real Hub takes
        // large files through Xet/LFS instead; see the registry's docs).
        .route(
            "/api/models/{o}/{n}/commit/{rev}",
            post(commit).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/repos/create", post(create_repo))
        .route("/api/models/{o}/{n}/{kind}/{rev}", get(xet_token))
        .route("/{o}/{n}/info/lfs/objects/batch", post(lfs_batch))
        .route(
            "/lfs/upload/{oid}",
            axum::routing::put(lfs_put).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/lfs/part/{oid}/{k}",
            axum::routing::put(lfs_part).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/lfs/complete/{oid}", post(lfs_complete))
        .route("/lfs/verify", post(lfs_verify))
        .route("/{o}/{n}/resolve/{rev}/{*path}", get(resolve))
        .with_state(hub.clone());
    let (addr, thread) = server::serve(app);
    hub.inner.lock().expect("lock").base_url = format!("http://{addr}");
    Running {
        url: format!("http://{addr}"),
        hub,
        _thread: thread,
    }
}
