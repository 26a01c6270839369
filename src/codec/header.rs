//! The 16-byte header every encoding starts with, and the codec id in its first byte.

use crate::error::Corruption;
use crate::{Error, Result};

/// Bytes of the header every encoding starts with.
pub const HEADER_LEN: usize = 16;

/// A codec id: the header's first byte. Each codec's file defines its id as a `const`
/// (`int4::ID`, `vq::ID`, ...) and [`super::table`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodecId(pub u8);

impl std::fmt::Display for CodecId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The fixed header of an encoding.
///
/// Layout (little-endian): `id u8 | flags u8 | group u16 | rows u32 | cols u32 |
/// group2 u16 | refine u8 | reserved u8`. Flag bit 0: symmetric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Codec.
    pub id: CodecId,
    /// Symmetric mode.
    pub symmetric: bool,
    /// Group size of the first stage.
    pub group: u16,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// Group size of the second stage (residual), or a codec-specific count.
    pub group2: u16,
    /// Refinement iterations used (informational).
    pub refine: u8,
}

impl Header {
    /// A header for `id` over `[rows, cols]` with every other field zero (wrappers and
    /// codecs that set a field or two with struct update syntax).
    pub fn new(id: CodecId, rows: usize, cols: usize) -> Self {
        Header {
            id,
            symmetric: false,
            group: 0,
            rows: rows as u32,
            cols: cols as u32,
            group2: 0,
            refine: 0,
        }
    }

    /// Serialises to 16 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.id.0;
        b[1] = self.symmetric as u8;
        b[2..4].copy_from_slice(&self.group.to_le_bytes());
        b[4..8].copy_from_slice(&self.rows.to_le_bytes());
        b[8..12].copy_from_slice(&self.cols.to_le_bytes());
        b[12..14].copy_from_slice(&self.group2.to_le_bytes());
        b[14] = self.refine;
        b
    }

    /// Parses and validates the first 16 bytes (flags, reserved byte). Any id parses; the
    /// codec table's [`super::table::decode`] accepts only its own.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let Some(b) = bytes.get(..HEADER_LEN) else {
            return Err(Error::corrupt(
                "unknown",
                Corruption::Truncated {
                    what: "header",
                    needed: HEADER_LEN as u64,
                    len: bytes.len() as u64,
                },
            ));
        };
        let id = CodecId(b[0]);
        if b[1] > 1 || b[15] != 0 {
            return Err(Error::corrupt("unknown", Corruption::ReservedBits));
        }
        Ok(Header {
            id,
            symmetric: b[1] == 1,
            group: u16::from_le_bytes([b[2], b[3]]),
            rows: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            cols: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            group2: u16::from_le_bytes([b[12], b[13]]),
            refine: b[14],
        })
    }

    /// Element count.
    pub fn numel(&self) -> usize {
        self.rows as usize * self.cols as usize
    }
}
