//! Shared helpers: fixture location, running the CLI, small synthetic HF models.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tenpak::dtype::DType;

/// The fixture directory (`$TENPAK_FIXTURES` or `~/.cache/tenpak-fixtures`) if
/// `scripts/fixtures.sh` has filled it. Under `CI=true` a missing fixture is a failure, not
/// a skip.
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("TENPAK_FIXTURES")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tenpak-fixtures"))
        })?;
    let missing: Vec<&str> = [
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "models/gemma-3-270m-q4_k_m.gguf",
        "text/emma.txt",
        "text/brown.txt",
    ]
    .into_iter()
    .filter(|f| !dir.join(f).exists())
    .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "fixtures missing in {} under CI ({}): run scripts/fixtures.sh",
            dir.display(),
            missing.join(", ")
        );
    }
    eprintln!(
        "skipping: fixtures not found in {} (run scripts/fixtures.sh)",
        dir.display()
    );
    None
}

/// The repository's `tests/data`.
pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// Runs the `tenpak` binary.
pub fn tenpak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenpak"))
        .args(args)
        .output()
        .expect("run tenpak")
}

/// Runs `tenpak` and asserts success, returning stdout.
pub fn tenpak_ok(args: &[&str]) -> String {
    let out = tenpak(args);
    assert!(
        out.status.success(),
        "tenpak {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

/// Deterministic pseudo-random values, roughly N(0, scale²).
pub fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    tenpak::synthetic::randn(n, seed, scale)
}

/// Writes a tiny Llama-shaped HF model (2 layers) and returns the tensor names.
pub fn tiny_llama(dir: &Path, dtype: DType) -> Vec<String> {
    tenpak::synthetic::write_llama(dir, dtype, tenpak::synthetic::LlamaShape::TINY)
        .expect("tiny llama")
}

/// An in-process range server (the stand-in for any static host or CDN serving the
/// artifact) on a free loopback port; returns its URL and served-bytes counter.
pub fn serve(path: &Path) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let art = tenpak::artifact::Artifact::open_location(&path.to_string_lossy()).expect("open");
    let served = tenpak::serve::ServedFile::new(
        path.to_path_buf(),
        art.digest().trim_start_matches("sha256:"),
    )
    .expect("serve");
    let counter = served.counter();
    let (tx, rx) = std::sync::mpsc::channel::<std::net::SocketAddr>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("rt");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send");
            let _ = tenpak::serve::run(l, tenpak::serve::file_router(served)).await;
        });
    });
    let addr = rx.recv().expect("addr");
    (format!("http://{addr}/m.tnpk"), counter)
}
