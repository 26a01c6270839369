//! What the registry keeps of each artifact it publishes beyond its bytes, for the
//! dashboard's model pages and the GitHub reports: quality, signer, base, and per tensor
//! the bits it costs and the error it makes. Stored with the artifact (JSON) so a page
//! never opens the artifact itself.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use tenpak::artifact::select::layer_of;

/// An artifact's facts, as stored (`artifacts.details`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArtifactDetails {
    /// Manifest digest (`sha256:…`).
    pub digest: String,
    /// Target name.
    pub target: String,
    /// File name in the companion repository.
    pub file: String,
    /// File size in bytes.
    pub bytes: u64,
    /// Bits per weight over the quantized linear layers (for a delta: every byte counted).
    pub bits_quantized: f64,
    /// Bits per weight of the whole file.
    pub bits_file: f64,
    /// The source weights in their own dtype (bf16/fp16), bytes.
    pub source_bytes: u64,
    /// Perplexity change against the source, percent.
    pub ppl_delta: Option<f64>,
    /// Why the perplexity was not measured.
    pub ppl_note: Option<String>,
    /// Key id of the registry key that signed it.
    pub signer: String,
    /// For a delta or adapter: the artifact it is applied to.
    pub base: Option<BaseDetails>,
    /// Why a derived model was packed in full.
    pub note: Option<String>,
    /// Per tensor, in write order.
    pub tensors: Vec<TensorDetails>,
}

/// The base artifact of a delta.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaseDetails {
    /// Its companion repository.
    pub repo: String,
    /// Its file there.
    pub file: String,
    /// Its manifest digest.
    pub digest: String,
    /// What the model costs packed on its own with the base's codecs, bytes.
    pub own_bytes: u64,
    /// An adapter (merged on load) rather than a fine-tune's delta.
    pub adapter: bool,
}

/// One tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TensorDetails {
    /// HF name.
    pub name: String,
    /// Codec label (or `keep (bf16)`, `reference`, …).
    pub codec: String,
    /// Weights.
    pub numel: u64,
    /// Bits per weight, all overhead of the tensor counted.
    pub bits_per_weight: f64,
    /// ‖W − Ŵ‖ / ‖W‖.
    pub rel_error: f64,
}

impl ArtifactDetails {
    /// Source bytes / file bytes.
    pub fn ratio(&self) -> Option<f64> {
        (self.bytes > 0 && self.source_bytes > 0)
            .then(|| self.source_bytes as f64 / self.bytes as f64)
    }

    /// Rows of a full pack's report.
    pub fn tensors_of_pack(r: &tenpak::quantize::Report) -> Vec<TensorDetails> {
        r.tensors
            .iter()
            .map(|t| TensorDetails {
                name: t.name.clone(),
                codec: t.codec.clone(),
                numel: t.numel as u64,
                bits_per_weight: t.bits_per_weight,
                rel_error: t.rel_error,
            })
            .collect()
    }

    /// Rows of a delta pack's report.
    pub fn tensors_of_delta(r: &tenpak::delta::DeltaReport) -> Vec<TensorDetails> {
        r.tensors
            .iter()
            .map(|t| TensorDetails {
                name: t.name.clone(),
                codec: t.label.clone(),
                numel: t.numel as u64,
                bits_per_weight: t.bits_per_weight,
                rel_error: t.rel_error,
            })
            .collect()
    }

    /// Mean bits per weight of each transformer block (`model.layers.N.`), weighted by
    /// weights, in block order; tensors outside blocks are left out.
    pub fn bits_per_layer(&self) -> Vec<(usize, f64)> {
        let mut acc: std::collections::BTreeMap<usize, (f64, u64)> = Default::default();
        for t in &self.tensors {
            if let Some(l) = layer_of(&t.name) {
                let e = acc.entry(l).or_default();
                e.0 += t.bits_per_weight * t.numel as f64;
                e.1 += t.numel;
            }
        }
        acc.into_iter()
            .map(|(l, (b, n))| (l, b / n.max(1) as f64))
            .collect()
    }
}

/// Bytes for people (`12.3 MB`).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n:.0} B")
    }
}

/// A perplexity change for people (`+1.23%`, or why it is missing).
pub fn ppl_text(d: &ArtifactDetails) -> String {
    match (d.ppl_delta, &d.ppl_note) {
        (Some(p), _) => format!("{p:+.2}%"),
        (None, Some(why)) => format!("not measured ({why})"),
        (None, None) => "not measured".into(),
    }
}

/// The report table (GitHub-flavoured Markdown) of a model's artifacts at one revision:
/// what the GitHub reports post. `files_url` is where the companion's files are read
/// (`…/{repo}/resolve/{commit}`), linked from each row.
pub fn markdown_table(arts: &[ArtifactDetails], files_url: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| target | file | size | bits/weight | vs bf16 | PPL Δ | digest |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|");
    for a in arts {
        let ratio = a
            .ratio()
            .map(|r| format!("{r:.2}× smaller"))
            .unwrap_or_else(|| "—".into());
        let base = a
            .base
            .as_ref()
            .map(|b| format!(" (delta on `{}`)", b.repo))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | [`{}`]({}/{}){} | {} | {:.3} | {} | {} | `{}` |",
            a.target,
            a.file,
            files_url.trim_end_matches('/'),
            a.file,
            base,
            human_bytes(a.bytes),
            a.bits_quantized,
            ratio,
            ppl_text(a),
            short_digest(&a.digest),
        );
    }
    s
}

/// `sha256:0123456789ab…` → `0123456789ab`.
pub fn short_digest(d: &str) -> String {
    d.trim_start_matches("sha256:").chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn art() -> ArtifactDetails {
        ArtifactDetails {
            digest: "sha256:00112233445566778899".into(),
            target: "balanced".into(),
            file: "m-balanced.tnpk".into(),
            bytes: 2_000_000,
            source_bytes: 7_000_000,
            bits_quantized: 4.25,
            ppl_delta: Some(1.5),
            tensors: vec![
                TensorDetails {
                    name: "model.layers.0.mlp.up_proj.weight".into(),
                    numel: 100,
                    bits_per_weight: 4.0,
                    ..Default::default()
                },
                TensorDetails {
                    name: "model.layers.0.self_attn.q_proj.weight".into(),
                    numel: 300,
                    bits_per_weight: 8.0,
                    ..Default::default()
                },
                TensorDetails {
                    name: "model.layers.1.mlp.up_proj.weight".into(),
                    numel: 10,
                    bits_per_weight: 2.0,
                    ..Default::default()
                },
                TensorDetails {
                    name: "model.embed_tokens.weight".into(),
                    numel: 1000,
                    bits_per_weight: 16.0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn bits_per_layer_weighs_tensors_by_their_weights_and_skips_the_rest() {
        assert_eq!(art().bits_per_layer(), vec![(0, 7.0), (1, 2.0)]);
        assert_eq!(layer_of("model.layers.17.mlp.down_proj.weight"), Some(17));
        assert_eq!(layer_of("lm_head.weight"), None);
    }

    #[test]
    fn the_markdown_table_links_each_file_and_states_its_numbers() {
        let t = markdown_table(&[art()], "https://reg.example/acme/m-tnpk/resolve/abc/");
        assert!(
            t.contains(
                "[`m-balanced.tnpk`](https://reg.example/acme/m-tnpk/resolve/abc/m-balanced.tnpk)"
            ),
            "{t}"
        );
        assert!(
            t.contains("| 2.0 MB | 4.250 | 3.50× smaller | +1.50% | `001122334455` |"),
            "{t}"
        );
    }
}
