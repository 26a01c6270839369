//! Where artifact bytes come from: a local file (memory-mapped) or a URL read with HTTP
//! Range requests (RFC 9110 §14). Readers ask for a list of byte ranges; the HTTP source
//! coalesces ranges separated by small gaps into one request and runs a bounded number
//! of requests in parallel.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use reqwest::blocking::Client;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use crate::{Error, Result};

/// A byte-addressable artifact.
pub trait RangeSource: Send + Sync {
    /// Human-readable location (path or URL) for errors.
    fn location(&self) -> &str;
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads each `(offset, length)` range; results in the same order.
    fn read_ranges(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>>;
    /// Bytes fetched so far (for reports and tests).
    fn bytes_fetched(&self) -> u64;
}

/// A local `.tnpk`, read with positioned reads (no shared file offset, so ranges can be
/// read from several threads; the kernel copies straight into the buffer).
pub struct LocalFile {
    file: File,
    len: u64,
    location: String,
    fetched: AtomicU64,
}

impl LocalFile {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        Ok(Self {
            file,
            len,
            location: path.display().to_string(),
            fetched: AtomicU64::new(0),
        })
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Bytes> {
        let truncated = || Error::Truncated {
            path: self.location.clone().into(),
            what: "artifact range".into(),
            offset,
            needed: len,
            len: self.len,
        };
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(truncated());
        }
        let mut buf = vec![0u8; len as usize];
        #[cfg(unix)]
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                truncated()
            } else {
                Error::io("read", &self.location, e)
            }
        })?;
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = &self.file;
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|e| Error::io("read", &self.location, e))?;
        }
        self.fetched.fetch_add(len, Ordering::Relaxed);
        Ok(Bytes::from(buf))
    }
}

impl RangeSource for LocalFile {
    fn location(&self) -> &str {
        &self.location
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_ranges(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>> {
        use rayon::prelude::*;
        ranges
            .par_iter()
            .map(|&(o, l)| self.read_at(o, l))
            .collect()
    }
    fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// An artifact held in memory (tests, fuzzing, artifacts just received).
pub struct MemorySource {
    bytes: Bytes,
    fetched: AtomicU64,
}

impl MemorySource {
    /// Wraps bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            fetched: AtomicU64::new(0),
        }
    }
}

impl RangeSource for MemorySource {
    fn location(&self) -> &str {
        "<memory>"
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_ranges(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>> {
        ranges
            .iter()
            .map(|&(o, l)| match o.checked_add(l) {
                Some(end) if end <= self.len() => {
                    self.fetched.fetch_add(l, Ordering::Relaxed);
                    Ok(self.bytes.slice(o as usize..end as usize))
                }
                _ => Err(Error::Truncated {
                    path: "<memory>".into(),
                    what: "artifact range".into(),
                    offset: o,
                    needed: l,
                    len: self.len(),
                }),
            })
            .collect()
    }
    fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// Settings of the HTTP source.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Requests in flight at once.
    pub parallel: usize,
    /// Ranges whose gap is at most this many bytes are fetched in one request.
    pub coalesce_gap: u64,
    /// Largest coalesced request.
    pub max_request: u64,
    /// Attempts per request on connection errors and 5xx answers.
    pub attempts: u32,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            parallel: 4,
            coalesce_gap: 64 << 10,
            max_request: 32 << 20,
            attempts: 3,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Largest buffer reserved before a response's bytes arrive.
const PREALLOCATE: u64 = 64 << 20;

/// `bytes START-END/TOTAL` (RFC 9110 §14.4) as numbers; `None` for anything else
/// (including an unknown total, `*`).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total) = (
        start.parse::<u64>().ok()?,
        end.parse::<u64>().ok()?,
        total.parse::<u64>().ok()?,
    );
    (start <= end && end < total).then_some((start, end, total))
}

/// A `.tnpk` behind a URL that honours Range requests.
pub struct HttpSource {
    url: String,
    len: u64,
    client: Client,
    opts: HttpOptions,
    fetched: AtomicU64,
}

fn http_err(url: &str, status: Option<u16>, message: impl Into<String>) -> Error {
    Error::Http {
        url: url.to_string(),
        status,
        message: message.into(),
    }
}

/// Merges sorted-by-offset ranges with small gaps: returns (offset, length, members).
pub fn coalesce(ranges: &[(u64, u64)], gap: u64, max: u64) -> Vec<(u64, u64, Vec<usize>)> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].0);
    let mut out: Vec<(u64, u64, Vec<usize>)> = vec![];
    for i in order {
        let (o, l) = ranges[i];
        if let Some(last) = out.last_mut() {
            let end = last.0 + last.1;
            let new_end = (o + l).max(end);
            if o <= end + gap && new_end - last.0 <= max {
                last.1 = new_end - last.0;
                last.2.push(i);
                continue;
            }
        }
        out.push((o, l, vec![i]));
    }
    out
}

impl HttpSource {
    /// Opens `url`: a HEAD request gives the length and checks `Accept-Ranges: bytes`.
    pub fn open(url: &str, opts: HttpOptions) -> Result<Self> {
        let client = Client::builder()
            .timeout(opts.timeout)
            .build()
            .map_err(|e| http_err(url, None, e.to_string()))?;
        // A one-byte range request gives the total length in Content-Range and proves
        // the server honours ranges (a HEAD's Accept-Ranges is only a hint).
        let resp = client
            .get(url)
            .header(RANGE, "bytes=0-0")
            .send()
            .map_err(|e| http_err(url, None, e.to_string()))?;
        let status = resp.status();
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(http_err(
                url,
                Some(status.as_u16()),
                format!("expected 206 Partial Content for a range request, got {status}"),
            ));
        }
        let (start, end, len) = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range)
            .ok_or_else(|| http_err(url, Some(206), "206 without a usable Content-Range total"))?;
        if (start, end) != (0, 0) || len == 0 {
            return Err(http_err(
                url,
                Some(206),
                format!("asked for bytes 0-0, the server answered {start}-{end}/{len}"),
            ));
        }
        Ok(Self {
            url: url.to_string(),
            len,
            client,
            opts,
            fetched: AtomicU64::new(1),
        })
    }

    fn fetch(&self, offset: u64, length: u64) -> Result<Bytes> {
        let range = format!("bytes={}-{}", offset, offset + length - 1);
        let mut last = None;
        for attempt in 0..self.opts.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << attempt));
            }
            let resp = match self.client.get(&self.url).header(RANGE, &range).send() {
                Ok(r) => r,
                Err(e) => {
                    last = Some(http_err(&self.url, None, e.to_string()));
                    continue;
                }
            };
            let status = resp.status();
            if status.is_server_error() {
                last = Some(http_err(
                    &self.url,
                    Some(status.as_u16()),
                    format!("{status} for {range}"),
                ));
                continue;
            }
            if status != StatusCode::PARTIAL_CONTENT {
                return Err(http_err(
                    &self.url,
                    Some(status.as_u16()),
                    format!("{status} for {range}"),
                ));
            }
            // The answer must be the range asked for (a server that sends another range
            // would hand us the wrong bytes under the right name).
            let answered = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            if answered != Some((offset, offset + length - 1, self.len)) {
                return Err(http_err(
                    &self.url,
                    Some(206),
                    format!(
                        "asked for {range} of {} bytes, the server answered Content-Range {:?}",
                        self.len,
                        resp.headers().get(CONTENT_RANGE)
                    ),
                ));
            }
            // Read into a buffer of the asked size (one copy, no regrowth), but never
            // reserve more than PREALLOCATE up front: memory follows the bytes that
            // actually arrive, whatever a hostile total or manifest claims. Read at most one
            // byte more than asked, so an over-long answer is detected, not buffered.
            let mut body = Vec::with_capacity((length + 1).min(PREALLOCATE) as usize);
            std::io::Read::read_to_end(&mut std::io::Read::take(resp, length + 1), &mut body)
                .map_err(|e| http_err(&self.url, Some(206), e.to_string()))?;
            if body.len() as u64 != length {
                return Err(http_err(
                    &self.url,
                    Some(206),
                    format!("{range}: got {} bytes, expected {length}", body.len()),
                ));
            }
            self.fetched.fetch_add(length, Ordering::Relaxed);
            return Ok(Bytes::from(body));
        }
        Err(last.unwrap_or_else(|| http_err(&self.url, None, "no attempt made")))
    }
}

impl RangeSource for HttpSource {
    fn location(&self) -> &str {
        &self.url
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_ranges(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>> {
        for &(o, l) in ranges {
            if l == 0 || o.checked_add(l).is_none_or(|e| e > self.len) {
                return Err(http_err(
                    &self.url,
                    None,
                    format!("range {o}+{l} outside the {}-byte artifact", self.len),
                ));
            }
        }
        let groups = coalesce(ranges, self.opts.coalesce_gap, self.opts.max_request);
        let next = AtomicU64::new(0);
        let slots: Vec<std::sync::Mutex<Option<Result<Bytes>>>> =
            (0..groups.len()).map(|_| Default::default()).collect();
        std::thread::scope(|s| {
            for _ in 0..self.opts.parallel.max(1).min(groups.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(g) = groups.get(i) else { break };
                    let r = self.fetch(g.0, g.1);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                });
            }
        });
        let mut out: Vec<Bytes> = vec![Bytes::new(); ranges.len()];
        for (g, slot) in groups.iter().zip(slots) {
            let buf =
                slot.into_inner().ok().flatten().unwrap_or_else(|| {
                    Err(http_err(&self.url, None, "request did not complete"))
                })?;
            for &m in &g.2 {
                let (o, l) = ranges[m];
                let start = (o - g.0) as usize;
                // A slice of the shared buffer: no copy.
                out[m] = buf.slice(start..start + l as usize);
            }
        }
        Ok(out)
    }
    fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// Opens a path or an `http(s)://` URL.
pub fn open(location: &str, http: HttpOptions) -> Result<Box<dyn RangeSource>> {
    if location.starts_with("http://") || location.starts_with("https://") {
        Ok(Box::new(HttpSource::open(location, http)?))
    } else {
        Ok(Box::new(LocalFile::open(Path::new(location))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_small_gaps_only() {
        let r = [(0, 10), (4096, 10), (20, 5), (1 << 20, 4)];
        let g = coalesce(&r, 64, 1 << 30);
        assert_eq!(g.len(), 3);
        assert_eq!((g[0].0, g[0].1, g[0].2.clone()), (0, 25, vec![0, 2]));
        let g = coalesce(&r, 8192, 1 << 30);
        assert_eq!(g.len(), 2);
        let g = coalesce(&r, 8192, 100);
        assert_eq!(g.len(), 3, "max request size splits groups");
    }
}
