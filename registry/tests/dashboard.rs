//! The dashboard in a real browser (Debian's headless Chromium driven through
//! ChromeDriver by `fantoccini`), its pages without a browser, the weight of a big model
//! page, and the GitHub reports (against `tests/it/github_standin.rs`, GitHub's REST
//! shapes). The Hub is the local stand-in; the models are tiny synthetic Llamas.

mod common;

#[path = "../../tests/it/github_standin.rs"]
mod github;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tenpak::artifact::source::MemorySource;
use tenpak::artifact::Artifact;

const FT: &str = "acme/tiny-llama-ft";
const FT_SHA: &str = "1111111111111111111111111111111111111111";

/// The Hub stand-in with the base model (REPO at SHA) and a fine-tune of it (FT).
fn models(tmp: &Path) -> hub::Running {
    let base = model_dir(tmp);
    std::fs::write(base.join("tokenizer.json"), tokenizer_json()).expect("tokenizer");
    let ft = finetune(&base, &tmp.join("ft"), 5, REPO);
    hub::start_with(
        vec![
            hub::ModelRepo {
                repo: REPO.into(),
                sha: SHA.into(),
                dir: base,
            },
            hub::ModelRepo {
                repo: FT.into(),
                sha: FT_SHA.into(),
                dir: ft,
            },
        ],
        HUB_TOKEN,
        true,
        hub::Mode::Regular,
    )
}

/// ChromeDriver on a free port, driving Debian's Chromium; `None` where they are not
/// installed (`.ci/run` installs them: there a missing browser fails the test).
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Option<Driver> {
    let exe = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(exe) = exe else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the browser tests: install chromium and chromium-driver"
        );
        eprintln!("SKIPPED: no chromedriver (apt-get install chromium chromium-driver)");
        return None;
    };
    let port = services::free_port();
    let child = Command::new(exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while client().get(format!("{url}/status")).send().is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Driver { child, url })
}

async fn browser(driver: &str) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-quic",
                     "--hide-scrollbars", "--window-size=1280,1000"]
        }
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a WebDriver session")
}

/// Where screenshots go: `docs/screenshots/` with `TENPAK_UPDATE_SCREENSHOTS=1`, else a
/// folder under the target dir (looked at, not committed).
fn shots_dir() -> PathBuf {
    let d = if std::env::var("TENPAK_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    std::fs::create_dir_all(&d).expect("screenshots dir");
    d
}

async fn shot(c: &Client, name: &str, w: u32, h: u32) {
    c.set_window_size(w, h).await.expect("window size");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(shots_dir().join(name), png).expect("write screenshot");
}

/// Submits the compress form for `model` (targets as given) and follows the job's row in
/// the job list until the page (refreshed by its script, not reloaded) shows it done.
async fn compress_in_browser(c: &Client, base: &str, model: &str, targets: &[&str]) -> i64 {
    c.goto(&format!("{base}/ui/compress"))
        .await
        .expect("compress page");
    c.find(Locator::Css("input[name=model_id]"))
        .await
        .expect("model field")
        .send_keys(model)
        .await
        .expect("type");
    for t in ["quality", "balanced", "size"] {
        let cb = c
            .find(Locator::Css(&format!("input[name={t}]")))
            .await
            .expect("checkbox");
        let on = cb.prop("checked").await.expect("checked").as_deref() == Some("true");
        if on != targets.contains(&t) {
            cb.click().await.expect("tick");
        }
    }
    c.find(Locator::Css("input[name=token]"))
        .await
        .expect("token field")
        .send_keys(API_TOKEN)
        .await
        .expect("type");
    c.find(Locator::Css("form.compress button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    // The answer sends the browser to the job list, at the new job's row.
    let t0 = Instant::now();
    let id = loop {
        let url = c.current_url().await.expect("url");
        if let Some(id) = url
            .query_pairs()
            .find(|(k, _)| k == "highlight")
            .and_then(|(_, v)| v.parse::<i64>().ok())
        {
            break id;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no redirect: {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut states = Vec::new();
    loop {
        let row = c
            .find(Locator::Css(&format!("#job-{id}")))
            .await
            .expect("the job's row");
        let state = row
            .attr("data-state")
            .await
            .expect("attr")
            .unwrap_or_default();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "done" {
            break;
        }
        assert!(
            state != "failed",
            "job {id} failed: {}",
            row.text().await.unwrap_or_default()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "job {id} not done; states seen {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("job {id} states seen in the page: {states:?}");
    id
}

/// Types `token` into the retry form of job `id`'s row and presses *Retry*.
async fn retry_in_row(c: &Client, id: i64, token: &str) {
    let row = format!("#job-{id}");
    c.find(Locator::Css(&format!("{row} input[name=token]")))
        .await
        .expect("token field")
        .send_keys(token)
        .await
        .expect("type");
    c.find(Locator::Css(&format!("{row} button")))
        .await
        .expect("retry button")
        .click()
        .await
        .expect("click");
}

/// The browser's URL once `ok` holds for it, or after 15 s (a click returns before the
/// navigation it starts has ended).
async fn url_when(c: &Client, ok: impl Fn(&reqwest::Url) -> bool) -> reqwest::Url {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = c.current_url().await.expect("url");
        if ok(&url) || Instant::now() > deadline {
            return url;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the first element matching `css`, waiting for it to appear (a click that
/// submits a form returns before the next page is there).
async fn text_of(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

#[test]
fn the_dashboard_in_a_real_browser_follows_jobs_and_shows_models_as_the_api_does() {
    let Some(drv) = driver() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = models(tmp.path());
    let text = eval_text(tmp.path());
    let reg = Registry::start_with_config(
        &tmp.path().join("data"),
        &hub.url,
        &[],
        &format!(
            "eval_text = {:?}\neval_tokens = 512\n",
            text.display().to_string()
        ),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = rt.block_on(browser(&drv.url));
    // A browser asking for / is sent to the dashboard.
    rt.block_on(c.goto(&reg.url)).expect("root");
    let url = rt.block_on(c.current_url()).expect("url");
    assert_eq!(url.path(), "/ui");
    // The base, with two targets, then its fine-tune (packed as a delta against it).
    let base_job = rt.block_on(compress_in_browser(
        &c,
        &reg.url,
        REPO,
        &["balanced", "size"],
    ));
    let ft_job = rt.block_on(compress_in_browser(&c, &reg.url, FT, &["balanced"]));
    rt.block_on(shot(&c, "jobs-desktop.png", 1280, 900));
    rt.block_on(shot(&c, "jobs-phone.png", 390, 844));
    rt.block_on(c.set_window_size(1280, 1000)).expect("size");

    // The model page, reached from the job's row.
    let status = reg.get_json(&format!("/status/{base_job}"));
    rt.block_on(async {
        c.find(Locator::Css(&format!("#job-{base_job} a.model-link")))
            .await
            .expect("model link")
            .click()
            .await
            .expect("click");
    });
    let url = rt.block_on(url_when(&c, |u| {
        u.path() == "/ui/models/acme/tiny-llama-tnpk"
    }));
    assert_eq!(url.path(), "/ui/models/acme/tiny-llama-tnpk");
    let key_id = reg.get_json("/keys")["keys"][0]["id"]
        .as_str()
        .expect("key id")
        .to_string();
    let artifacts = status["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 2, "{status}");
    // The page's rows: digest → (bytes, bits/weight of the file, PPL, signer).
    let rows: std::collections::BTreeMap<String, (String, String, String, String)> =
        rt.block_on(async {
            let mut m = std::collections::BTreeMap::new();
            for row in c
                .find_all(Locator::Css("#artifacts tbody tr"))
                .await
                .expect("rows")
            {
                let cell = |css: &'static str| {
                    let row = row.clone();
                    async move {
                        row.find(Locator::Css(css))
                            .await
                            .unwrap_or_else(|e| panic!("{css}: {e}"))
                    }
                };
                let size = cell("td.size")
                    .await
                    .attr("data-bytes")
                    .await
                    .expect("attr")
                    .unwrap_or_default();
                m.insert(
                    cell("td.digest").await.text().await.expect("text"),
                    (
                        size,
                        cell("td.bits-file").await.text().await.expect("text"),
                        cell("td.ppl").await.text().await.expect("text"),
                        cell("td.signer").await.text().await.expect("text"),
                    ),
                );
            }
            m
        });
    assert_eq!(rows.len(), 2, "{rows:?}");
    for a in artifacts {
        let id = a["id"].as_str().expect("id");
        let bytes = client()
            .get(format!("{}/artifact/{id}", reg.url))
            .send()
            .expect("artifact")
            .bytes()
            .expect("bytes");
        let art = Artifact::open(Box::new(MemorySource::new(bytes.to_vec()))).expect("open");
        let bpw_file = art.len() as f64 * 8.0 / art.manifest().weights() as f64;
        // What `tenpak info --json` says of it, where the workspace built the CLI beside
        // the registry (`cargo test --workspace`); the same figures otherwise.
        let cli = Path::new(env!("CARGO_BIN_EXE_tenpak-registry")).with_file_name("tenpak");
        if cli.exists() {
            let f = tmp.path().join(format!("{id}.tnpk"));
            std::fs::write(&f, &bytes).expect("write");
            let out = Command::new(&cli)
                .args(["info", f.to_str().expect("path"), "--json"])
                .output()
                .expect("tenpak info");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let info: Value = serde_json::from_slice(&out.stdout).expect("json");
            assert_eq!(info["digest"], format!("sha256:{id}"));
            assert_eq!(info["file_bytes"], art.len());
            assert_eq!(info["signers"], json!([key_id.clone()]));
            let b = info["bits_per_weight_file"].as_f64().expect("bits");
            assert_eq!(format!("{b:.3}"), format!("{bpw_file:.3}"));
            eprintln!("checked against `tenpak info --json` ({})", cli.display());
        }
        let (size, bits_file, ppl, signer) = rows
            .get(&format!("sha256:{id}"))
            .unwrap_or_else(|| panic!("no row for {id}: {rows:?}"));
        assert_eq!(art.digest(), format!("sha256:{id}"));
        assert_eq!(*size, art.len().to_string(), "{id}");
        assert_eq!(*bits_file, format!("{bpw_file:.3}"), "{id}");
        assert!(ppl.ends_with('%') && !ppl.contains("not"), "{id}: {ppl}");
        assert_eq!(*signer, key_id);
        assert_eq!(art.signers(), vec![key_id.clone()]);
    }
    // Both charts are there, as inline SVG.
    rt.block_on(async {
        for id in ["bits-chart", "error-chart"] {
            c.find(Locator::Css(&format!("#{id} svg")))
                .await
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    });
    rt.block_on(shot(&c, "model-desktop.png", 1280, 1400));
    rt.block_on(shot(&c, "model-phone.png", 390, 1400));

    // The fine-tune's page: a delta, its base linked, its size next to a full artifact's.
    let ft_status = reg.get_json(&format!("/status/{ft_job}"));
    assert_eq!(ft_status["kind"], "delta", "{ft_status}");
    rt.block_on(c.set_window_size(1280, 1000)).expect("size");
    rt.block_on(c.goto(&format!("{}/ui/models/{FT}-tnpk", reg.url)))
        .expect("delta page");
    let delta_text = rt.block_on(text_of(&c, "section.delta"));
    assert!(
        delta_text.contains("acme/tiny-llama-tnpk") && delta_text.contains("% of it"),
        "{delta_text}"
    );
    rt.block_on(shot(&c, "delta-model-desktop.png", 1280, 1200));

    // A failed job is retried from its row with the API token.
    let other = "0123456789abcdef0123456789abcdef01234567";
    let v: Value = reg
        .webhook(&content_update(REPO, other), Some(SECRET))
        .json()
        .expect("json");
    let failed = v["job_id"].as_i64().expect("id");
    assert_eq!(
        reg.wait_job(failed, Duration::from_secs(60))["state"],
        "failed"
    );
    rt.block_on(async {
        c.goto(&format!("{}/ui?state=failed", reg.url))
            .await
            .expect("failed jobs");
        retry_in_row(&c, failed, "a wrong token").await;
        let msg = text_of(&c, "#message").await;
        assert_eq!(msg, "wrong API token");
        c.goto(&format!("{}/ui?state=failed", reg.url))
            .await
            .expect("failed jobs");
        retry_in_row(&c, failed, API_TOKEN).await;
        // The form's answer is a redirect to the highlighted row.
        let want = format!("highlight={failed}");
        let url = url_when(&c, |u| u.query() == Some(want.as_str())).await;
        assert_eq!(url.query(), Some(want.as_str()));
    });
    let again = reg.wait_job(failed, Duration::from_secs(60));
    assert_eq!(again["attempts"], 1, "retried with a fresh count: {again}");
    rt.block_on(c.goto(&format!("{}/ui?state=failed", reg.url)))
        .expect("page");
    rt.block_on(shot(&c, "failed-jobs-desktop.png", 1280, 700));
    rt.block_on(c.close()).expect("close");
}

#[test]
fn pages_work_without_scripts_refuse_bad_input_and_ask_for_nothing_elsewhere() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    // Reports go to a GitHub that cannot be reached: the job is not touched by it.
    let reg = Registry::start_with_config(
        &tmp.path().join("data"),
        &hub.url,
        &[
            ("GITHUB_TOKEN", "ghp_unused"),
            ("GITHUB_API_URL", "http://127.0.0.1:9"),
        ],
        "[github_repos]\nacme = \"acme-gh/models\"\n",
    );
    let job = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    reg.wait_log("GitHub report (attempt 1)", Duration::from_secs(30));
    assert_eq!(
        reg.get_json(&format!("/status/{}", job["id"]))["state"],
        "done"
    );
    let id = job["id"].as_i64().expect("id");
    // The job list is in the HTML itself (no script needed), and its rows alone too.
    for path in ["/ui", "/ui?state=done&kind=full", "/ui/jobs/rows"] {
        let r = reg.get(path);
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .to_string();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(r.headers().contains_key("server-timing"));
        let html = r.text().expect("html");
        assert!(html.contains(&format!("id=\"job-{id}\"")), "{path}: {html}");
        assert!(html.contains("data-state=\"done\""), "{path}");
    }
    let counts = reg.get("/ui/jobs/counts").text().expect("html");
    assert!(
        counts.contains("done <b>1</b>") && counts.contains("failed <b>0</b>"),
        "{counts}"
    );
    // Nothing is loaded from another origin: every script, style and image is ours.
    let page = reg
        .get("/ui/models/acme/tiny-llama-tnpk")
        .text()
        .expect("html");
    for attr in ["src=\"", "href=\""] {
        for v in page.split(attr).skip(1) {
            let v = v.split('"').next().unwrap_or_default();
            assert!(
                v.starts_with('/') || v.starts_with('#') || v.starts_with(&reg.url),
                "{attr}{v}"
            );
        }
    }
    assert!(page.contains("<svg"), "charts inline");
    // Bad input: clear pages with the right status, nothing queued.
    assert_eq!(reg.get("/ui?state=stuck").status(), 400);
    assert_eq!(reg.get("/ui?kind=odd").status(), 400);
    assert_eq!(reg.get("/ui/models/acme/nothing-here").status(), 404);
    assert_eq!(reg.get("/ui/static/../../etc/passwd").status(), 404);
    let form = |body: &str| {
        client()
            .post(format!("{}/ui/compress", reg.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .expect("post")
    };
    let r = form("model_id=acme%2Ftiny-llama&balanced=on");
    assert_eq!(r.status(), 401);
    let r = form("model_id=acme%2Ftiny-llama&balanced=on&token=nope");
    assert_eq!(r.status(), 403);
    let r = form(&format!("model_id=not+a+repo&token={API_TOKEN}"));
    assert_eq!(r.status(), 400);
    assert!(r.text().expect("html").contains("is not owner/name"));
    let r = form(&format!("model_id=acme%2Fmissing&token={API_TOKEN}"));
    assert_eq!(r.status(), 404);
    let before = reg.get_json("/jobs")["total"].as_i64().expect("total");
    assert_eq!(before, 1, "nothing queued by refused forms");
    // A second request for the same commit finds the same job (and the list shows it).
    let r = client()
        .post(format!("{}/ui/compress", reg.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("model_id=acme%2Ftiny-llama&token={API_TOKEN}"))
        .send()
        .expect("post");
    assert_eq!(r.status(), 200, "followed to the list");
    assert!(
        r.url().as_str().contains(&format!("highlight={id}")),
        "{}",
        r.url()
    );
    // Retrying a job that did not fail is refused.
    let r = client()
        .post(format!("{}/ui/jobs/{id}/retry", reg.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={API_TOKEN}"))
        .send()
        .expect("post");
    assert_eq!(r.status(), 409);
    // The static files and the root's pointer to the dashboard.
    assert_eq!(reg.get("/ui/static/style.css").status(), 200);
    assert_eq!(reg.get("/ui/static/live.js").status(), 200);
    assert_eq!(reg.get_json("/")["dashboard"], "/ui");
}

/// A model page of three artifacts of 300 tensors each: its weight (asserted) and its
/// server render time (printed; `bench/dashboard.sh` records it in release builds).
#[test]
fn a_model_page_of_300_tensor_artifacts_stays_small() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("mode");
    }
    {
        use tenpak_registry::report::{ArtifactDetails, TensorDetails};
        use tenpak_registry::store::{ArtifactRow, Catalog, RepoFile, RepoRevision, SqliteStore};
        let s = SqliteStore::open(&data.join("registry.sqlite3")).expect("store");
        let mut files = Vec::new();
        for (k, target) in ["quality", "balanced", "size"].iter().enumerate() {
            let tensors = (0..300)
                .map(|i| TensorDetails {
                    name: format!("model.layers.{}.mlp.t{}.weight", i / 10, i % 10),
                    codec: "int4 g128".into(),
                    numel: 1 << 20,
                    bits_per_weight: 4.25 - k as f64 + (i % 7) as f64 * 0.01,
                    rel_error: 0.05 + (i % 13) as f64 * 0.001 * (k + 1) as f64,
                })
                .collect();
            let id = format!("{k:064x}");
            let d = ArtifactDetails {
                digest: format!("sha256:{id}"),
                target: target.to_string(),
                file: format!("big-{target}.tnpk"),
                bytes: 150_000_000,
                bits_quantized: 4.25 - k as f64,
                bits_file: 4.4 - k as f64,
                source_bytes: 600_000_000,
                ppl_delta: Some(1.0 + k as f64),
                signer: "0123456789abcdef".into(),
                tensors,
                ..Default::default()
            };
            s.add_artifact(&ArtifactRow {
                id: id.clone(),
                job_id: 1,
                repo: "acme/big-tnpk".into(),
                path: d.file.clone(),
                size: d.bytes,
                source: "acme/big@c0ffee".into(),
                target: target.to_string(),
                bits_per_weight: d.bits_quantized,
                sha256: "e".repeat(64),
                pieces: vec![],
                private: false,
                details: Some(serde_json::to_string(&d).expect("json")),
            })
            .expect("artifact");
            files.push(RepoFile {
                path: d.file.clone(),
                sha256: "e".repeat(64),
                size: d.bytes,
                artifact: Some(id),
            });
        }
        s.add_revision(&RepoRevision {
            repo: "acme/big-tnpk".into(),
            commit: "f".repeat(40),
            files,
            created_at: 1.0,
            private: false,
        })
        .expect("revision");
    }
    // This test reads the SQLite file it wrote: the registry must use it.
    let reg = Registry::start(&data, "http://127.0.0.1:9", &[("TENPAK_DATABASE_URL", "")]);
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let r = reg.get("/ui/models/acme/big-tnpk");
        assert_eq!(r.status(), 200);
        let t = r.headers()["server-timing"]
            .to_str()
            .expect("timing")
            .to_string();
        let ms: f64 = t
            .split("dur=")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("dur");
        times.push(ms);
        size = r.bytes().expect("body").len();
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "| model page, 3 artifacts x 300 tensors | {size} | {:.2} | {:.2} |",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(size < 200_000, "the page weighs {size} bytes");
}

#[test]
fn github_reports_open_one_issue_per_model_and_comment_once_per_revision() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let gh = github::start("ghp_test_token");
    // The first calls meet GitHub's secondary rate limit: the report waits, then posts.
    gh.gh.rate_limited.store(2, Ordering::SeqCst);
    let reg = Registry::start_with_config(
        &tmp.path().join("data"),
        &hub.url,
        &[
            ("GITHUB_TOKEN", "ghp_test_token"),
            ("GITHUB_API_URL", gh.url.as_str()),
            ("GITHUB_UPLOADS_URL", gh.url.as_str()),
        ],
        "[github_repos]\nacme = \"acme-gh/models\"\n",
    );
    let wait_comments = |n: usize| -> Vec<github::Issue> {
        let t0 = Instant::now();
        loop {
            let issues = gh.gh.issues("acme-gh/models");
            if issues.iter().map(|i| i.comments.len()).sum::<usize>() >= n {
                return issues;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{n} comment(s) never came: {issues:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let job = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    let issues = wait_comments(1);
    assert_eq!(issues.len(), 1);
    let issue = &issues[0];
    assert_eq!(
        issue.title,
        "TenPak: compressed variants of acme/tiny-llama"
    );
    assert_eq!(issue.labels, vec!["tenpak".to_string()]);
    let comment = &issue.comments[0].1;
    let id = job["artifacts"][0]["id"].as_str().expect("artifact id");
    assert!(
        comment.contains(&format!("<!-- tenpak:revision:acme/tiny-llama@{SHA} -->")),
        "{comment}"
    );
    assert!(comment.contains(&id[..12]), "the digest: {comment}");
    assert!(
        comment.contains("| balanced | [`tiny-llama-balanced.tnpk`]("),
        "{comment}"
    );
    assert!(
        comment.contains("/acme/tiny-llama-tnpk/resolve/"),
        "{comment}"
    );
    assert!(
        gh.gh.limited.load(Ordering::SeqCst) == 2,
        "the rate limit was met and waited out"
    );
    assert_eq!(gh.gh.unauthorized.load(Ordering::SeqCst), 0);
    // Redelivery of the same commit: the same job, no new comment.
    let again: Value = reg
        .webhook(&content_update(REPO, SHA), Some(SECRET))
        .json()
        .expect("json");
    assert_eq!(again["job_id"], job["id"]);
    std::thread::sleep(Duration::from_secs(2));
    // Another revision, which fails: its reason in a second comment on the same issue.
    let other = "0123456789abcdef0123456789abcdef01234567";
    let v: Value = reg
        .webhook(&content_update(REPO, other), Some(SECRET))
        .json()
        .expect("json");
    let failed = reg.wait_job(v["job_id"].as_i64().expect("id"), Duration::from_secs(60));
    assert_eq!(failed["state"], "failed");
    let issues = wait_comments(2);
    assert_eq!(issues.len(), 1, "one issue per model");
    assert_eq!(issues[0].comments.len(), 2);
    let c2 = &issues[0].comments[1].1;
    assert!(
        c2.contains(&format!("revision:acme/tiny-llama@{other}")),
        "{c2}"
    );
    assert!(c2.contains("failed after 1 attempt"), "{c2}");
    // A retried job whose report is the same edits nothing and adds nothing.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gh.gh.issues("acme-gh/models")[0].comments.len(), 2);
}

#[test]
fn a_report_a_stopped_registry_did_not_send_is_sent_at_its_next_start() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let gh = github::start("ghp_test_token");
    // GitHub answers every call with a rate limit for now.
    gh.gh.rate_limited.store(1_000_000, Ordering::SeqCst);
    let data = tmp.path().join("data");
    let env = [
        ("GITHUB_TOKEN", "ghp_test_token"),
        ("GITHUB_API_URL", gh.url.as_str()),
    ];
    let toml = "[github_repos]\nacme = \"acme-gh/models\"\n";
    let mut reg = Registry::start_with_config(&data, &hub.url, &env, toml);
    let job = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    reg.wait_log("GitHub report (attempt 1)", Duration::from_secs(60));
    reg.kill();
    assert!(gh.gh.issues("acme-gh/models").is_empty());
    // GitHub is back; the next start sends the report the stopped process owed.
    gh.gh.rate_limited.store(0, Ordering::SeqCst);
    let reg = Registry::start_with_config(&data, &hub.url, &env, toml);
    let t0 = Instant::now();
    while gh
        .gh
        .issues("acme-gh/models")
        .iter()
        .map(|i| i.comments.len())
        .sum::<usize>()
        < 1
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the report never came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    reg.wait_log("GitHub report Created", Duration::from_secs(30));
    drop(reg);
    // Another start looks again and adds nothing (the comment says it already).
    let reg = Registry::start_with_config(&data, &hub.url, &env, toml);
    reg.wait_log("GitHub report Unchanged", Duration::from_secs(60));
    let issues = gh.gh.issues("acme-gh/models");
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].comments.len(), 1);
}

#[test]
fn reports_need_credentials_and_a_well_formed_mapping() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (k, (toml, token, says)) in [
        // An empty GITHUB_TOKEN is none (and the test's own environment may not leak one).
        (
            "[github_repos]\nacme = \"acme-gh/models\"\n",
            "",
            "no GitHub credentials",
        ),
        (
            "[github_repos]\nacme = \"not a repo\"\n",
            "t",
            "is not a GitHub repository",
        ),
        (
            "[github_repos]\n\"a/b/c\" = \"acme-gh/models\"\n",
            "t",
            "neither a Hub owner nor owner/name",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let data = tmp.path().join(format!("d{k}"));
        let cfg = data.with_extension("toml");
        std::fs::write(&cfg, toml).expect("config");
        match Registry::try_start(
            &data,
            "http://127.0.0.1:9",
            &[("GITHUB_TOKEN", token), ("GITHUB_APP_ID", "")],
            &["--config", cfg.to_str().expect("path")],
        ) {
            Ok(_) => panic!("started with {toml}"),
            Err(log) => assert!(log.contains(says), "{says}: {log}"),
        }
    }
}
