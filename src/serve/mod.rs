//! Serving files by HTTP ranges: `tenpak serve-file` uses it, and so will the registry.
//!
//! [`file_router`] answers `GET` and `HEAD` for one file with `Accept-Ranges: bytes`, a
//! strong `ETag`, single ranges (206 with `Content-Range`), suffix and open-ended ranges,
//! 416 for unsatisfiable ones, and `If-Range` (see [`range::decide`]).

pub mod range;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

pub use range::{decide, RangeDecision};

/// One file served by ranges.
#[derive(Clone)]
pub struct ServedFile {
    path: PathBuf,
    len: u64,
    etag: String,
    served: Arc<AtomicU64>,
}

impl ServedFile {
    /// Serves `path` under the strong entity tag `etag` (unquoted; quotes are added).
    pub fn new(path: PathBuf, etag: &str) -> std::io::Result<Self> {
        let len = std::fs::metadata(&path)?.len();
        Ok(Self {
            path,
            len,
            etag: format!("\"{}\"", etag.replace('"', "")),
            served: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Body bytes sent so far (GET responses only).
    pub fn bytes_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// A handle to the served-bytes counter.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.served.clone()
    }
}

/// A router that serves `file` at `/` and at `/<any file name>`.
pub fn file_router(file: ServedFile) -> Router {
    Router::new()
        .route("/", get(serve_file))
        .route("/{name}", get(serve_file))
        .with_state(file)
}

async fn serve_file(State(f): State<ServedFile>, method: Method, headers: HeaderMap) -> Response {
    range_response(&f, &method, &headers).await
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Answers a GET/HEAD for `f` honouring Range and If-Range.
pub async fn range_response(f: &ServedFile, method: &Method, headers: &HeaderMap) -> Response {
    let decision = decide(
        header_str(headers, header::RANGE),
        header_str(headers, header::IF_RANGE),
        &f.etag,
        f.len,
    );
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&f.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let (status, start, len) = match decision {
        RangeDecision::Full => (StatusCode::OK, 0, f.len),
        RangeDecision::Partial { start, end } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", f.len)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeDecision::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", f.len)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            return (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response();
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if method == Method::HEAD {
        return (status, h, Body::empty()).into_response();
    }
    let file = match tokio::fs::File::open(&f.path).await {
        Ok(file) => file,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let mut file = file;
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    f.served.fetch_add(len, Ordering::Relaxed);
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10);
    (status, h, Body::from_stream(stream)).into_response()
}

/// Binds `addr` and serves `router` until the process ends.
pub async fn run(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}
