//! Tokenization through the `tokenizers` crate, from a model's `tokenizer.json`.

use std::path::Path;

use crate::{Error, Result};

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
}

impl Tokenizer {
    /// Parses `tokenizer.json` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Json {
            path: "tokenizer.json".into(),
            message: e.to_string(),
        })?;
        // The tokenizer "adds a BOS by default" when encoding the empty string with
        // special tokens yields exactly one token.
        let bos = inner.encode("", true).ok().and_then(|e| {
            if e.get_ids().len() == 1 {
                Some(e.get_ids()[0])
            } else {
                None
            }
        });
        Ok(Self { inner, bos })
    }

    /// Reads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let p = dir.join("tokenizer.json");
        Self::from_bytes(&std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?)
    }

    /// Token ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                message: e.to_string(),
            })?
            .get_ids()
            .to_vec())
    }

    /// The BOS id the tokenizer adds by default, if it adds one.
    pub fn default_bos(&self) -> Option<u32> {
        self.bos
    }
}
