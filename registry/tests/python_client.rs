//! The real Python Hub client (`huggingface_hub`) against the registry's Hub-compatible
//! read API: `hf_hub_download` with `HF_ENDPOINT` set to the registry, and a ranged
//! read through the client's own HTTP session; both byte-identical to what was
//! published. CI installs huggingface_hub; elsewhere the test is skipped (with a note)
//! when the module is missing.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn python_has_hub() -> bool {
    Command::new("python3")
        .args(["-c", "import huggingface_hub"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn hf_hub_download_fetches_registry_artifacts() {
    if !python_has_hub() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install huggingface_hub (pip install huggingface_hub)"
        );
        eprintln!("skipped: python3 with huggingface_hub not found");
        return;
    }
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
    let job = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    let published = hub.hub.commits()[0].files["tiny-llama-balanced.tnpk"].clone();
    python_fetch(
        &reg,
        COMPANION,
        "tiny-llama-balanced.tnpk",
        &published,
        &tmp.path().join("py-cache"),
    );
}

/// A fine-tune's delta and its base, each fetched by `hf_hub_download` from the
/// companions the registry published, make the fine-tune again.
#[test]
fn hf_hub_download_fetches_a_delta_and_its_base() {
    if !python_has_hub() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install huggingface_hub"
        );
        eprintln!("skipped: python3 with huggingface_hub not found");
        return;
    }
    let Fixture { tmp, hub, model } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let ft = finetune(&model, &tmp.path().join("ft"), 1, REPO);
    let ft_repo = "acme/tiny-llama-ft";
    hub.hub.add_model(hub::ModelRepo {
        repo: ft_repo.into(),
        sha: "1111111111111111111111111111111111111111".into(),
        dir: ft,
    });
    let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
    let v: Value = reg
        .webhook(
            &content_update(ft_repo, "1111111111111111111111111111111111111111"),
            Some(SECRET),
        )
        .json()
        .expect("json");
    let job = reg.wait_job(v["job_id"].as_i64().expect("job"), Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["kind"], "delta", "{job}");
    let file = |repo: &str, name: &str| {
        hub.hub
            .commits()
            .into_iter()
            .find(|c| c.repo == repo)
            .expect("published")
            .files[name]
            .clone()
    };
    let base = file(COMPANION, "tiny-llama-balanced.tnpk");
    let delta = file("acme/tiny-llama-ft-tnpk", "tiny-llama-ft-balanced.tnpk");
    let cache = tmp.path().join("py-cache");
    let b = python_fetch(&reg, COMPANION, "tiny-llama-balanced.tnpk", &base, &cache);
    let d = python_fetch(
        &reg,
        "acme/tiny-llama-ft-tnpk",
        "tiny-llama-ft-balanced.tnpk",
        &delta,
        &cache,
    );
    // The files the client saved open as the fine-tune.
    let s = tenpak::delta::DeltaSource::open(
        d["path"].as_str().expect("path"),
        b["path"].as_str().expect("path"),
    )
    .expect("delta with its base");
    s.verify_chunks(&|_| {}).expect("chunks");
    assert!(!s
        .tensor("model.layers.1.mlp.up_proj.weight")
        .expect("tensor")
        .is_empty());
}

/// Runs `hf_client.py` for `repo`/`file` against the registry and checks what it got
/// against `published`; returns the script's report.
fn python_fetch(
    reg: &Registry,
    repo: &str,
    file: &str,
    published: &[u8],
    cache: &std::path::Path,
) -> Value {
    let (start, end) = (1000usize, 20_000usize.min(published.len() - 1));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hf_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args([repo, file])
        .arg(cache)
        .args([start.to_string(), end.to_string()])
        .env("HF_ENDPOINT", &reg.url)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "hf_client.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("json from the script");
    eprintln!("huggingface_hub {}: {r}", r["version"]);
    assert_eq!(r["size"], published.len());
    assert_eq!(r["sha256"], hex::encode(Sha256::digest(published)));
    assert_eq!(r["range_status"], 206);
    assert_eq!(
        r["range_sha256"],
        hex::encode(Sha256::digest(&published[start..=end]))
    );
    let info = reg.get_json(&format!("/api/models/{repo}"));
    assert_eq!(r["commit"], info["sha"]);
    assert_eq!(r["meta_size"], published.len());
    r
}
