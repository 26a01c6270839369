//! Read-only memory maps of model files: the one place in the crate that needs
//! `unsafe`. Every reader goes through [`MappedFile`] and then works on byte slices,
//! so the OS pages weights in on demand and a model is never read whole into RAM.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A file mapped read-only into memory.
pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        // SAFETY: the map is read-only and private to this process. A concurrent writer
        // truncating the file could fault on access; TenPak never writes a file it has
        // mapped (outputs are written to temporary files and renamed into place), which is
        // the contract every mmap-based model loader (safetensors, llama.cpp) relies on.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io("mmap", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All bytes of the file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Tells the kernel the pages of `[offset, offset + len)` are no longer needed, so a
    /// tensor that has been read stops counting against resident memory. Best effort:
    /// failures are ignored (the pages then stay cached, which is only slower to free).
    pub fn release(&self, offset: u64, len: u64) {
        #[cfg(unix)]
        {
            let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
                return;
            };
            if offset
                .checked_add(len)
                .is_none_or(|end| end > self.map.len())
                || len == 0
            {
                return;
            }
            // SAFETY: the mapping is private and read-only and this process never writes
            // it, so MADV_DONTNEED only drops clean page-cache-backed pages; a later access
            // faults them back in from the file with identical contents. No Rust reference
            // observes a change.
            #[allow(unsafe_code)]
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    /// `len` bytes at `offset`, or a [`Error::Truncated`] naming `what`.
    pub fn range(&self, offset: u64, len: u64, what: &str) -> Result<&[u8]> {
        let file_len = self.map.len() as u64;
        let end = offset.checked_add(len);
        match end {
            Some(end) if end <= file_len => Ok(&self.map[offset as usize..end as usize]),
            _ => Err(Error::Truncated {
                path: self.path.clone(),
                what: what.to_string(),
                offset,
                needed: len,
                len: file_len,
            }),
        }
    }
}
