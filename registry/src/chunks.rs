//! The content-addressed chunk store and the artifacts reassembled from it.
//!
//! An artifact file is cut into pieces: each chunk of its manifest's chunk table, and
//! each run of bytes between them (header, manifest, signature block, alignment
//! padding). Every piece is stored once under its sha256 (`chunks/ab/cdef…`), so a
//! chunk shared by two artifacts (an untouched embedding, a republished model) takes
//! disk space once. An artifact is then the ordered list of its pieces; range requests
//! are answered by reading across pieces.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use axum::body::Body;
use sha2::{Digest, Sha256};
use tenpak::artifact::format::Chunk;
use tenpak::serve::Representation;

/// The store on disk.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    dir: PathBuf,
}

/// What a [`ChunkStore::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Pieces some artifact or revision names.
    pub kept: u64,
    /// Unreferenced pieces (or temporary files) spared as younger than the grace period.
    pub young: u64,
    /// Pieces and temporary files removed.
    pub removed: u64,
    /// Their bytes.
    pub bytes_freed: u64,
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

impl ChunkStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the piece named `sha` lives; `None` for a name that is not a sha256.
    pub fn path(&self, sha: &str) -> Option<PathBuf> {
        is_hex64(sha).then(|| self.dir.join(&sha[..2]).join(&sha[2..]))
    }

    /// Whether a piece is stored.
    pub fn contains(&self, sha: &str) -> bool {
        self.path(sha).is_some_and(|p| p.exists())
    }

    fn put(&self, sha: &str, bytes: &[u8]) -> std::io::Result<bool> {
        let Some(path) = self.path(sha) else {
            return Err(std::io::Error::other(format!("bad piece name {sha}")));
        };
        if path.exists() {
            // Young again: a sweep spares pieces touched within its grace period, so a
            // piece found here is not collected before the artifact naming it is recorded.
            let _ = std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(false);
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_data()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(true)
    }

    /// Mark and sweep: removes every stored piece not in `referenced` (the pieces of
    /// every recorded artifact and companion revision) that is older than `grace`, and
    /// temporary files older than `grace`. Safe while jobs ingest: a piece written or
    /// found again within the grace period is young, and a job records its artifact
    /// well within it.
    pub fn sweep(
        &self,
        referenced: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> std::io::Result<Swept> {
        let now = std::time::SystemTime::now();
        let old = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= grace)
        };
        let mut out = Swept::default();
        for d in std::fs::read_dir(&self.dir)? {
            let d = d?;
            let prefix = d.file_name().to_string_lossy().into_owned();
            if !d.file_type()?.is_dir() {
                continue;
            }
            let tmp = prefix == "tmp";
            if !tmp && (prefix.len() != 2 || !prefix.bytes().all(|c| c.is_ascii_hexdigit())) {
                continue;
            }
            for f in std::fs::read_dir(d.path())? {
                let f = f?;
                let meta = f.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                let sha = format!("{prefix}{}", f.file_name().to_string_lossy());
                if !tmp && referenced.contains(&sha) {
                    out.kept += 1;
                } else if !old(&meta) {
                    out.young += 1;
                } else {
                    std::fs::remove_file(f.path())?;
                    out.removed += 1;
                    out.bytes_freed += meta.len();
                }
            }
        }
        Ok(out)
    }

    /// Cuts `file` (an artifact whose chunk table is `chunks`, sorted by offset) into
    /// pieces and stores those not yet stored. Each chunk's sha256 is recomputed and
    /// must match the table.
    pub fn ingest(&self, file: &Path, chunks: &[Chunk]) -> std::io::Result<Ingested> {
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
        let mut out = Ingested::default();
        let mut whole = Sha256::new();
        let mut buf = Vec::new();
        for (offset, n, expect) in cuts {
            buf.resize(n as usize, 0);
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut buf)?;
            whole.update(&buf);
            let sha = hex::encode(Sha256::digest(&buf));
            if let Some(e) = expect {
                if e != sha {
                    return Err(std::io::Error::other(format!(
                        "chunk at {offset}: sha256 {sha}, manifest says {e}"
                    )));
                }
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

    /// Stores small contents (a model card) as one piece.
    pub fn put_bytes(&self, bytes: &[u8]) -> std::io::Result<String> {
        let sha = hex::encode(Sha256::digest(bytes));
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
            let path = self
                .path(sha)
                .ok_or_else(|| std::io::Error::other(format!("bad piece name {sha}")))?;
            let bytes = std::fs::read(&path)?;
            if bytes.len() as u64 != *n || hex::encode(Sha256::digest(&bytes)) != *sha {
                return Err(std::io::Error::other(format!(
                    "stored piece {sha} is damaged (length or sha256 differs)"
                )));
            }
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
            let path = self
                .path(sha)
                .ok_or_else(|| std::io::Error::other(format!("bad piece name {sha}")))?;
            parts.push((at, *n, path));
            at += n;
        }
        Ok(Assembled {
            parts,
            len: at,
            etag: format!("\"{etag}\""),
        })
    }
}

/// A file reassembled from stored pieces, served by ranges.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// (offset in the file, length, piece path).
    parts: Vec<(u64, u64, PathBuf)>,
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
            .map(|(o, n, p)| {
                let s = start.max(*o) - o;
                let e = end.min(o + n) - o;
                (p.clone(), s, e - s)
            })
            .collect();
        tenpak::serve::file_slices_body(slices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn a_sweep_removes_only_old_unreferenced_pieces() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = ChunkStore::open(&tmp.path().join("chunks")).expect("store");
        let a = store.put_bytes(b"kept: an artifact names it").expect("a");
        let b = store
            .put_bytes(b"orphan: its job failed before recording")
            .expect("b");
        std::fs::write(tmp.path().join("chunks/tmp/partial"), b"x").expect("tmp file");
        let refs: HashSet<String> = [a.clone()].into();
        // Within the grace period nothing goes.
        let s = store
            .sweep(&refs, Duration::from_secs(3600))
            .expect("sweep");
        assert_eq!((s.kept, s.young, s.removed), (1, 2, 0));
        let s = store.sweep(&refs, Duration::ZERO).expect("sweep");
        assert_eq!((s.kept, s.removed), (1, 2));
        assert!(store.contains(&a) && !store.contains(&b));
        assert!(!tmp.path().join("chunks/tmp/partial").exists());
        // A piece stored again is young again (an ingest that found it is protected).
        let old = store.path(&a).expect("path");
        let f = std::fs::File::options()
            .write(true)
            .open(&old)
            .expect("open");
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
            .expect("age it");
        store
            .put_bytes(b"kept: an artifact names it")
            .expect("again");
        let s = store
            .sweep(&HashSet::new(), Duration::from_secs(3600))
            .expect("sweep");
        assert_eq!((s.young, s.removed), (1, 0));
    }
}
