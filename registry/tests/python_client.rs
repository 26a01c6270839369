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
    let (start, end) = (1000usize, 70_000usize);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hf_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args([COMPANION, "tiny-llama-balanced.tnpk"])
        .arg(tmp.path().join("py-cache"))
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
    assert_eq!(r["sha256"], hex::encode(Sha256::digest(&published)));
    assert_eq!(r["range_status"], 206);
    assert_eq!(
        r["range_sha256"],
        hex::encode(Sha256::digest(&published[start..=end]))
    );
    let info = reg.get_json(&format!("/api/models/{COMPANION}"));
    assert_eq!(r["commit"], info["sha"]);
    assert_eq!(r["meta_size"], published.len());
}
