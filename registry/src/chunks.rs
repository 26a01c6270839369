//! The content-addressed chunk store and the artifacts reassembled from it: a directory
//! in the data dir (the default), or a bucket of an S3-compatible object store shared by
//! registry processes on any hosts (`--chunks s3://bucket/prefix`, through the
//! `object_store` crate).
//!
//! An artifact file is cut into pieces: each chunk of its manifest's chunk table, and
//! each run of bytes between them (header, manifest, signature block, alignment
//! padding). Every piece is stored once under its sha256 (`chunks/ab/cdef…`), so a
//! chunk shared by two artifacts (an untouched embedding, a republished model) takes
//! disk space once. An artifact is then the ordered list of its pieces; range requests
//! are answered by reading across pieces.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use tenpak::artifact::format::Chunk;
use tenpak::serve::Representation;

/// The store: a directory on disk (the embedded default) or a bucket of an
/// S3-compatible object store, shared by registry processes on any hosts. Cheap to
/// clone. The blocking methods must be called off the async threads (the pipeline's
/// `blocking`, `spawn_blocking`, or a plain thread).
#[derive(Debug, Clone)]
pub struct ChunkStore {
    backend: Arc<Backend>,
}

#[derive(Debug)]
enum Backend {
    Local {
        dir: PathBuf,
    },
    Object {
        store: Arc<dyn ObjectStore>,
        /// Key prefix, empty or ending in `/`.
        prefix: String,
        /// The `s3://…` URL it was opened from (logs).
        url: String,
        /// The runtime its requests run on (blocking callers wait on it).
        rt: tokio::runtime::Handle,
    },
}

/// What a [`ChunkStore::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Pieces some artifact, revision or running job names.
    pub kept: u64,
    /// Unreferenced pieces (or temporary files) spared as younger than the grace period.
    pub young: u64,
    /// Pieces and temporary files removed.
    pub removed: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Whether the sweep stopped at its deadline before looking at every piece.
    pub cut_short: bool,
}

/// What ingesting one file did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ingested {
    /// (sha256 hex, length) of each piece, in file order.
    pub pieces: Vec<(String, u64)>,
    /// sha256 hex of the whole file.
    pub sha256: String,
    /// Bytes written as new pieces.
    pub new_bytes: u64,
    /// Bytes found already stored.
    pub reused_bytes: u64,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn bad_name(sha: &str) -> std::io::Error {
    std::io::Error::other(format!("bad piece name {sha}"))
}

fn object_err(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { path, .. } => std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("object store: {path} not found"),
        ),
        e => std::io::Error::other(format!("object store: {e}")),
    }
}

/// Seconds since the epoch, now.
fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether a temporary file of the local store is younger than an hour (a write in
/// flight: never removed, whatever the grace period).
fn young_tmp(m: &std::fs::Metadata, now: std::time::SystemTime) -> bool {
    m.modified()
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .is_none_or(|age| age < std::time::Duration::from_secs(3600))
}

/// Largest single read when serving a piece from an object store (like the local path).
const READ_BLOCK: u64 = 1 << 20;

impl ChunkStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(Self {
            backend: Arc::new(Backend::Local {
                dir: dir.to_path_buf(),
            }),
        })
    }

    /// Opens the store `spec` names: `s3://bucket/prefix` (an S3-compatible object store,
    /// configured by the usual `AWS_*` variables: `AWS_ENDPOINT_URL` for a server other
    /// than Amazon's, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), else a
    /// local directory. Requests run on the current tokio runtime.
    pub fn open_spec(spec: &str) -> std::io::Result<Self> {
        let Some(rest) = spec.strip_prefix("s3://") else {
            return Self::open(Path::new(spec.strip_prefix("file://").unwrap_or(spec)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(std::io::Error::other(format!(
                "{spec}: no bucket (write s3://bucket/prefix)"
            )));
        }
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // Conditional put (If-None-Match: *): a piece is written once even when two
            // workers store it at the same moment.
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .unwrap_or_default();
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            b = b.with_region("us-east-1");
        }
        let store = b
            .build()
            .map_err(|e| std::io::Error::other(format!("{spec}: {e}")))?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            std::io::Error::other("the S3 chunk store needs a tokio runtime to run on")
        })?;
        Ok(Self::on_object_store(Arc::new(store), prefix, spec, rt))
    }

    /// A store on any `object_store` backend (S3 in service; the in-memory one in unit
    /// tests), its keys under `prefix`, requests run on `rt`.
    pub fn on_object_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        label: &str,
        rt: tokio::runtime::Handle,
    ) -> Self {
        let prefix = prefix.trim_matches('/');
        Self {
            backend: Arc::new(Backend::Object {
                store,
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
                url: label.to_string(),
                rt,
            }),
        }
    }

    /// Where the pieces are, for logs.
    pub fn describe(&self) -> String {
        match self.backend.as_ref() {
            Backend::Local { dir } => dir.display().to_string(),
            Backend::Object { url, .. } => url.clone(),
        }
    }

    /// The local file of the piece named `sha`; `None` for a name that is not a sha256
    /// or a store that is not local.
    pub fn path(&self, sha: &str) -> Option<PathBuf> {
        match self.backend.as_ref() {
            Backend::Local { dir } => is_hex64(sha).then(|| dir.join(&sha[..2]).join(&sha[2..])),
            Backend::Object { .. } => None,
        }
    }

    fn key(prefix: &str, sha: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("{prefix}{}/{}", &sha[..2], &sha[2..]))
    }

    /// Whether a piece is stored.
    pub fn contains(&self, sha: &str) -> bool {
        match self.backend.as_ref() {
            Backend::Local { .. } => self.path(sha).is_some_and(|p| p.exists()),
            Backend::Object {
                store, prefix, rt, ..
            } => is_hex64(sha) && rt.block_on(store.head(&Self::key(prefix, sha))).is_ok(),
        }
    }

    /// Stores a piece unless it is there; whether it was written.
    fn put(&self, sha: &str, bytes: &[u8]) -> std::io::Result<bool> {
        if !is_hex64(sha) {
            return Err(bad_name(sha));
        }
        match self.backend.as_ref() {
            Backend::Local { dir } => {
                let path = dir.join(&sha[..2]).join(&sha[2..]);
                if path.exists() {
                    // Young again (belt and braces: the pieces a job uses are also
                    // recorded in the job store before it looks, see `ingest`).
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    return Ok(false);
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut tmp = tempfile::NamedTempFile::new_in(dir.join("tmp"))?;
                tmp.write_all(bytes)?;
                tmp.as_file().sync_data()?;
                tmp.persist(&path).map_err(|e| e.error)?;
                Ok(true)
            }
            Backend::Object {
                store, prefix, rt, ..
            } => {
                let key = Self::key(prefix, sha);
                if rt.block_on(store.head(&key)).is_ok() {
                    return Ok(false);
                }
                let payload = object_store::PutPayload::from(bytes.to_vec());
                let opts = object_store::PutOptions::from(object_store::PutMode::Create);
                match rt.block_on(store.put_opts(&key, payload.clone(), opts)) {
                    Ok(_) => Ok(true),
                    // Another writer stored it first: the same bytes, by their name.
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => Ok(false),
                    // A server without conditional writes: a plain put of the same bytes
                    // under their own digest is harmless if it races.
                    Err(object_store::Error::NotImplemented) => {
                        rt.block_on(store.put(&key, payload)).map_err(object_err)?;
                        Ok(true)
                    }
                    Err(e) => Err(object_err(e)),
                }
            }
        }
    }

    /// A stored piece's bytes, checked against its name and length.
    fn read_piece(&self, sha: &str, n: u64) -> std::io::Result<Vec<u8>> {
        if !is_hex64(sha) {
            return Err(bad_name(sha));
        }
        let bytes = match self.backend.as_ref() {
            Backend::Local { dir } => std::fs::read(dir.join(&sha[..2]).join(&sha[2..]))?,
            Backend::Object {
                store, prefix, rt, ..
            } => rt
                .block_on(async { store.get(&Self::key(prefix, sha)).await?.bytes().await })
                .map_err(object_err)?
                .to_vec(),
        };
        if bytes.len() as u64 != n || hex::encode(Sha256::digest(&bytes)) != *sha {
            return Err(std::io::Error::other(format!(
                "stored piece {sha} is damaged (length or sha256 differs)"
            )));
        }
        Ok(bytes)
    }

    /// Mark and sweep: removes every stored piece not in `referenced` (the pieces of
    /// every recorded artifact and companion revision, and those running jobs declared)
    /// that is older than `grace`, and temporary files older than `grace`; stops at
    /// `deadline` (the end of the sweep's lease in the job store).
    ///
    /// Safe while jobs ingest, on any number of hosts: a job declares the pieces it is
    /// about to use in the job store before it looks for them ([`Self::ingest`]), and
    /// the sweep reads `referenced` after taking the store's sweep lease, during which
    /// no job can declare (see `JobStore::declare_pieces`): either the sweep sees a
    /// job's pieces, or the job looks for them after the sweep removed them and writes
    /// them again.
    pub fn sweep(
        &self,
        referenced: &std::collections::HashSet<String>,
        grace: std::time::Duration,
        deadline: std::time::Instant,
    ) -> std::io::Result<Swept> {
        let mut out = Swept::default();
        match self.backend.as_ref() {
            Backend::Local { dir } => {
                let now = std::time::SystemTime::now();
                let old = |m: &std::fs::Metadata| {
                    m.modified()
                        .ok()
                        .and_then(|t| now.duration_since(t).ok())
                        .is_some_and(|age| age >= grace)
                };
                for d in std::fs::read_dir(dir)? {
                    let d = d?;
                    let prefix = d.file_name().to_string_lossy().into_owned();
                    if !d.file_type()?.is_dir() {
                        continue;
                    }
                    let tmp = prefix == "tmp";
                    if !tmp && (prefix.len() != 2 || !prefix.bytes().all(|c| c.is_ascii_hexdigit()))
                    {
                        continue;
                    }
                    for f in std::fs::read_dir(d.path())? {
                        // Entries come and go while jobs write (a temporary file renamed
                        // into place): one gone since the listing is passed over.
                        let Ok(f) = f else { continue };
                        let Ok(meta) = f.metadata() else { continue };
                        if !meta.is_file() {
                            continue;
                        }
                        let sha = format!("{prefix}{}", f.file_name().to_string_lossy());
                        // A temporary file is a write in flight for seconds, or the
                        // leftover of a crash: only an hour-old one is taken as the latter.
                        let stale = if tmp {
                            old(&meta) && !young_tmp(&meta, now)
                        } else {
                            old(&meta)
                        };
                        if !tmp && referenced.contains(&sha) {
                            out.kept += 1;
                        } else if !stale {
                            out.young += 1;
                        } else if std::time::Instant::now() >= deadline {
                            out.cut_short = true;
                            return Ok(out);
                        } else {
                            match std::fs::remove_file(f.path()) {
                                Ok(()) => {
                                    out.removed += 1;
                                    out.bytes_freed += meta.len();
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                Err(e) => return Err(e),
                            }
                        }
                    }
                }
            }
            Backend::Object {
                store, prefix, rt, ..
            } => {
                use futures_util::StreamExt;
                // The listing is streamed (pages of 1,000 keys), not held: a bucket of
                // millions of pieces costs a page of memory.
                let now = epoch_now();
                rt.block_on(async {
                    let p = object_store::path::Path::from(prefix.trim_end_matches('/'));
                    let p = (!prefix.is_empty()).then_some(p);
                    let mut listing = store.list(p.as_ref());
                    while let Some(meta) = listing.next().await {
                        let meta = meta.map_err(object_err)?;
                        let key = meta.location.as_ref();
                        let Some(rel) = key.strip_prefix(prefix.as_str()) else {
                            continue;
                        };
                        let sha = rel.replacen('/', "", 1);
                        if !is_hex64(&sha) || rel.len() != 65 {
                            continue;
                        }
                        let age = now - meta.last_modified.timestamp();
                        if referenced.contains(&sha) {
                            out.kept += 1;
                        } else if age < grace.as_secs() as i64 {
                            out.young += 1;
                        } else if std::time::Instant::now() >= deadline {
                            out.cut_short = true;
                            return Ok(());
                        } else {
                            match store.delete(&meta.location).await {
                                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                                Err(e) => return Err(object_err(e)),
                            }
                            out.removed += 1;
                            out.bytes_freed += meta.size;
                        }
                    }
                    Ok::<(), std::io::Error>(())
                })?;
            }
        }
        Ok(out)
    }

    /// Cuts `file` (an artifact whose chunk table is `chunks`, sorted by offset) into
    /// pieces, declares them with `declare` (the job store records them as in use, so
    /// that no sweep removes one between this looking for it and the artifact being
    /// recorded), then stores those not yet stored. Each chunk's sha256 is recomputed
    /// and must match the table.
    pub fn ingest(
        &self,
        file: &Path,
        chunks: &[Chunk],
        declare: &dyn Fn(&[String]) -> std::io::Result<()>,
    ) -> std::io::Result<Ingested> {
        let mut f = std::fs::File::open(file)?;
        let len = f.metadata()?.len();
        let mut cuts: Vec<(u64, u64, Option<&str>)> = Vec::new();
        let mut at = 0u64;
        for c in chunks {
            if c.offset < at || c.offset + c.length > len {
                return Err(std::io::Error::other(format!(
                    "chunk at {} (+{}) overlaps or runs past the file",
                    c.offset, c.length
                )));
            }
            if c.offset > at {
                cuts.push((at, c.offset - at, None));
            }
            cuts.push((c.offset, c.length, Some(c.sha256.as_str())));
            at = c.offset + c.length;
        }
        if at < len {
            cuts.push((at, len - at, None));
        }
        // The names first: chunks by the table (checked as they are read below), the
        // runs between them (header, manifest, padding: small) hashed now.
        let mut buf = Vec::new();
        let mut names = Vec::with_capacity(cuts.len());
        for &(offset, n, expect) in &cuts {
            names.push(match expect {
                Some(e) if is_hex64(e) => e.to_string(),
                Some(e) => return Err(bad_name(e)),
                None => {
                    buf.resize(n as usize, 0);
                    f.seek(SeekFrom::Start(offset))?;
                    f.read_exact(&mut buf)?;
                    hex::encode(Sha256::digest(&buf))
                }
            });
        }
        declare(&names)?;
        let mut out = Ingested::default();
        let mut whole = Sha256::new();
        for ((offset, n, _), name) in cuts.into_iter().zip(names) {
            buf.resize(n as usize, 0);
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut buf)?;
            whole.update(&buf);
            let sha = hex::encode(Sha256::digest(&buf));
            if sha != name {
                return Err(std::io::Error::other(format!(
                    "chunk at {offset}: sha256 {sha}, manifest says {name}"
                )));
            }
            if self.put(&sha, &buf)? {
                out.new_bytes += n;
            } else {
                out.reused_bytes += n;
            }
            out.pieces.push((sha, n));
        }
        out.sha256 = hex::encode(whole.finalize());
        Ok(out)
    }

    /// Stores small contents (a model card) as one piece, declared first as
    /// [`Self::ingest`] does.
    pub fn put_bytes(
        &self,
        bytes: &[u8],
        declare: &dyn Fn(&[String]) -> std::io::Result<()>,
    ) -> std::io::Result<String> {
        let sha = hex::encode(Sha256::digest(bytes));
        declare(std::slice::from_ref(&sha))?;
        self.put(&sha, bytes)?;
        Ok(sha)
    }

    /// Writes the file made of `pieces` to `dest` (a base artifact a delta job packs
    /// against), checking each piece's sha256 and the whole file's against `sha256`.
    pub fn materialize(
        &self,
        pieces: &[(String, u64)],
        sha256: &str,
        dest: &Path,
    ) -> std::io::Result<()> {
        let mut whole = Sha256::new();
        let mut tmp = tempfile::NamedTempFile::new_in(dest.parent().unwrap_or(Path::new(".")))?;
        for (sha, n) in pieces {
            let bytes = self.read_piece(sha, *n)?;
            whole.update(&bytes);
            tmp.write_all(&bytes)?;
        }
        if hex::encode(whole.finalize()) != sha256 {
            return Err(std::io::Error::other(format!(
                "the pieces do not make the file {sha256}"
            )));
        }
        tmp.persist(dest).map_err(|e| e.error)?;
        Ok(())
    }

    /// A file made of `pieces`, served under entity tag `etag` (unquoted).
    pub fn assemble(&self, pieces: &[(String, u64)], etag: &str) -> std::io::Result<Assembled> {
        let mut parts = Vec::with_capacity(pieces.len());
        let mut at = 0;
        for (sha, n) in pieces {
            if !is_hex64(sha) {
                return Err(bad_name(sha));
            }
            parts.push((at, *n, sha.clone()));
            at += n;
        }
        Ok(Assembled {
            store: self.clone(),
            parts,
            len: at,
            etag: format!("\"{etag}\""),
        })
    }
}

/// A file reassembled from stored pieces, served by ranges (from files, or by range
/// reads of the object store, 1 MiB at a time and two ahead of the socket).
#[derive(Debug, Clone)]
pub struct Assembled {
    store: ChunkStore,
    /// (offset in the file, length, piece sha256).
    parts: Vec<(u64, u64, String)>,
    len: u64,
    etag: String,
}

impl Representation for Assembled {
    fn len(&self) -> u64 {
        self.len
    }

    fn etag(&self) -> &str {
        &self.etag
    }

    fn body(&self, start: u64, len: u64) -> Body {
        let end = start + len;
        // The pieces overlapping [start, end), with the slice of each.
        let first = self.parts.partition_point(|(o, n, _)| o + n <= start);
        let slices = self.parts[first..]
            .iter()
            .take_while(|(o, _, _)| *o < end)
            .map(|(o, n, sha)| {
                let s = start.max(*o) - o;
                let e = end.min(o + n) - o;
                (sha.clone(), s, e - s)
            });
        match self.store.backend.as_ref() {
            Backend::Local { dir } => tenpak::serve::file_slices_body(
                slices
                    .map(|(sha, s, n)| (dir.join(&sha[..2]).join(&sha[2..]), s, n))
                    .collect(),
            ),
            Backend::Object { store, prefix, .. } => {
                use futures_util::StreamExt;
                let blocks: Vec<(object_store::path::Path, u64, u64)> = slices
                    .flat_map(|(sha, off, n)| {
                        let key = ChunkStore::key(prefix, &sha);
                        (0..n.div_ceil(READ_BLOCK)).map(move |k| {
                            let s = off + k * READ_BLOCK;
                            (key.clone(), s, READ_BLOCK.min(off + n - s))
                        })
                    })
                    .collect();
                let store = store.clone();
                let stream = futures_util::stream::iter(blocks)
                    .map(move |(key, s, n)| {
                        let store = store.clone();
                        async move { store.get_range(&key, s..s + n).await.map_err(object_err) }
                    })
                    .buffered(2);
                Body::from_stream(stream)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    fn none(_: &[String]) -> std::io::Result<()> {
        Ok(())
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// Runs `f` on a local store and on an object store (the in-memory backend of
    /// `object_store`, which speaks the same trait as its S3 client).
    fn on_both(f: impl Fn(&ChunkStore, &dyn Fn(&str, Duration))) {
        let tmp = tempfile::tempdir().expect("tmp");
        let local = ChunkStore::open(&tmp.path().join("chunks")).expect("store");
        f(&local, &|sha, age| {
            let p = local.path(sha).expect("path");
            let f = std::fs::File::options().write(true).open(p).expect("open");
            f.set_modified(std::time::SystemTime::now() - age)
                .expect("age it");
        });
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mem = ChunkStore::on_object_store(
            Arc::new(object_store::memory::InMemory::new()),
            "pre/fix",
            "memory://",
            rt.handle().clone(),
        );
        // The in-memory store stamps objects now; age them by waiting is not possible,
        // so its sweeps below run with a grace that every object has passed.
        f(&mem, &|_, _| {});
    }

    #[test]
    fn a_sweep_removes_only_old_unreferenced_pieces() {
        on_both(|store, _| {
            let a = store
                .put_bytes(b"kept: an artifact names it", &none)
                .expect("a");
            let b = store
                .put_bytes(b"orphan: its job failed before recording", &none)
                .expect("b");
            let refs: HashSet<String> = [a.clone()].into();
            // Within the grace period nothing goes.
            let s = store
                .sweep(&refs, Duration::from_secs(3600), later())
                .expect("sweep");
            assert_eq!(
                (s.kept, s.young, s.removed),
                (1, 1, 0),
                "{}",
                store.describe()
            );
            // A sweep past its deadline removes nothing.
            let s = store
                .sweep(&refs, Duration::ZERO, Instant::now())
                .expect("sweep");
            assert!(s.cut_short && s.removed == 0);
            let s = store.sweep(&refs, Duration::ZERO, later()).expect("sweep");
            assert_eq!((s.kept, s.removed), (1, 1));
            assert!(store.contains(&a) && !store.contains(&b));
        });
    }

    #[test]
    fn a_piece_found_again_is_young_again_on_disk() {
        on_both(|store, age| {
            let a = store.put_bytes(b"piece", &none).expect("a");
            age(&a, Duration::from_secs(7200));
            store.put_bytes(b"piece", &none).expect("again");
            if store.path(&a).is_some() {
                let s = store
                    .sweep(&HashSet::new(), Duration::from_secs(3600), later())
                    .expect("sweep");
                assert_eq!((s.young, s.removed), (1, 0));
            }
        });
    }

    #[test]
    fn ingest_declares_before_storing_and_dedups_and_reassembles() {
        on_both(|store, _| {
            let tmp = tempfile::tempdir().expect("tmp");
            let file = tmp.path().join("a.bin");
            let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&file, &bytes).expect("write");
            let chunk = |o: u64, n: u64| Chunk {
                offset: o,
                length: n,
                sha256: hex::encode(Sha256::digest(&bytes[o as usize..(o + n) as usize])),
            };
            let chunks = vec![chunk(100, 4000), chunk(4100, 4000)];
            let declared = std::sync::Mutex::new(Vec::new());
            let ing = store
                .ingest(&file, &chunks, &|names| {
                    // Nothing stored yet when the names are declared.
                    assert!(names.iter().all(|n| !store.contains(n)));
                    declared.lock().expect("lock").extend_from_slice(names);
                    Ok(())
                })
                .expect("ingest");
            assert_eq!(ing.pieces.len(), 4);
            assert_eq!(
                *declared.lock().expect("lock"),
                ing.pieces.iter().map(|p| p.0.clone()).collect::<Vec<_>>()
            );
            assert_eq!(ing.new_bytes, 10_000);
            let again = store.ingest(&file, &chunks, &none).expect("again");
            assert_eq!((again.new_bytes, again.reused_bytes), (0, 10_000));
            let out = tmp.path().join("b.bin");
            store
                .materialize(&ing.pieces, &ing.sha256, &out)
                .expect("materialize");
            assert_eq!(std::fs::read(&out).expect("read"), bytes);
            // Served by ranges across piece boundaries.
            let a = store.assemble(&ing.pieces, "etag").expect("assemble");
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            for (s, n) in [
                (0u64, 10_000u64),
                (50, 100),
                (4090, 20),
                (9_999, 1),
                (3000, 6000),
            ] {
                let got = rt
                    .block_on(axum::body::to_bytes(a.body(s, n), usize::MAX))
                    .expect("body");
                assert_eq!(&got[..], &bytes[s as usize..(s + n) as usize], "{s}+{n}");
            }
            // A chunk whose bytes differ from the table is refused.
            let mut bad = chunks.clone();
            bad[1].sha256 = "0".repeat(64);
            assert!(store.ingest(&file, &bad, &none).is_err());
        });
    }
}
