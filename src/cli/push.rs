//! `tenpak push`: publish a `.tnpk` to a Hub model repository.

use std::path::PathBuf;

use anyhow::{bail, Context};
use tenpak::artifact::Artifact;
use tenpak::hub::{Hub, HubConfig, Upload};

/// Arguments of `tenpak push`.
///
/// The artifact is opened and every chunk verified (and its signature checked with
/// --key) before anything is sent; the repository is created if it does not exist; the
/// file is added in one commit on main. Needs a token with write access (HF_TOKEN or
/// `huggingface-cli login`); HF_ENDPOINT selects another Hub.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The artifact to publish.
    pub artifact: PathBuf,
    /// Target model repository, `org/name` (e.g. `org/model-tnpk`).
    pub repo: String,
    /// File name in the repository (default: the artifact's file name).
    #[arg(long)]
    pub path_in_repo: Option<String>,
    /// Refuse to push unless the artifact is signed by this public key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Create the repository as private.
    #[arg(long)]
    pub private: bool,
    /// Commit message.
    #[arg(long)]
    pub message: Option<String>,
    /// Print one JSON object (transfer used, bytes, bytes sent, seconds).
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let Some(r) = tenpak::hub::ModelRef::parse(&a.repo) else {
        bail!("{:?} is not a repository id (org/name)", a.repo);
    };
    if r.revision.is_some() {
        bail!("push commits to main; give the repository without @revision");
    }
    let key = super::artifact_args::public_key(a.key.as_deref())?;
    let art = Artifact::open_location_verified(&a.artifact.display().to_string(), key.as_ref())
        .with_context(|| format!("opening {}", a.artifact.display()))?;
    art.verify_chunks(&|_| {})?;
    let name = match &a.path_in_repo {
        Some(n) => n.clone(),
        None => a
            .artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the artifact path has no file name")?,
    };
    let hub = Hub::new(&HubConfig::from_env())?;
    let pb = super::progress::spinner(&format!(
        "pushing {} ({} bytes) to {}/{} on {}",
        a.artifact.display(),
        art.len(),
        r.repo,
        name,
        hub.endpoint()
    ));
    let name2 = name.clone();
    let message = a
        .message
        .unwrap_or_else(|| format!("Add {name} ({})", art.digest()));
    let pb2 = pb.clone();
    let progress: tenpak::hub::ProgressFn =
        std::sync::Arc::new(move |p: tenpak::hub::UploadProgress| {
            pb2.set_message(format!(
                "pushing {name2}: {:.1}/{:.1} MB, {:.1} MB sent",
                p.bytes_done as f64 / 1e6,
                p.bytes_total as f64 / 1e6,
                p.bytes_sent as f64 / 1e6
            ));
        });
    let t0 = std::time::Instant::now();
    let report = tenpak::hub::block_on(async {
        hub.create_repo(&r.repo, a.private).await?;
        hub.commit_files(
            &r.repo,
            vec![Upload::File {
                path_in_repo: name.clone(),
                source: a.artifact.clone(),
            }],
            &message,
            Some(progress),
        )
        .await
    })??;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "repo": r.repo, "path_in_repo": name, "commit": report.commit,
            "transfer": report.transfer, "bytes": report.bytes_total,
            "bytes_sent": report.bytes_sent, "seconds": secs,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "pushed {name} to {}/{} by {:?} in {secs:.2} s: {} bytes, {} sent (commit {})",
        hub.endpoint(),
        r.repo,
        report.transfer,
        report.bytes_total,
        report.bytes_sent,
        report.commit.as_deref().unwrap_or("not reported")
    );
    Ok(())
}
