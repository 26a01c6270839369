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

/// Something served by byte ranges: a length, a strong entity tag, and a way to stream
/// any byte range of it. A file is one ([`ServedFile`]); the registry's artifacts,
/// reassembled from its chunk store, are another.
pub trait Representation: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The strong entity tag, quoted (`"abc"`).
    fn etag(&self) -> &str;
    /// A body streaming bytes `start..start + len` (within bounds).
    fn body(&self, start: u64, len: u64) -> Body;
}

impl Representation for ServedFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn etag(&self) -> &str {
        &self.etag
    }

    fn body(&self, start: u64, len: u64) -> Body {
        self.served.fetch_add(len, Ordering::Relaxed);
        file_slices_body(vec![(self.path.clone(), start, len)])
    }
}

/// Largest single read when streaming a body.
const READ_BLOCK: u64 = 1 << 20;

/// A body made of byte ranges of files: `(path, offset, length)` in order. Each range is
/// read in blocks of at most 1 MiB by positioned reads on the blocking pool, two blocks
/// ahead of the socket, so memory stays bounded and disk reads overlap sending.
pub fn file_slices_body(slices: Vec<(PathBuf, u64, u64)>) -> Body {
    use futures_util::StreamExt;
    let blocks = slices.into_iter().flat_map(|(path, off, len)| {
        let path = Arc::new(path);
        (0..len.div_ceil(READ_BLOCK)).map(move |k| {
            let start = off + k * READ_BLOCK;
            (path.clone(), start, READ_BLOCK.min(off + len - start))
        })
    });
    let stream = futures_util::stream::iter(blocks)
        .map(|(path, start, n)| async move {
            tokio::task::spawn_blocking(move || read_at(&path, start, n))
                .await
                .map_err(std::io::Error::other)?
        })
        .buffered(2);
    Body::from_stream(stream)
}

fn read_at(path: &std::path::Path, start: u64, n: u64) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; n as usize];
    f.read_exact_at(&mut buf, start)?;
    Ok(bytes::Bytes::from(buf))
}

/// Answers a GET/HEAD for `f` honouring Range and If-Range.
pub async fn range_response(
    f: &dyn Representation,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    range_response_with(f, method, headers, HeaderMap::new())
}

/// [`range_response`] with extra headers (the registry adds `X-Repo-Commit` and friends).
pub fn range_response_with(
    f: &dyn Representation,
    method: &Method,
    headers: &HeaderMap,
    mut h: HeaderMap,
) -> Response {
    let len = f.len();
    let decision = decide(
        header_str(headers, header::RANGE),
        header_str(headers, header::IF_RANGE),
        f.etag(),
        len,
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(f.etag()) {
        h.insert(header::ETAG, v);
    }
    h.entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/octet-stream"));
    let (status, start, n) = match decision {
        RangeDecision::Full => (StatusCode::OK, 0, len),
        RangeDecision::Partial { start, end } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeDecision::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            return (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response();
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    if method == Method::HEAD {
        return (status, h, Body::empty()).into_response();
    }
    (status, h, f.body(start, n)).into_response()
}

/// Binds `addr` and serves `router` until the process ends.
pub async fn run(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// A scripted HTTP server on a free loopback port, for tests and fuzzers (the stand-in for
/// a host or CDN that lies): for each connection it reads one request, takes the
/// `Range: bytes=A-B` header's numbers (0 when absent), writes whatever `answer(A, B)`
/// returns (a whole HTTP/1.1 response: status line, headers, body) and closes. Returns
/// the URL of `/m.tnpk` on it. The server lives until the process ends.
pub fn scripted_server(answer: impl Fn(u64, u64) -> Vec<u8> + Send + 'static) -> String {
    use std::io::{BufRead, BufReader, Write};
    let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
        return "http://127.0.0.1:9/m.tnpk".into();
    };
    let addr = l
        .local_addr()
        .map_or_else(|_| "127.0.0.1:9".into(), |a| a.to_string());
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let Ok(read) = conn.try_clone() else { continue };
            let mut r = BufReader::new(read);
            let (mut start, mut end) = (0, 0);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    if let Some((a, b)) = v.trim().split_once('-') {
                        start = a.parse().unwrap_or(0);
                        end = b.parse().unwrap_or(0);
                    }
                }
                line.clear();
            }
            let mut c = conn;
            let _ = c.write_all(&answer(start, end));
        }
    });
    format!("http://{addr}/m.tnpk")
}
