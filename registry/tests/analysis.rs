//! The Studio's analysis endpoints against a real registry process and the Hub stand-in
//! (`tests/it/hub_standin.rs`, the Hub's JSON shapes): `POST /evaluate` on a Hub model,
//! on a stored artifact (with its source on the same windows) and on a `.tnpk` URL gives
//! the perplexity `tenpak eval` computes on the same windows (the library's
//! `perplexity` with the model's tokenizer, here in-process); `POST /optimize` gives
//! the report of `tenpak optimize` (the same study, run here in-process on the same
//! model) and a plot; bad requests get clear answers, impossible constraints a "no
//! candidate meets" report.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tenpak::dtype::DType;
use tenpak::runtime::{perplexity, Model, Tokenizer, Windows};
use tenpak::source::TensorSource;

const LONG: Duration = Duration::from_secs(300);

/// The perplexity `tenpak eval --ctx CTX --max-tokens CTX·SAMPLES` reports: the text
/// tokenized by the model's tokenizer, BOS as the tokenizer says.
fn eval_like_cli(src: &dyn TensorSource, text: &str, ctx: usize, samples: usize) -> f64 {
    let tok = tenpak::source::side_files(src)
        .expect("side files")
        .into_iter()
        .find(|(n, _)| n == "tokenizer.json")
        .expect("tokenizer")
        .1;
    let tok = Tokenizer::from_bytes(&tok).expect("tokenizer");
    let ids = tok.encode(text).expect("encode");
    let model = Model::load(src).expect("load");
    let w = Windows {
        ctx,
        stride: ctx,
        max_tokens: ctx * samples,
    };
    perplexity(&model, &ids, tok.default_bos(), w, &|_, _| {})
        .expect("ppl")
        .ppl
}

fn post(reg: &Registry, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let mut r = client().post(format!("{}{path}", reg.url)).json(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().expect("post");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Polls `path` (`/evaluate/{id}`, `/optimize/{id}`) until the job ends.
fn wait_result(reg: &Registry, path: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = reg.get_json(path);
        match v["state"].as_str() {
            Some("done") | Some("failed") => return v,
            _ if t0.elapsed() > LONG => panic!("{path} not finished: {v}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs()
}

fn start(tmp: &Path) -> (hub::Running, Registry, std::path::PathBuf, String) {
    let model = model_dir(tmp);
    std::fs::write(model.join("tokenizer.json"), tokenizer_json()).expect("tokenizer");
    let hub = hub::start_with(
        vec![hub::ModelRepo {
            repo: REPO.into(),
            sha: SHA.into(),
            dir: model.clone(),
        }],
        HUB_TOKEN,
        true,
        hub::Mode::Regular,
    );
    let text = eval_text(tmp);
    let reg = Registry::start_with_config(
        &tmp.join("data"),
        &hub.url,
        &[],
        &format!(
            "texts = {{ words = {:?} }}\nevaluate_url_hosts = [\"127.0.0.1\"]\n",
            text.display().to_string()
        ),
    );
    let s = std::fs::read_to_string(&text).expect("text");
    (hub, reg, model, s)
}

#[test]
fn evaluate_gives_tenpak_evals_perplexity_on_models_artifacts_and_urls() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_hub, reg, model, text) = start(tmp.path());
    let (ctx, samples) = (64, 4);
    let src = tenpak::models::open(&model, DType::BF16).expect("model");
    let model_ppl = eval_like_cli(src.as_ref(), &text, ctx, samples);

    // A Hub model, a named text.
    let (st, v) = post(
        &reg,
        "/evaluate",
        &json!({"model_id": REPO, "text": "words", "samples": samples, "ctx": ctx}),
        Some(API_TOKEN),
    );
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["revision"], SHA, "main resolved to the commit");
    let url = v["result_url"].as_str().expect("result_url").to_string();
    let r = wait_result(&reg, &url);
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(r["kind"], "evaluate");
    assert_eq!(r["stage"], "done");
    let res = &r["result"];
    assert!(
        close(res["ppl"].as_f64().expect("ppl"), model_ppl),
        "registry {} vs eval {model_ppl}",
        res["ppl"]
    );
    assert_eq!(res["tokens"], (ctx - 1) * samples, "{res}");
    assert_eq!(res["model"], format!("{REPO}@{SHA}"));
    assert_eq!(res["text"]["name"], "words");
    // The same request again is the same job.
    let (st2, v2) = post(
        &reg,
        "/evaluate",
        &json!({"model_id": REPO, "text": "words", "samples": samples, "ctx": ctx}),
        Some(API_TOKEN),
    );
    assert_eq!((st2, &v2["job_id"]), (200, &v["job_id"]), "{v2}");

    // An artifact the registry made, an uploaded text, its source on the same windows.
    let (st, c) = post(
        &reg,
        "/compress",
        &json!({"model_id": REPO, "target": "balanced"}),
        Some(API_TOKEN),
    );
    assert_eq!(st, 202, "{c}");
    let job = reg.wait_job(c["job_id"].as_i64().expect("id"), LONG);
    assert_eq!(job["state"], "done", "{job}");
    let art = job["artifacts"][0]["id"]
        .as_str()
        .expect("artifact")
        .to_string();
    let art_url = format!("{}/artifact/{art}", reg.url);
    let art_src = tenpak::artifact::ArtifactSource::open(&art_url).expect("artifact by URL");
    let art_ppl = eval_like_cli(&art_src, &text, ctx, samples);
    let (st, v) = post(
        &reg,
        "/evaluate",
        &json!({"artifact_id": art, "text_content": text, "samples": samples, "ctx": ctx,
                "compare_source": true}),
        Some(API_TOKEN),
    );
    assert_eq!(st, 202, "{v}");
    let r = wait_result(&reg, v["result_url"].as_str().expect("url"));
    assert_eq!(r["state"], "done", "{r}");
    let res = &r["result"];
    assert!(
        close(res["ppl"].as_f64().expect("ppl"), art_ppl),
        "{res} vs {art_ppl}"
    );
    assert!(
        close(res["source"]["ppl"].as_f64().expect("source"), model_ppl),
        "{res}"
    );
    let d = res["delta_pct"].as_f64().expect("delta");
    assert!(close(d, (art_ppl / model_ppl - 1.0) * 100.0), "{res}");
    assert_eq!(res["text"]["name"], "upload");

    // The same artifact by URL (the registry's own range-served copy).
    let (st, v) = post(
        &reg,
        "/evaluate",
        &json!({"url": art_url, "text": "words", "samples": samples, "ctx": ctx}),
        Some(API_TOKEN),
    );
    assert_eq!(st, 202, "{v}");
    let r = wait_result(&reg, v["result_url"].as_str().expect("url"));
    assert!(
        close(r["result"]["ppl"].as_f64().expect("ppl"), art_ppl),
        "{r}"
    );

    // Jobs list them with their kinds.
    let jobs = reg.get_json("/jobs?limit=50");
    let kinds: Vec<&str> = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"evaluate") && kinds.contains(&"full"),
        "{kinds:?}"
    );
    // An evaluate job is not an optimize job.
    let r = reg.get(&url.replace("evaluate", "optimize"));
    assert_eq!(r.status().as_u16(), 404);
}

#[test]
fn evaluate_and_optimize_refuse_bad_requests_clearly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_hub, reg, _model, _text) = start(tmp.path());
    let ok = json!({"model_id": REPO, "text": "words"});
    assert_eq!(post(&reg, "/evaluate", &ok, None).0, 401);
    assert_eq!(post(&reg, "/evaluate", &ok, Some("wrong")).0, 403);
    assert_eq!(post(&reg, "/optimize", &ok, None).0, 401);
    for (body, status, says) in [
        (json!({"text": "words"}), 400, "exactly one of model_id"),
        (
            json!({"model_id": REPO, "artifact_id": "a".repeat(64), "text": "words"}),
            400,
            "exactly one of model_id",
        ),
        (json!({"model_id": REPO}), 400, "text (a named text"),
        (
            json!({"model_id": REPO, "text": "words", "text_content": "x"}),
            400,
            "not both",
        ),
        (
            json!({"model_id": REPO, "text": "bible"}),
            400,
            "no text named \"bible\" (known: words)",
        ),
        (
            json!({"model_id": REPO, "text_content": "  \n"}),
            400,
            "text is empty",
        ),
        (
            json!({"model_id": REPO, "text": "words", "samples": 0}),
            400,
            "samples and ctx",
        ),
        (
            json!({"model_id": REPO, "text": "words", "compare_source": true}),
            400,
            "compare_source applies",
        ),
        (
            json!({"model_id": "acme/none", "text": "words"}),
            404,
            "cannot be read on the Hub",
        ),
        (
            json!({"artifact_id": "b".repeat(64), "text": "words"}),
            404,
            "no artifact",
        ),
        (
            json!({"artifact_id": "xyz", "text": "words"}),
            400,
            "64 hex digits",
        ),
        (
            json!({"url": "http://169.254.169.254/latest/x.tnpk", "text": "words"}),
            403,
            "not one this registry fetches from",
        ),
        (
            json!({"url": "file:///etc/passwd", "text": "words"}),
            400,
            "only http and https",
        ),
        (
            json!({"model_id": REPO, "text": "words", "bogus": 1}),
            400,
            "unknown field",
        ),
    ] {
        let (st, v) = post(&reg, "/evaluate", &body, Some(API_TOKEN));
        assert_eq!(st, status, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(says),
            "{body}: {v}"
        );
    }
    for (body, says) in [
        (
            json!({"model_id": REPO, "text": "words", "candidates": ["int5-magic"]}),
            "unknown candidate int5-magic",
        ),
        (
            json!({"model_id": REPO, "text": "words", "hardware": ["tpu9"]}),
            "unknown hardware tpu9",
        ),
        (
            json!({"model_id": REPO, "text": "words", "max_latency": -3.0}),
            "max_latency must be a positive number",
        ),
        (
            json!({"model_id": REPO, "text": "words", "max_tokens": 10, "ctx": 64}),
            "max_tokens between ctx",
        ),
        (
            json!({"model_id": REPO, "calib_text": "words"}),
            "text (a named text",
        ),
    ] {
        let (st, v) = post(&reg, "/optimize", &body, Some(API_TOKEN));
        assert_eq!(st, 400, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(says),
            "{body}: {v}"
        );
    }
    for path in ["/evaluate/x", "/optimize/x", "/optimize/x/plot"] {
        assert_eq!(reg.get(path).status().as_u16(), 400, "{path}");
    }
    for path in ["/evaluate/999", "/optimize/999", "/optimize/999/plot"] {
        assert_eq!(reg.get(path).status().as_u16(), 404, "{path}");
    }
    let texts = reg.get_json("/texts");
    assert_eq!(texts[0]["name"], "words", "{texts}");
    let c = reg.get_json("/optimize/candidates");
    let names: Vec<&str> = c["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names.len(), tenpak::optimize::CANDIDATES.len());
    assert!(names.contains(&"int4-g128") && names.contains(&"calibrated_vq"));
    let hw: Vec<&str> = c["hardware"]
        .as_array()
        .expect("hardware")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert!(hw.contains(&"t4") && hw.contains(&"cpu"), "{hw:?}");
}

#[test]
fn optimize_returns_the_clis_report_and_plot_and_says_when_nothing_fits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_hub, reg, model, text) = start(tmp.path());
    let body = json!({
        "model_id": REPO, "text": "words", "candidates": ["int4-g64", "int4-g128", "awq-g128"],
        "hardware": ["t4", "a10g"], "max_ppl_delta": 1000.0, "ctx": 64, "max_tokens": 256,
    });
    let (st, v) = post(&reg, "/optimize", &body, Some(API_TOKEN));
    assert_eq!(st, 202, "{v}");
    let path = v["result_url"].as_str().expect("url").to_string();
    let r = wait_result(&reg, &path);
    assert_eq!(r["state"], "done", "{r}");
    assert_eq!(r["plot_url"], format!("{path}/plot"));
    let rep = &r["result"];
    assert_eq!(rep["complete"], true, "{rep}");
    assert_eq!(rep["model"], format!("{REPO}@{SHA}"));
    assert_eq!(
        rep["skipped"][0]["candidate"], "awq-g128",
        "no calibration text"
    );

    // The same study run by `tenpak optimize`'s code on the same model and text.
    let tok = Tokenizer::from_bytes(tokenizer_json().as_bytes()).expect("tokenizer");
    let st = tenpak::optimize::study::Study {
        model: model.clone(),
        model_label: "local".into(),
        model_digest: tenpak::optimize::study::model_digest(&model).expect("digest"),
        text: tenpak::optimize::study::Text::new("words", &text, tok.encode(&text).expect("ids")),
        bos: tok.default_bos(),
        windows: Windows {
            ctx: 64,
            stride: 64,
            max_tokens: 256,
        },
        calib: None,
        cache: tmp.path().join("cli-cache"),
        candidates: tenpak::optimize::select(&[
            "int4-g64".into(),
            "int4-g128".into(),
            "awq-g128".into(),
        ])
        .expect("candidates"),
        hardware: tenpak::optimize::pick_hardware(
            &tenpak::optimize::default_hardware(),
            &["t4".into(), "a10g".into()],
        )
        .expect("hardware"),
        constraints: tenpak::optimize::Constraints {
            max_ppl_delta_pct: Some(1000.0),
            ..Default::default()
        },
    };
    let cli = st.run(&|_| {}, &mut |_| Ok(())).expect("study").report;
    let rows = rep["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), cli.rows.len());
    for (got, want) in rows.iter().zip(&cli.rows) {
        let m = &want.measured;
        assert_eq!(got["measured"]["candidate"], m.candidate.as_str());
        assert_eq!(got["measured"]["weight_bytes"], m.weight_bytes, "{got}");
        assert!(
            close(got["measured"]["ppl"].as_f64().expect("ppl"), m.ppl),
            "{got} vs {m:?}"
        );
        assert_eq!(got["verdict"], want.verdict.as_str());
        assert_eq!(got["on_frontier"], want.on_frontier);
    }
    let chosen = cli.chosen.expect("chosen");
    assert_eq!(rep["chosen"]["candidate"], chosen.candidate.as_str());
    assert_eq!(rep["chosen"]["hardware"], chosen.hardware.as_str());
    assert!(rep["estimates_are"]
        .as_str()
        .expect("says")
        .contains("estimates"));

    // The plot: an SVG with every measured candidate and the choice marked.
    let p = reg.get(&format!("{path}/plot"));
    assert_eq!(p.status().as_u16(), 200);
    assert_eq!(p.headers()["content-type"], "image/svg+xml");
    let svg = p.text().expect("svg");
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{svg:.80}"
    );
    for row in rows {
        let name = row["measured"]["candidate"].as_str().expect("name");
        assert!(svg.contains(name), "{name} not in the plot");
    }

    // The dashboard's page of the job: the table and the plot.
    let id = v["job_id"].as_i64().expect("id");
    let page = reg.get(&format!("/ui/optimize/{id}"));
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().expect("page");
    assert!(
        page.contains(&format!("<img src=\"/optimize/{id}/plot\"")),
        "{page}"
    );
    assert!(page.contains(&format!(
        "Chosen: <b>{} on {}</b>",
        chosen.candidate, chosen.hardware
    )));
    assert!(page.contains("skipped: needs calibration"));
    let rows = reg.get("/ui/jobs/rows?kind=optimize").text().expect("rows");
    assert!(rows.contains(&format!("/ui/optimize/{id}")), "{rows}");

    // The same request again is served from the cache (the same job), and one with
    // impossible constraints ends with "no candidate meets", not an error.
    let (st2, v2) = post(&reg, "/optimize", &body, Some(API_TOKEN));
    assert_eq!((st2, &v2["job_id"]), (200, &v["job_id"]));
    let mut tight = body.clone();
    tight["max_latency"] = json!(1e-6);
    let (st, v) = post(&reg, "/optimize", &tight, Some(API_TOKEN));
    assert_eq!(st, 202, "{v}");
    let r = wait_result(&reg, v["result_url"].as_str().expect("url"));
    assert_eq!(r["state"], "done", "{r}");
    assert!(r["result"]["chosen"].is_null(), "{r}");
    let why = r["result"]["none_because"].as_str().expect("why");
    assert!(why.starts_with("no candidate meets"), "{why}");
}
