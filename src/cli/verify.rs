//! `tenpak verify`: signature and every chunk's sha256.

use std::path::PathBuf;

use tenpak::artifact::sign;

use super::artifact_args::SourceArgs;

/// Arguments of `tenpak verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The signer's public key (`KEY.pub`); without it only integrity is checked.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let art = a.source.open()?;
    let signer = match &a.key {
        Some(k) => {
            let pk = sign::load_public_key(k)?;
            art.verify_signature(&pk)?;
            Some(sign::key_id(&pk))
        }
        None => None,
    };
    let total: u64 = art
        .manifest()
        .tensors
        .iter()
        .map(|t| t.encoded_length)
        .sum();
    let pb = indicatif::ProgressBar::new(total);
    art.verify_chunks(&|n| pb.inc(n))?;
    pb.finish_and_clear();
    println!(
        "OK {}: {} chunks verified{}",
        art.digest(),
        art.manifest().chunks.len(),
        match signer {
            Some(id) => format!(", signed by {id}"),
            None => " (signature not checked: pass --key)".into(),
        }
    );
    Ok(())
}
