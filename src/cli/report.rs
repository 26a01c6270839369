//! `tenpak report`: an artifact's report as Markdown, printed, posted as one sticky
//! comment on a GitHub pull request (updated in place on every run), and/or the artifact
//! uploaded to a GitHub release — for teams that pack in CI.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use tenpak::github::{GitHub, GitHubConfig, RepoName};

use super::artifact_args::{Opened, SourceArgs};

/// Arguments of `tenpak report`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "GitHub credentials come from the environment: GITHUB_TOKEN (a \
personal token or an Actions token with pull-requests/contents write), or GITHUB_APP_ID, \
GITHUB_APP_KEY (PEM file) and GITHUB_INSTALLATION_ID for a GitHub App. GITHUB_API_URL and \
GITHUB_UPLOADS_URL point at GitHub Enterprise.\n\nExamples:\n  tenpak report model.tnpk\n  \
tenpak report model.tnpk --github acme/models --pr 42\n  tenpak report ft.tnpk --base base.tnpk \
--github-release acme/models@v1.2"
)]
pub struct Args {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The GitHub repository (`owner/repo`) of `--pr`.
    #[arg(long, requires = "pr")]
    pub github: Option<String>,
    /// Pull request (or issue) number: the report goes into one comment there, edited in
    /// place on later runs (one per artifact file name).
    #[arg(long, requires = "github")]
    pub pr: Option<u64>,
    /// Upload the artifact as an asset of this release (`owner/repo@tag`); an asset of the
    /// same name is replaced.
    #[arg(long, value_name = "OWNER/REPO@TAG")]
    pub github_release: Option<String>,
    /// Print the report as JSON (what was posted, where) instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// The report's Markdown and the figures it is made of.
fn markdown(opened: &Opened, location: &str) -> (String, serde_json::Value) {
    let (art, base) = match opened {
        Opened::Full(a) => (a.as_ref(), None),
        Opened::Delta(d) => (d.delta(), Some(d.base())),
    };
    let m = art.manifest();
    let weights = m.weights();
    let source = m.source_bytes();
    let name = Path::new(location)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| location.to_string());
    let mut by_codec: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for t in &m.tensors {
        let e = by_codec.entry(t.encoding.label(t.dtype)).or_default();
        e.0 += 1;
        e.1 += t.numel();
        e.2 += t.encoded_length;
    }
    let bpw = art.len() as f64 * 8.0 / weights.max(1) as f64;
    let ratio = source as f64 / art.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(s, "### TenPak report: `{name}`\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| size | {} bytes |", art.len());
    let _ = writeln!(s, "| weights | {weights} in {} tensors |", m.tensors.len());
    let _ = writeln!(s, "| bits/weight (whole file) | {bpw:.3} |");
    let _ = writeln!(
        s,
        "| vs source dtype | {ratio:.2}× smaller ({source} bytes) |"
    );
    let _ = writeln!(s, "| digest | `{}` |", art.digest());
    let _ = writeln!(s, "| signed by | {} |", {
        let k = art.signers();
        if k.is_empty() {
            "nobody (unsigned)".to_string()
        } else {
            k.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    });
    let mut full_bytes = None;
    if let Some(b) = &m.base {
        let _ = writeln!(s, "| delta against | `{}` |", b.digest);
        if let Some(base) = base {
            // What the same tensors cost in the base artifact: the fine-tune packed on its
            // own with the base's codecs.
            let own: u64 = m
                .tensors
                .iter()
                .filter_map(|t| base.manifest().tensors.iter().find(|bt| bt.name == t.name))
                .map(|bt| bt.encoded_length)
                .sum();
            full_bytes = Some(own);
            let _ = writeln!(
                s,
                "| vs packed on its own | {:.1}% of {own} bytes |",
                100.0 * art.len() as f64 / own.max(1) as f64
            );
        }
    }
    let _ = writeln!(s, "\n| codec | tensors | weights | bytes | bits/weight |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for (codec, (n, w, b)) in &by_codec {
        let _ = writeln!(
            s,
            "| {codec} | {n} | {w} | {b} | {:.3} |",
            *b as f64 * 8.0 / (*w).max(1) as f64
        );
    }
    let facts = serde_json::json!({
        "file": name, "bytes": art.len(), "weights": weights, "bits_per_weight_file": bpw,
        "ratio_vs_source": ratio, "digest": art.digest(), "signers": art.signers(),
        "base": m.base.as_ref().map(|b| b.digest.clone()), "own_bytes": full_bytes,
    });
    (s, facts)
}

/// Runs the command.
pub fn run(a: Args) -> anyhow::Result<()> {
    let opened = a.source.open_model(None)?;
    let (md, facts) = markdown(&opened, &a.source.location);
    let wants_github = a.pr.is_some() || a.github_release.is_some();
    if !wants_github {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&facts)?);
        } else {
            print!("{md}");
        }
        return Ok(());
    }
    let cfg = GitHubConfig::from_env()?.context(
        "no GitHub credentials: set GITHUB_TOKEN (or GITHUB_APP_ID, GITHUB_APP_KEY and \
         GITHUB_INSTALLATION_ID)",
    )?;
    let release = match &a.github_release {
        Some(r) => {
            let (repo, tag) = r
                .rsplit_once('@')
                .filter(|(_, t)| !t.is_empty())
                .with_context(|| format!("--github-release {r:?}: owner/repo@tag"))?;
            Some((RepoName::parse(repo)?, tag.to_string()))
        }
        None => None,
    };
    let pr = match (&a.github, a.pr) {
        (Some(repo), Some(n)) => Some((RepoName::parse(repo)?, n)),
        _ => None,
    };
    if release.is_some() && !Path::new(&a.source.location).is_file() {
        anyhow::bail!(
            "--github-release uploads a local file; {} is not one",
            a.source.location
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let name = facts["file"]
        .as_str()
        .unwrap_or("artifact.tnpk")
        .to_string();
    let out = rt.block_on(async {
        let gh = GitHub::new(&cfg)?;
        let mut out = serde_json::json!({ "report": facts });
        if let Some((repo, tag)) = &release {
            let asset = gh
                .upload_release_asset(repo, tag, &name, Path::new(&a.source.location))
                .await?;
            eprintln!(
                "uploaded {name} to {repo}@{tag} as asset {} ({} bytes)",
                asset.id, asset.size
            );
            out["release_asset"] = serde_json::to_value(&asset)?;
        }
        if let Some((repo, n)) = &pr {
            let (id, action, url) = gh
                .sticky_comment(repo, *n, &format!("report:{name}"), &md)
                .await?;
            eprintln!("{action:?} the report comment on {repo}#{n}: {url}");
            out["comment"] = serde_json::json!({ "id": id, "action": action, "url": url });
        }
        anyhow::Ok(out)
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{md}");
    }
    Ok(())
}
