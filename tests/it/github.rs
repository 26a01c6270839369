//! `tenpak report` and the GitHub client against the GitHub stand-in
//! (`github_standin.rs`: GitHub's REST shapes for issues, comments, releases, uploads and
//! App installation tokens).

use std::process::Command;
use std::sync::atomic::Ordering;

use serde_json::Value;
use tenpak::github::{GitHub, GitHubAuth, GitHubConfig, RepoName};

use crate::github_standin as gh;
use crate::util::*;

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `tenpak report` with the stand-in as GitHub.
fn report(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tenpak"))
        .arg("report")
        .args(args)
        .env("GITHUB_TOKEN", token)
        .env("GITHUB_API_URL", url)
        .env("GITHUB_UPLOADS_URL", url)
        .env_remove("GITHUB_APP_ID")
        .output()
        .expect("run tenpak")
}

#[test]
fn the_pr_comment_is_updated_in_place_and_the_release_asset_is_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("model");
    tiny_llama(&src, tenpak::dtype::DType::BF16);
    let tnpk = tmp.path().join("tiny.tnpk");
    tenpak_ok(&["pack", s(&src), "-o", s(&tnpk), "--target", "balanced"]);
    let srv = gh::start("ghp_ci_token");
    srv.gh.add_pull("acme/models", 42, "Pack the tiny model");
    srv.gh.add_release("acme/models", "v1.0");
    // A secondary rate limit first: waited out (retry-after), then the comment is made.
    srv.gh.rate_limited.store(1, Ordering::SeqCst);
    let out = report(
        &srv.url,
        "ghp_ci_token",
        &[s(&tnpk), "--github", "acme/models", "--pr", "42", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["comment"]["action"], "created", "{v}");
    assert_eq!(srv.gh.limited.load(Ordering::SeqCst), 1);
    let pr = &srv.gh.issues("acme/models")[0];
    assert_eq!(pr.comments.len(), 1);
    let first = pr.comments[0].1.clone();
    assert!(
        first.starts_with("<!-- tenpak:report:tiny.tnpk -->"),
        "{first}"
    );
    let info: Value =
        serde_json::from_str(&tenpak_ok(&["info", s(&tnpk), "--json"])).expect("info");
    assert!(
        first.contains(info["digest"].as_str().expect("digest")),
        "{first}"
    );
    assert!(
        first.contains(&format!("| size | {} bytes |", info["file_bytes"])),
        "{first}"
    );
    // The same artifact again: nothing to change.
    let out = report(
        &srv.url,
        "ghp_ci_token",
        &[s(&tnpk), "--github", "acme/models", "--pr", "42", "--json"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["comment"]["action"], "unchanged", "{v}");
    // Packed again with another target under the same name: the one comment is edited.
    tenpak_ok(&["pack", s(&src), "-o", s(&tnpk), "--target", "size"]);
    let out = report(
        &srv.url,
        "ghp_ci_token",
        &[s(&tnpk), "--github", "acme/models", "--pr", "42", "--json"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["comment"]["action"], "updated", "{v}");
    let pr = &srv.gh.issues("acme/models")[0];
    assert_eq!(pr.comments.len(), 1, "still one comment");
    assert_ne!(pr.comments[0].1, first);

    // The release asset, byte for byte; a second upload replaces it.
    for _ in 0..2 {
        let out = report(
            &srv.url,
            "ghp_ci_token",
            &[s(&tnpk), "--github-release", "acme/models@v1.0", "--json"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rel = &srv.gh.releases("acme/models")[0];
    assert_eq!(rel.assets.len(), 1);
    assert_eq!(rel.assets[0].1, "tiny.tnpk");
    assert_eq!(rel.assets[0].2, std::fs::read(&tnpk).expect("file"));

    // Wrong token, unknown PR, unknown release: clear errors, nothing written.
    let out = report(
        &srv.url,
        "wrong",
        &[s(&tnpk), "--github", "acme/models", "--pr", "42"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = report(
        &srv.url,
        "ghp_ci_token",
        &[s(&tnpk), "--github", "acme/models", "--pr", "7"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = report(
        &srv.url,
        "ghp_ci_token",
        &[s(&tnpk), "--github-release", "acme/models@v9"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = report(
        &srv.url,
        "ghp_ci_token",
        &[s(&tnpk), "--github-release", "acme-models"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner/repo@tag"));
    let out = report(
        &srv.url,
        "",
        &[s(&tnpk), "--github", "acme/models", "--pr", "42"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no GitHub credentials"));
    assert_eq!(srv.gh.issues("acme/models")[0].comments.len(), 1);
    // Without GitHub flags the report is printed.
    let md = tenpak_ok(&["report", s(&tnpk)]);
    assert!(
        md.contains("### TenPak report: `tiny.tnpk`") && md.contains("| codec |"),
        "{md}"
    );
}

#[test]
fn a_github_app_signs_in_with_its_jwt_and_writes_with_its_installation_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let key = tmp.path().join("app.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            s(&key),
        ])
        .status()
        .map(|st| st.success())
        .unwrap_or(false);
    if !ok {
        assert!(std::env::var("CI").is_err(), "CI has openssl");
        eprintln!("SKIPPED: no openssl to make an RSA key");
        return;
    }
    let srv = gh::start("a-token-nobody-has");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let posted = rt
        .block_on(async {
            let client = GitHub::new(&GitHubConfig {
                auth: GitHubAuth::App {
                    app_id: 12345,
                    key_pem: std::fs::read_to_string(&key).expect("key"),
                    installation_id: 678,
                },
                api_url: Some(srv.url.clone()),
                uploads_url: Some(srv.url.clone()),
                max_wait: std::time::Duration::from_secs(5),
            })?;
            let repo = RepoName::parse("acme/models")?;
            let a = client
                .model_report(&repo, "acme/llama", "abc", "first")
                .await?;
            let b = client
                .model_report(&repo, "acme/llama", "abc", "first")
                .await?;
            let c = client
                .model_report(&repo, "acme/llama", "def", "second")
                .await?;
            Ok::<_, tenpak::github::GitHubError>((a, b, c))
        })
        .expect("reports");
    assert!(posted.0.issue_created && !posted.1.issue_created && !posted.2.issue_created);
    assert_eq!(posted.1.action, tenpak::github::Action::Unchanged);
    assert_eq!(posted.0.issue, posted.2.issue);
    let issues = srv.gh.issues("acme/models");
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].comments.len(), 2);
    assert!(
        !srv.gh.jwts.lock().expect("lock").is_empty(),
        "the App's JWT was used"
    );
    assert_eq!(srv.gh.unauthorized.load(Ordering::SeqCst), 0);
}
