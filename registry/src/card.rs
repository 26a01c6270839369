//! The companion repository's model card (`README.md`): Hub metadata in YAML front
//! matter (`base_model`, `base_model_relation: quantized`, tags) and a table of what each
//! artifact costs and, where measured, what it loses.

use std::fmt::Write;

/// One artifact's row.
#[derive(Debug, Clone)]
pub struct CardRow {
    /// File name in the repository.
    pub file: String,
    /// Target name.
    pub target: String,
    /// Bits per weight over the quantized linear layers.
    pub bits_quantized: f64,
    /// Bits per weight of the whole file (headers, kept tensors, padding).
    pub bits_file: f64,
    /// File size in bytes.
    pub bytes: u64,
    /// Source weights' size in bytes (bf16/fp16 as published).
    pub source_bytes: u64,
    /// Perplexity change in percent, or why it was not measured.
    pub ppl_delta: Result<f64, String>,
    /// Manifest digest.
    pub digest: String,
}

/// What the card says about the source and the signer.
#[derive(Debug, Clone)]
pub struct CardInfo<'a> {
    /// Source `owner/name`.
    pub source: &'a str,
    /// Source commit.
    pub commit: &'a str,
    /// Source dtype name (bf16, f16, f32).
    pub source_dtype: &'a str,
    /// Registry signing key id.
    pub key_id: &'a str,
    /// Registry public key (hex).
    pub public_key: &'a str,
    /// Perplexity protocol, when measured (text and tokens).
    pub eval: Option<String>,
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// Renders the card.
pub fn render(info: &CardInfo<'_>, rows: &[CardRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "---");
    let _ = writeln!(s, "base_model: {}", yaml_str(info.source));
    let _ = writeln!(s, "base_model_relation: quantized");
    let _ = writeln!(s, "library_name: tenpak");
    let _ = writeln!(s, "tags:\n- tenpak\n- quantized\n- int4");
    let _ = writeln!(s, "---\n");
    let _ = writeln!(s, "# {} — TenPak artifacts\n", info.source);
    let _ = writeln!(
        s,
        "Compressed automatically by `tenpak-registry` from [{src}](https://huggingface.co/{src}) \
         at commit `{commit}`. Each `.tnpk` is chunked, content-addressed and signed; \
         load it with `tenpak unpack` or stream only the tensors you need by HTTP ranges.\n",
        src = info.source,
        commit = info.commit
    );
    let _ = writeln!(
        s,
        "| File | Target | Bits/weight (quantized linears) | Bits/weight (whole file) | Size | vs source ({}) | Perplexity Δ |",
        info.source_dtype
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let ratio = if r.bytes > 0 {
            format!("{:.2}× smaller", r.source_bytes as f64 / r.bytes as f64)
        } else {
            "—".into()
        };
        let ppl = match &r.ppl_delta {
            Ok(d) => format!("{d:+.2}%"),
            Err(why) => format!("not measured ({why})"),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {:.3} | {:.3} | {} | {} | {} |",
            r.file,
            r.target,
            r.bits_quantized,
            r.bits_file,
            mb(r.bytes),
            ratio,
            ppl
        );
    }
    if let Some(e) = &info.eval {
        let _ = writeln!(s, "\nPerplexity: {e}.");
    }
    let _ = writeln!(
        s,
        "\n## Verify\n\nSigned with ed25519 key `{}` (public key `{}`). Save the line \
         `tenpak-ed25519-public {}` as `registry.pub`, then:\n\n```\ntenpak verify FILE.tnpk --key registry.pub\n```\n",
        info.key_id, info.public_key, info.public_key
    );
    let _ = writeln!(s, "Digests (sha256 of each manifest):\n");
    for r in rows {
        let _ = writeln!(s, "- `{}`: `{}`", r.file, r.digest);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_has_hub_metadata_and_rows() {
        let info = CardInfo {
            source: "acme/tiny",
            commit: "abc",
            source_dtype: "bf16",
            key_id: "k",
            public_key: "00",
            eval: None,
        };
        let rows = vec![CardRow {
            file: "tiny-balanced.tnpk".into(),
            target: "balanced".into(),
            bits_quantized: 4.3125,
            bits_file: 5.1,
            bytes: 1_000_000,
            source_bytes: 3_200_000,
            ppl_delta: Err("no evaluation text configured".into()),
            digest: "sha256:00".into(),
        }];
        let card = render(&info, &rows);
        assert!(
            card.starts_with("---\nbase_model: \"acme/tiny\"\nbase_model_relation: quantized\n")
        );
        assert!(card.contains("| `tiny-balanced.tnpk` | balanced | 4.312 | 5.100 | 1.0 MB | 3.20× smaller | not measured"));
    }
}
