//! `tenpak pack org/model@rev` and `tenpak push` against the Hub stand-in.

use std::process::Command;

use crate::hub_standin::{self, ModelRepo};
use crate::util::tiny_llama;
use tenpak::artifact::Artifact;
use tenpak::dtype::DType;

const SHA: &str = "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c";

fn tenpak_env(
    hub: &str,
    token: Option<&str>,
    cache: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tenpak"));
    c.args(args)
        .env("HF_ENDPOINT", hub)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("home"))
        .env_remove("HF_TOKEN");
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c.output().expect("run tenpak")
}

#[test]
fn pack_from_hub_at_a_revision_then_push() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = tmp.path().join("model");
    tiny_llama(&model, DType::BF16);
    let hub = hub_standin::start(
        vec![ModelRepo {
            repo: "acme/tiny-llama".into(),
            sha: SHA.into(),
            dir: model.clone(),
        }],
        "hf_write",
        true,
    );
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("tiny.tnpk");
    let o = tenpak_env(
        &hub.url,
        None,
        &cache,
        &[
            "pack",
            "acme/tiny-llama@main",
            "-o",
            out.to_str().expect("utf8"),
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Downloaded into the usual cache layout, at the exact commit.
    let snap = cache.join("models--acme--tiny-llama/snapshots").join(SHA);
    assert!(snap.join("config.json").exists());
    assert!(snap.join("model.safetensors").exists());
    let a = Artifact::open_location(out.to_str().expect("utf8")).expect("artifact");
    assert_eq!(
        a.manifest().metadata["source"],
        format!("acme/tiny-llama@{SHA}")
    );
    let local = tmp.path().join("local.tnpk");
    crate::util::tenpak_ok(&[
        "pack",
        model.to_str().expect("utf8"),
        "-o",
        local.to_str().expect("utf8"),
    ]);
    let b = Artifact::open_location(local.to_str().expect("utf8")).expect("artifact");
    for t in &a.manifest().tensors {
        assert_eq!(
            a.load_tensor(&t.name).expect("hub"),
            b.load_tensor(&t.name).expect("local"),
            "{}",
            t.name
        );
    }

    // Unknown repo and unknown revision: clear errors.
    let o = tenpak_env(
        &hub.url,
        None,
        &cache,
        &["pack", "acme/nope", "-o", "x.tnpk"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("acme/nope"), "{err}");
    let o = tenpak_env(
        &hub.url,
        None,
        &cache,
        &["pack", "not/a/model/path", "-o", "x.tnpk"],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));

    // Push: without a token the Hub refuses; with one, one commit with the file.
    let o = tenpak_env(
        &hub.url,
        None,
        &cache,
        &["push", out.to_str().expect("utf8"), "acme/tiny-llama-tnpk"],
    );
    assert!(!o.status.success());
    assert!(hub.hub.commits().is_empty());
    let o = tenpak_env(
        &hub.url,
        Some("hf_write"),
        &cache,
        &[
            "push",
            out.to_str().expect("utf8"),
            "acme/tiny-llama-tnpk",
            "--path-in-repo",
            "tiny-balanced.tnpk",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let commits = hub.hub.commits();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].repo, "acme/tiny-llama-tnpk");
    assert_eq!(
        commits[0].files["tiny-balanced.tnpk"],
        std::fs::read(&out).expect("artifact bytes")
    );
    // A corrupt artifact is refused before anything is sent.
    let mut bytes = std::fs::read(&out).expect("read");
    let n = bytes.len();
    bytes[n - 5000] ^= 0xff;
    let bad = tmp.path().join("bad.tnpk");
    std::fs::write(&bad, bytes).expect("write");
    let o = tenpak_env(
        &hub.url,
        Some("hf_write"),
        &cache,
        &["push", bad.to_str().expect("utf8"), "acme/tiny-llama-tnpk"],
    );
    assert!(!o.status.success());
    assert_eq!(hub.hub.commits().len(), 1);
}
