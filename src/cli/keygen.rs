//! `tenpak keygen`: a new ed25519 signing key.

use std::path::PathBuf;

use tenpak::artifact::sign;

/// Arguments of `tenpak keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the secret key (mode 0600); the public key goes to `<KEY>.pub`.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let key = sign::generate()?;
    sign::write_keypair(&key, &a.output)?;
    println!(
        "wrote {} and {} (key id {})",
        a.output.display(),
        sign::public_path(&a.output).display(),
        sign::key_id(&key.verifying_key())
    );
    Ok(())
}
