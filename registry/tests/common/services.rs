//! The real engines a scaled-out registry runs on, started for tests:
//! - [`TempDb`]: a database of its own on the machine's PostgreSQL (127.0.0.1:5432, or
//!   `TENPAK_TEST_POSTGRES`), dropped afterwards;
//! - [`PrivatePg`]: a PostgreSQL server of the test's own (Debian's `initdb`/`pg_ctl`), so
//!   that a test may restart it without disturbing others;
//! - [`S3Server`]: `moto_server` (PyPI `moto[server]`), which speaks Amazon S3's REST API
//!   (signatures, conditional puts, listings, ranges): it stands for S3 or any
//!   S3-compatible store (MinIO, R2, Ceph RGW).
//!
//! Each returns `None` with a `[skip]` line when its service cannot be had, except under
//! CI=true, where that fails the test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips (None) outside CI, fails under CI=true.
fn unavailable<T>(what: &str, why: impl std::fmt::Display) -> Option<T> {
    assert!(!ci(), "{what} unavailable and CI=true: {why}");
    eprintln!("[skip] {what} unavailable ({why}): this test is skipped");
    None
}

/// The machine's PostgreSQL server URL (without a database).
pub fn pg_server() -> String {
    std::env::var("TENPAK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database on a PostgreSQL server, dropped when the guard goes.
pub struct TempDb {
    pub name: String,
    server: String,
    pub url: String,
}

impl TempDb {
    /// A database on the machine's server.
    pub fn new(tag: &str) -> Option<Self> {
        Self::on(&pg_server(), tag)
    }

    /// A database on `server` (`postgres://user@host:port`).
    pub fn on(server: &str, tag: &str) -> Option<Self> {
        let admin = format!("{server}/postgres");
        let mut c = match postgres::Client::connect(&admin, postgres::NoTls) {
            Ok(c) => c,
            Err(e) => return unavailable(&format!("PostgreSQL at {admin}"), e),
        };
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "tenpak_test_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        Some(Self {
            url: format!("{server}/{name}"),
            server: server.to_string(),
            name,
        })
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Ok(mut c) =
            postgres::Client::connect(&format!("{}/postgres", self.server), postgres::NoTls)
        {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for a child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_port(port: u16, child: &mut Child, what: &str) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(st)) = child.try_wait() {
            eprintln!("{what} exited with {st}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `moto_server` on a free port with a bucket made; killed when the guard goes (and it
/// exits by itself when the test process dies: it watches its parent).
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    pub fn start() -> Option<Self> {
        let port = free_port();
        // moto's server main, plus a thread that ends it when its parent (this test) is
        // gone, so that no server outlives a test killed midway.
        let script = format!(
            "import os, sys, threading, time\n\
             ppid = os.getppid()\n\
             def watch():\n\
             \x20   while os.getppid() == ppid: time.sleep(0.5)\n\
             \x20   os._exit(0)\n\
             threading.Thread(target=watch, daemon=True).start()\n\
             from moto.server import main\n\
             main(['-H', '127.0.0.1', '-p', '{port}'])\n"
        );
        let mut child = match Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return unavailable("python3 for moto_server", e),
        };
        if !wait_port(port, &mut child, "moto_server") {
            let _ = child.kill();
            return unavailable(
                "moto_server (pip install 'moto[server]')",
                "it did not start",
            );
        }
        let endpoint = format!("http://127.0.0.1:{port}");
        let bucket = "tenpak-chunks".to_string();
        // CreateBucket: `PUT /{bucket}` (moto takes any credentials).
        let r = reqwest::blocking::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        Some(Self {
            child,
            endpoint,
            bucket,
        })
    }

    /// The environment a registry process needs to reach it (the AWS SDKs' variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// A chunk store on `prefix` in the bucket, its requests run on `rt` (configured
    /// here rather than through the process environment, which tests share).
    pub fn chunk_store(
        &self,
        prefix: &str,
        rt: &tokio::runtime::Runtime,
    ) -> tenpak_registry::chunks::ChunkStore {
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_region("us-east-1")
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .build()
            .expect("s3 client");
        tenpak_registry::chunks::ChunkStore::on_object_store(
            std::sync::Arc::new(s3),
            prefix,
            &self.chunks(prefix),
            rt.handle().clone(),
        )
    }

    /// The `--chunks` URL of a prefix in the bucket.
    pub fn chunks(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Keys stored under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.objects(prefix).into_iter().map(|o| o.0).collect()
    }

    /// (key, size) of the objects under `prefix` (ListObjectsV2, following continuation
    /// tokens).
    pub fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/{}?list-type=2&prefix={prefix}",
                self.endpoint, self.bucket
            );
            if let Some(t) = &token {
                url.push_str(&format!("&continuation-token={}", urlencode(t)));
            }
            let body = reqwest::blocking::get(url)
                .expect("list")
                .text()
                .expect("text");
            let field = |xml: &str, tag: &str| -> Option<String> {
                let open = format!("<{tag}>");
                let i = xml.find(&open)? + open.len();
                let j = xml[i..].find(&format!("</{tag}>"))?;
                Some(xml[i..i + j].to_string())
            };
            for item in body.split("<Contents>").skip(1) {
                let key = field(item, "Key").expect("Key");
                let size = field(item, "Size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                out.push((key, size));
            }
            token = body
                .split("<NextContinuationToken>")
                .nth(1)
                .and_then(|r| r.split("</NextContinuationToken>").next())
                .map(str::to_string);
            if token.is_none() {
                return out;
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL server of this test's own, in a temporary directory (run as the
/// `postgres` user when the test runs as root, as PostgreSQL refuses root).
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    pub fn start() -> Option<Self> {
        let bin = match std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|rd| {
                rd.flatten()
                    .map(|e| e.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .max()
            }) {
            Some(b) => b,
            None => return unavailable("PostgreSQL's initdb", "no /usr/lib/postgresql/*/bin"),
        };
        let dir = tempfile::tempdir().expect("tmp");
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let pg = Self {
            dir,
            bin,
            port: free_port(),
        };
        let data = pg.dir.path().join("data");
        if !pg
            .as_postgres(
                "initdb",
                &[
                    "-D",
                    data.to_str().expect("path"),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                ],
            )
            .success()
        {
            return unavailable("a private PostgreSQL", "initdb failed");
        }
        if !pg.ctl("start").success() {
            return unavailable("a private PostgreSQL", "pg_ctl start failed");
        }
        Some(pg)
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) -> std::process::ExitStatus {
        let exe = self.bin.join(tool);
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let mut cmd = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run a PostgreSQL tool")
    }

    fn ctl(&self, what: &str) -> std::process::ExitStatus {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("path"),
                "-l",
                log.to_str().expect("path"),
                "-o",
                &opts,
                "-w",
                "-m",
                "immediate",
                what,
            ],
        )
    }

    /// The server URL (no database).
    pub fn server(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the server at once (`-m immediate`: as a crash would, no clean shutdown).
    pub fn stop(&self) {
        assert!(self.ctl("stop").success(), "pg_ctl stop");
    }

    /// Starts it again.
    pub fn start_again(&self) {
        assert!(self.ctl("start").success(), "pg_ctl start");
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.ctl("stop");
    }
}
