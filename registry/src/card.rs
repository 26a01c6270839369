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
    /// Set when the file is a delta (or adapter) against a base artifact.
    pub delta: Option<CardDelta>,
    /// Why a derived model's file was packed in full (the base could not be used).
    pub note: Option<String>,
}

/// The base artifact a delta row is applied to.
#[derive(Debug, Clone)]
pub struct CardDelta {
    /// The base's companion repository.
    pub base_repo: String,
    /// The base artifact's file name there.
    pub base_file: String,
    /// The base artifact's manifest digest (`sha256:…`), which the delta names.
    pub base_digest: String,
    /// What the model costs packed on its own with the base's codecs, in bytes.
    pub own_bytes: u64,
    /// An adapter (merged on load) rather than a fine-tune's delta.
    pub adapter: bool,
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
    /// The source card's licence and gating terms, as front-matter lines
    /// ([`tenpak::hub::card::licence_lines`]): a derivative carries them.
    pub licence: &'a [String],
    /// Who may read the source ("public", "private", "gated (manual approval)").
    pub access: &'a str,
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
    for l in info.licence {
        let _ = writeln!(s, "{l}");
    }
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
    if info.access != "public" {
        let _ = writeln!(
            s,
            "The source is {}: this repository is private, as what is made from it must be.\n",
            info.access
        );
    }
    if !info.licence.is_empty() {
        let _ = writeln!(
            s,
            "The source's licence and terms apply to these artifacts (carried in this card's metadata).\n"
        );
    }
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
    let deltas: Vec<_> = rows
        .iter()
        .filter_map(|r| r.delta.as_ref().map(|d| (r, d)))
        .collect();
    if !deltas.is_empty() {
        let _ = writeln!(s, "\n## Against the base\n");
        for (r, d) in &deltas {
            let what = if d.adapter {
                "holds the adapter's own factors, merged into the base's matrices on load"
            } else {
                "holds only what this fine-tune changed"
            };
            let _ = writeln!(
                s,
                "- `{}` {what}, against [`{}`](https://huggingface.co/{}/blob/main/{}) of \
                 [{}](https://huggingface.co/{}) (digest `{}`): {} instead of {} packed on its own \
                 ({:.1}% of it).",
                r.file,
                d.base_file,
                d.base_repo,
                d.base_file,
                d.base_repo,
                d.base_repo,
                d.base_digest,
                mb(r.bytes),
                mb(d.own_bytes),
                100.0 * r.bytes as f64 / d.own_bytes.max(1) as f64
            );
        }
        let (r, d) = deltas[0];
        let _ = writeln!(
            s,
            "\nLoad with the base (both signatures and every chunk of both are checked):\n\n```\n\
             tenpak unpack {} --base {} -o model/\n```",
            r.file, d.base_file
        );
    }
    for r in rows.iter().filter(|r| r.note.is_some()) {
        let _ = writeln!(
            s,
            "\n`{}` is packed in full, not against its base: {}.",
            r.file,
            crate::redact::redact(r.note.as_deref().unwrap_or_default())
        );
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
            licence: &[],
            access: "public",
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
            delta: None,
            note: None,
        }];
        let card = render(&info, &rows);
        assert!(!card.contains("## Against the base"));
        assert!(!card.contains("licence"));
        let licence = vec![
            "license: llama3.2".to_string(),
            "extra_gated_prompt: Agree".into(),
        ];
        let gated = render(
            &CardInfo {
                licence: &licence,
                access: "gated (manual approval)",
                ..info.clone()
            },
            &rows,
        );
        let front = tenpak::hub::card::front_matter(&gated).expect("front matter");
        assert!(
            front.contains("\nlicense: llama3.2\nextra_gated_prompt: Agree\n"),
            "{front}"
        );
        assert!(gated.contains("The source is gated (manual approval): this repository is private"));
        assert!(
            card.starts_with("---\nbase_model: \"acme/tiny\"\nbase_model_relation: quantized\n")
        );
        assert!(card.contains("| `tiny-balanced.tnpk` | balanced | 4.312 | 5.100 | 1.0 MB | 3.20× smaller | not measured"));
    }

    #[test]
    fn delta_rows_name_the_base_artifact_and_notes_say_why_full() {
        let info = CardInfo {
            source: "acme/tiny-ft",
            commit: "abc",
            source_dtype: "bf16",
            key_id: "k",
            public_key: "00",
            eval: None,
            licence: &[],
            access: "public",
        };
        let row = |file: &str, delta: Option<CardDelta>, note: Option<&str>| CardRow {
            file: file.into(),
            target: "balanced".into(),
            bits_quantized: 0.5,
            bits_file: 0.5,
            bytes: 100_000,
            source_bytes: 3_200_000,
            ppl_delta: Ok(0.25),
            digest: "sha256:11".into(),
            delta,
            note: note.map(str::to_string),
        };
        let card = render(
            &info,
            &[
                row(
                    "tiny-ft-balanced.tnpk",
                    Some(CardDelta {
                        base_repo: "acme/tiny-tnpk".into(),
                        base_file: "tiny-balanced.tnpk".into(),
                        base_digest: "sha256:22".into(),
                        own_bytes: 1_000_000,
                        adapter: false,
                    }),
                    None,
                ),
                row(
                    "tiny-ft-quality.tnpk",
                    None,
                    Some("the base has no quality artifact"),
                ),
            ],
        );
        assert!(card.contains("## Against the base"));
        assert!(card.contains("[`tiny-balanced.tnpk`](https://huggingface.co/acme/tiny-tnpk/blob/main/tiny-balanced.tnpk)"));
        assert!(card.contains(
            "(digest `sha256:22`): 0.1 MB instead of 1.0 MB packed on its own (10.0% of it)"
        ));
        assert!(card.contains("tenpak unpack tiny-ft-balanced.tnpk --base tiny-balanced.tnpk"));
        assert!(card.contains("`tiny-ft-quality.tnpk` is packed in full, not against its base: the base has no quality artifact."));
    }
}
