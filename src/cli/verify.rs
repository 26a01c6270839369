//! `tenpak verify`: signature and every chunk's sha256 (of a delta and its base, with
//! `--base`).

use std::path::PathBuf;

use tenpak::artifact::sign;

use super::artifact_args::{Opened, SourceArgs};

/// Arguments of `tenpak verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The signer's public key (`KEY.pub`); without it only integrity is checked. With
    /// `--base`, both the delta and the base must be signed by it.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let key = super::artifact_args::public_key(a.key.as_deref())?;
    // With --key, the signatures are checked before the manifests are parsed.
    let (arts, what) = match a.source.open_model(key.as_ref())? {
        Opened::Full(art) => (vec![*art], ""),
        Opened::Delta(d) => {
            let (delta, base) = d.into_parts();
            (vec![delta, base], " (delta and base)")
        }
    };
    let total: u64 = arts
        .iter()
        .flat_map(|art| art.manifest().tensors.iter().map(|t| t.encoded_length))
        .sum();
    let pb = indicatif::ProgressBar::new(total);
    for art in &arts {
        art.verify_chunks(&|n| pb.inc(n))?;
    }
    pb.finish_and_clear();
    let digests: Vec<&str> = arts.iter().map(|a| a.digest()).collect();
    println!(
        "OK {}: {} chunks verified{}{}",
        digests.join(" on base "),
        arts.iter()
            .map(|a| a.manifest().chunks.len())
            .sum::<usize>(),
        what,
        match &key {
            Some(pk) => format!(", signed by {}", sign::key_id(pk)),
            None => " (signature not checked: pass --key)".into(),
        }
    );
    Ok(())
}
