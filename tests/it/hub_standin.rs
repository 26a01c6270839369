//! A local stand-in for the Hugging Face Hub (huggingface.co), speaking the endpoints
//! the registry's Hub client (the `hf-hub` crate) uses, with the Hub's request and
//! response shapes:
//!
//! - `GET /api/models/{owner}/{name}[/revision/{rev}]`: model info (`id`, `sha`,
//!   `siblings`);
//! - `GET /api/models/{owner}/{name}/tree/{rev}?recursive=true`: the file listing;
//! - `HEAD|GET /{owner}/{name}/resolve/{rev}/{path}`: files with `ETag`,
//!   `X-Repo-Commit`, `Content-Length` and Range;
//! - `POST /api/repos/create`: `{name, organization, type, private}` → `{url}`, 409 when
//!   it exists;
//! - `POST /api/models/{owner}/{name}/preupload/{rev}`: `{files: [{path, size, sample}]}`
//!   → `{files: [{path, uploadMode, shouldIgnore}]}` (this stand-in answers `regular`:
//!   files travel inline in the commit);
//! - `POST /api/models/{owner}/{name}/commit/{rev}`: the NDJSON commit (`header`, `file`
//!   with base64 content, `lfsFile`, `deletedFile` lines) → `{commitOid, commitUrl}`.
//!
//! Downloads of `*.safetensors` can be held at a gate, so a test can kill the registry
//! while a job is mid-download.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    /// Lines of kinds other than `header`/`file` (e.g. `lfsFile`), verbatim.
    pub other_lines: Vec<Value>,
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

#[derive(Default)]
struct Inner {
    models: Vec<ModelRepo>,
    created: Vec<String>,
    commits: Vec<Commit>,
}

/// Shared state (also read by the tests).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    /// GETs of weight files received.
    pub weight_gets: Arc<AtomicUsize>,
    /// Requests whose token was not `Bearer <token>`.
    pub unauthorized: Arc<AtomicUsize>,
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
        return not_found(
            "RepoNotFound",
            format!("Repository Not Found for url: {repo}"),
        );
    };
    Json(json!({
        "_id": "6512aa01c2d3e4f5a6b7c8d9",
        "id": m.repo,
        "modelId": m.repo,
        "author": o,
        "sha": m.sha,
        "lastModified": "2026-11-26T09:00:00.000Z",
        "private": false,
        "disabled": false,
        "gated": false,
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
        return not_found("RevisionNotFound", format!("{repo}@{rev}"));
    };
    let file = m.dir.join(&path);
    if path.contains("..") || !file.is_file() {
        return not_found("EntryNotFound", format!("{path} does not exist on {rev}"));
    }
    if method == Method::GET && path.ends_with(".safetensors") {
        hub.weight_gets.fetch_add(1, Ordering::Relaxed);
        let mut rx = hub.gate.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
    let etag = sha256_file(&file);
    let served = tenpak::serve::ServedFile::new(file, &etag).expect("served file");
    let mut h = HeaderMap::new();
    h.insert("x-repo-commit", HeaderValue::from_str(&m.sha).expect("sha"));
    tenpak::serve::range_response_with(&served, &method, &headers, h)
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
    Json(json!({ "url": format!("https://huggingface.co/{repo}"), "name": repo, "id": "66aa00" }))
        .into_response()
}

async fn preupload(
    State(hub): State<Hub>,
    UrlPath((o, n, _rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !hub.check_token(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "unauthorized" })),
        )
            .into_response();
    }
    let repo = format!("{o}/{n}");
    if !hub.created().contains(&repo) {
        return not_found(
            "RepoNotFound",
            format!("Repository Not Found for url: {repo}"),
        );
    }
    let files: Vec<Value> = body["files"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|f| json!({ "path": f["path"], "uploadMode": "regular", "shouldIgnore": false }))
        .collect();
    Json(json!({ "files": files, "commitOid": null })).into_response()
}

async fn commit(
    State(hub): State<Hub>,
    UrlPath((o, n, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !hub.check_token(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "unauthorized" })),
        )
            .into_response();
    }
    let repo = format!("{o}/{n}");
    if !hub.created().contains(&repo) {
        return not_found(
            "RepoNotFound",
            format!("Repository Not Found for url: {repo}"),
        );
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
        other_lines: vec![],
    };
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "bad ndjson line" })),
            )
                .into_response();
        };
        match v["key"].as_str() {
            Some("header") => c.summary = v["value"]["summary"].as_str().unwrap_or_default().into(),
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
                c.files.insert(path, bytes);
            }
            _ => c.other_lines.push(v),
        }
    }
    let oid = hex::encode(&Sha256::digest(&body)[..20]);
    hub.inner.lock().expect("lock").commits.push(c);
    Json(json!({
        "success": true,
        "commitOid": oid,
        "commitUrl": format!("https://huggingface.co/{repo}/commit/{oid}"),
        "commitMessage": "",
        "hookOutput": ""
    }))
    .into_response()
}

/// Starts the stand-in with `models`, accepting writes with `token`.
pub fn start(models: Vec<ModelRepo>, token: &str, gate_open: bool) -> Running {
    let (gate, _) = tokio::sync::watch::channel(gate_open);
    let hub = Hub {
        inner: Arc::new(Mutex::new(Inner {
            models,
            ..Inner::default()
        })),
        gate: Arc::new(gate),
        weight_gets: Arc::new(AtomicUsize::new(0)),
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
        .route("/{o}/{n}/resolve/{rev}/{*path}", get(resolve))
        .with_state(hub.clone());
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send");
            axum::serve(l, app).await.expect("serve");
        });
    });
    let addr = rx.recv().expect("stand-in address");
    Running {
        url: format!("http://{addr}"),
        hub,
        _thread: thread,
    }
}
