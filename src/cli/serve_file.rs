//! `tenpak serve-file`: one artifact over HTTP with Range support (RFC 9110).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tenpak::artifact::Artifact;
use tenpak::serve::{self, ServedFile};

/// Arguments of `tenpak serve-file`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `.tnpk` to serve (validated first; its manifest digest is the ETag).
    pub file: PathBuf,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
}

/// Runs the server until interrupted.
pub fn run(a: Args) -> anyhow::Result<()> {
    let art = Artifact::open_location(&a.file.display().to_string())?;
    let etag = art.digest().trim_start_matches("sha256:").to_string();
    drop(art);
    let served = ServedFile::new(a.file.clone(), &etag)
        .with_context(|| format!("opening {}", a.file.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(a.bind, a.port)).await?;
        let addr = listener.local_addr()?;
        let name = a
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("serving {} at http://{addr}/{name}", a.file.display());
        tokio::select! {
            r = serve::run(listener, serve::file_router(served)) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
