//! Shared helpers: the Hub stand-in, the registry as a real child process, a model.

#![allow(dead_code)]

#[path = "../../../tests/it/hub_standin.rs"]
pub mod hub;

pub mod cas;
pub mod services;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SECRET: &str = "test-webhook-secret";
pub const API_TOKEN: &str = "test-api-token";
pub const HUB_TOKEN: &str = "hf_test_token";
pub const REPO: &str = "acme/tiny-llama";
pub const COMPANION: &str = "acme/tiny-llama-tnpk";
pub const SHA: &str = "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c";

/// Writes the tiny Llama model the stand-in serves.
pub fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("model");
    tenpak::synthetic::write_llama(
        &dir,
        tenpak::dtype::DType::BF16,
        tenpak::synthetic::LlamaShape::TINY,
    )
    .expect("model");
    dir
}

/// A synthetic fine-tune of the model in `base`, written to `dir`, whose model card
/// names `card_base` as `base_model` (as fine-tunes on the Hub do).
pub fn finetune(base: &Path, dir: &Path, seed: u64, card_base: &str) -> PathBuf {
    tenpak::synthetic::write_finetune(base, dir, seed).expect("fine-tune");
    std::fs::write(
        dir.join("README.md"),
        format!("---\nlicense: apache-2.0\nbase_model: {card_base}\ntags:\n- text-generation\n---\n\n# A fine-tune\n"),
    )
    .expect("card");
    dir.to_path_buf()
}

/// A temporary directory with the tiny model, and the Hub stand-in serving it as
/// `REPO` at `SHA`.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub model: PathBuf,
    pub hub: hub::Running,
}

/// Starts a [`Fixture`]: writes accepted with `token`, weight downloads held while
/// `gate_open` is false, large files taken as `mode` says.
pub fn fixture(token: &str, gate_open: bool, mode: hub::Mode) -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = model_dir(tmp.path());
    let hub = hub::start_with(
        vec![hub::ModelRepo {
            repo: REPO.into(),
            sha: SHA.into(),
            dir: model.clone(),
        }],
        token,
        gate_open,
        mode,
    );
    Fixture { tmp, model, hub }
}

/// Waits until the stand-in has seen `n` weight downloads (the job is in `download`,
/// held at the gate when it is closed).
pub fn wait_downloads(hub: &hub::Running, n: usize) {
    let t0 = Instant::now();
    while hub
        .hub
        .weight_gets
        .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "download {n} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the tests run the registry on the engines of a scaled-out deployment:
/// `TENPAK_TEST_STORES=postgres+s3` (see [`stores_of`]).
pub fn scaled_stores() -> bool {
    std::env::var("TENPAK_TEST_STORES").as_deref() == Ok("postgres+s3")
}

/// The moto_server every registry of this test process shares in the scaled-out mode
/// (it ends with the process: it watches its parent).
fn shared_s3() -> &'static services::S3Server {
    static S3: std::sync::OnceLock<services::S3Server> = std::sync::OnceLock::new();
    S3.get_or_init(|| {
        services::S3Server::start()
            .expect("TENPAK_TEST_STORES=postgres+s3 needs moto_server (pip install 'moto[server]')")
    })
}

/// The name of the database and bucket prefix of `data_dir` in the scaled-out mode.
fn store_name(data_dir: &Path) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(data_dir.to_string_lossy().as_bytes()));
    format!("tenpak_p_{}", &h[..16])
}

/// Extra flags and environment for a registry process (or a `gc`/`retry` command) on
/// `data_dir`: none by default (SQLite and `chunks/` in the data dir); with
/// `TENPAK_TEST_STORES=postgres+s3`, a PostgreSQL database of the data dir's own on the
/// machine's server (made on first use, so a restarted registry finds its jobs) and a
/// prefix of its own in one moto_server bucket. The same tests then run on the engines
/// of a scaled-out registry (`scripts/test.sh` runs the registry's tests both ways
/// under CI; the databases are named `tenpak_p_*` and dropped after).
pub fn stores_of(data_dir: &Path) -> (Vec<String>, Vec<(&'static str, String)>) {
    if !scaled_stores() {
        return (vec![], vec![]);
    }
    let name = store_name(data_dir);
    let server = services::pg_server();
    let mut c = postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
        .expect("TENPAK_TEST_STORES=postgres+s3 needs PostgreSQL");
    let exists = c
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .expect("pg_database")
        .is_some();
    if !exists {
        let _ = c.batch_execute(&format!("CREATE DATABASE {name}"));
    }
    let s3 = shared_s3();
    (
        vec![
            "--database".into(),
            format!("{server}/{name}"),
            "--chunks".into(),
            s3.chunks(&name),
        ],
        s3.env(),
    )
}

/// Bytes in the chunk store of the registry on `data_dir` (its `chunks/` pieces, or its
/// prefix of the bucket in the scaled-out mode; temporary files not counted).
pub fn chunk_store_bytes(data_dir: &Path) -> u64 {
    if scaled_stores() {
        shared_s3()
            .objects(&store_name(data_dir))
            .iter()
            .map(|o| o.1)
            .sum()
    } else {
        std::fs::read_dir(data_dir.join("chunks")).map_or(0, |rd| {
            rd.flatten()
                .filter(|e| e.file_name() != "tmp")
                .map(|e| dir_bytes(&e.path()))
                .sum()
        })
    }
}

/// Puts an unreferenced piece (what a job that failed after storing leaves) into the
/// chunk store of the registry on `data_dir`; returns a probe of whether it is still
/// there.
pub fn plant_orphan(data_dir: &Path) -> Box<dyn Fn() -> bool> {
    let name = format!("ab/{}", "c".repeat(62));
    if scaled_stores() {
        let s3 = shared_s3();
        let url = format!(
            "{}/{}/{}/{name}",
            s3.endpoint,
            s3.bucket,
            store_name(data_dir)
        );
        let r = reqwest::blocking::Client::new()
            .put(&url)
            .body("left by a job that failed after storing")
            .send()
            .expect("put orphan");
        assert!(r.status().is_success(), "put orphan: {}", r.status());
        Box::new(move || {
            reqwest::blocking::Client::new()
                .head(&url)
                .send()
                .is_ok_and(|r| r.status().is_success())
        })
    } else {
        let orphan = data_dir.join("chunks").join(name);
        std::fs::create_dir_all(orphan.parent().expect("dir")).expect("dir");
        std::fs::write(&orphan, b"left by a job that failed after storing").expect("orphan");
        Box::new(move || orphan.exists())
    }
}

/// A registry child process.
pub struct Registry {
    pub url: String,
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Registry {
    /// Starts `tenpak-registry serve` on a free port against the Hub at `hub_url`.
    pub fn start(data_dir: &Path, hub_url: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_args(data_dir, hub_url, extra_env, &[])
    }

    /// [`Registry::start`] with a config file holding `toml` (written beside the data dir).
    pub fn start_with_config(
        data_dir: &Path,
        hub_url: &str,
        extra_env: &[(&str, &str)],
        toml: &str,
    ) -> Self {
        let cfg = data_dir.with_extension("toml");
        std::fs::write(&cfg, toml).expect("config");
        Self::start_args(
            data_dir,
            hub_url,
            extra_env,
            &["--config", cfg.to_str().expect("utf-8 path")],
        )
    }

    /// [`Registry::start`] with more `serve` arguments.
    pub fn start_args(
        data_dir: &Path,
        hub_url: &str,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        Self::try_start(data_dir, hub_url, extra_env, args)
            .unwrap_or_else(|log| panic!("registry did not start listening:\n{log}"))
    }

    /// Starts the registry, or returns what it printed when it exits without listening.
    pub fn try_start(
        data_dir: &Path,
        hub_url: &str,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Self, String> {
        Self::try_spawn(
            &["serve", "--listen", "127.0.0.1:0"],
            data_dir,
            hub_url,
            extra_env,
            args,
        )
    }

    /// Starts `tenpak-registry work` (workers only, no API: `url` is empty).
    pub fn start_worker(
        data_dir: &Path,
        hub_url: &str,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        Self::try_spawn(&["work"], data_dir, hub_url, extra_env, args)
            .unwrap_or_else(|log| panic!("worker did not start:\n{log}"))
    }

    fn try_spawn(
        sub: &[&str],
        data_dir: &Path,
        hub_url: &str,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Self, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenpak-registry"));
        // A test that names its stores itself (the scale-out tests) keeps them.
        let (store_args, store_env) = if args.contains(&"--database")
            || extra_env.iter().any(|(k, _)| *k == "TENPAK_DATABASE_URL")
        {
            (vec![], vec![])
        } else {
            stores_of(data_dir)
        };
        cmd.envs(store_env);
        cmd.args(sub)
            .arg("--data-dir")
            .arg(data_dir)
            .args(store_args)
            .args(args)
            .env("HF_ENDPOINT", hub_url)
            .env("HF_TOKEN", HUB_TOKEN)
            .env("TENPAK_WEBHOOK_SECRET", SECRET)
            .env("TENPAK_API_TOKEN", API_TOKEN)
            .env_remove("TENPAK_TARGETS")
            .env_remove("HF_HUB_CACHE")
            .env("HF_HOME", data_dir.join("hf-home"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tenpak-registry");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[registry] {line}");
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(url);
                } else if line.contains(" working: ") {
                    let _ = tx.send(String::new());
                }
                log2.lock().expect("log").push(line);
            }
        });
        let t0 = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(url) => return Ok(Self { url, child, log }),
                Err(_) if t0.elapsed() > Duration::from_secs(30) => {
                    let _ = child.kill();
                    return Err("no address in 30 s".into());
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        // Let the reader thread take the last lines.
                        std::thread::sleep(Duration::from_millis(200));
                        let text = log.lock().expect("log").join("\n");
                        return Err(format!("exited with {status}:\n{text}"));
                    }
                }
            }
        }
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let t0 = Instant::now();
        while !self
            .log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(t0.elapsed() < timeout, "no log line with {needle:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL: no cleanup of any kind).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        client()
            .get(format!("{}{path}", self.url))
            .send()
            .expect("GET")
    }

    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().expect("json")
    }

    /// Posts a webhook body with `secret` (None: no header).
    pub fn webhook(&self, body: &str, secret: Option<&str>) -> reqwest::blocking::Response {
        let mut req = client()
            .post(format!("{}/webhooks/hub", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(s) = secret {
            req = req.header("X-Webhook-Secret", s);
        }
        req.send().expect("POST webhook")
    }

    /// Delivers the `main` update of `REPO` at `SHA` with the right secret; returns the
    /// job id the registry answered with.
    pub fn deliver(&self) -> i64 {
        let v: Value = self
            .webhook(&content_update(REPO, SHA), Some(SECRET))
            .json()
            .expect("json");
        v["job_id"].as_i64().expect("job id")
    }

    /// Polls `/status/{id}` until the job is done or failed (a 503, the job store
    /// briefly unreachable, is asked again as a client would after `Retry-After`).
    pub fn wait_job(&self, id: i64, timeout: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let r = self.get(&format!("/status/{id}"));
            if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && t0.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            assert!(r.status().is_success(), "GET /status/{id}: {}", r.status());
            let v: Value = r.json().expect("json");
            match v["state"].as_str() {
                Some("done") | Some("failed") => return v,
                _ if t0.elapsed() > timeout => panic!("job {id} not finished: {v}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Bytes of the files under `dir` (0 when it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

/// Prints one row of the fault table (`bench/faults.sh` collects the rows from the
/// tests' output into `bench/results/faults.md`): the fault, the stage it hit, the
/// outcome (final state, attempts, commits on the Hub, bytes left in the work area) and
/// the time from the fault to that outcome.
pub fn fault_row(
    fault: &str,
    stage: &str,
    job: &Value,
    commits: usize,
    data: &Path,
    took: Duration,
) {
    eprintln!(
        "FAULT | {fault} | {stage} | {} after {} attempt(s); {commits} Hub commit(s); {} bytes left in work/, {} in hub-cache/ | {:.1} s |",
        job["state"].as_str().unwrap_or("?"),
        job["attempts"],
        dir_bytes(&data.join("work")),
        dir_bytes(&data.join("hub-cache")),
        took.as_secs_f64()
    );
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A `repo.content` update on `main` of `repo` at `sha`, as the Hub sends it.
pub fn content_update(repo: &str, sha: &str) -> String {
    serde_json::json!({
        "event": { "action": "update", "scope": "repo.content" },
        "repo": {
            "type": "model", "name": repo, "id": "6512aa01c2d3e4f5a6b7c8d9", "private": false,
            "url": { "web": format!("https://huggingface.co/{repo}"), "api": format!("https://huggingface.co/api/models/{repo}") },
            "owner": { "id": "6512aa00c2d3e4f5a6b7c8d0" }, "headSha": sha
        },
        "updatedRefs": [{ "ref": "refs/heads/main", "oldSha": "8f0e4b1c2d3a4f5e6d7c8b9a0f1e2d3c4b5a6978", "newSha": sha }],
        "webhook": { "id": "6390e855e30d9209411de93b", "version": 3 }
    })
    .to_string()
}

/// Words of the evaluation text and of the tokenizer written for the models (a
/// WordLevel tokenizer splitting on spaces, so the perplexity column is measured).
pub const WORDS: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "that", "it", "was", "her", "she", "not", "be", "had",
    "his", "as", "with", "for", "he", "but", "you", "all", "have", "so", "at", "by", "i", "which",
    "no", "they", "on", "my", "very", "said", "is", "could", "would", "been", "from", "mr",
];

pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert((*w).into(), serde_json::json!(i));
    }
    vocab.insert("[UNK]".into(), serde_json::json!(WORDS.len()));
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": false},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

pub fn eval_text(dir: &Path) -> PathBuf {
    let mut s = String::new();
    let mut x: u64 = 7;
    for _ in 0..4000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(WORDS[((x >> 33) % WORDS.len() as u64) as usize]);
        s.push(' ');
    }
    let p = dir.join("eval.txt");
    std::fs::write(&p, s).expect("text");
    p
}
