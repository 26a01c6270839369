//! Handler tests in process, without a socket: the router answered with
//! `tower::ServiceExt::oneshot`, against a registry context on a temporary data dir (its
//! Hub endpoint is a closed port: nothing here reaches the Hub). Every error is one
//! `AppError` shape: JSON `{error, code}` with a stable code.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tenpak_registry::config::{Overrides, Settings};
use tenpak_registry::store::NewJob;
use tower::ServiceExt;

fn ctx(dir: &std::path::Path) -> std::sync::Arc<tenpak_registry::pipeline::Ctx> {
    let cfg = dir.join("registry.toml");
    std::fs::write(
        &cfg,
        "hub_endpoint = \"http://127.0.0.1:9\"\nhub_token = \"hf_x\"\nwebhook_secret = \"s\"\napi_token = \"t\"\n",
    )
    .expect("config");
    // On the engines of a scaled-out registry too (TENPAK_TEST_STORES=postgres+s3): the
    // object store's client reads its endpoint and keys from the environment, set here
    // once (this binary has one test).
    let data = dir.join("data");
    // (On a thread of its own: its blocking clients may not run on the test's runtime.)
    let (args, env) = {
        let d = data.clone();
        std::thread::spawn(move || common::stores_of(&d))
            .join()
            .expect("stores")
    };
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let overrides = Overrides {
        database: flag("--database"),
        chunks: flag("--chunks"),
        ..Overrides::default()
    };
    let settings = Settings::load(&data, Some(&cfg), &overrides).expect("settings");
    tenpak_registry::open(settings).expect("open")
}

async fn call(
    ctx: &std::sync::Arc<tenpak_registry::pipeline::Ctx>,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = tenpak_registry::api::router(ctx.clone())
        .oneshot(req)
        .await
        .expect("answer");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 24).await.expect("body");
    (parts.status, parts.headers, bytes.to_vec())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

/// The error's code, checking the shape every error answer has.
fn code(status: StatusCode, headers: &axum::http::HeaderMap, body: &[u8]) -> String {
    assert_eq!(headers["content-type"], "application/json", "{status}");
    let v: Value = serde_json::from_slice(body).expect("json");
    assert!(v["error"].is_string(), "{v}");
    v["code"].as_str().expect("code").to_string()
}

#[tokio::test]
async fn errors_are_one_shape_with_stable_codes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ctx = ctx(tmp.path());

    let (s, h, b) = call(&ctx, get("/jobs?state=bogus")).await;
    assert_eq!(
        (s, code(s, &h, &b).as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    // A malformed query is JSON too (axum's own rejection is plain text).
    let (s, h, b) = call(&ctx, get("/jobs?limit=abc")).await;
    assert_eq!(
        (s, code(s, &h, &b).as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (s, h, b) = call(&ctx, get("/status/999")).await;
    assert_eq!(
        (s, code(s, &h, &b).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (s, h, b) = call(&ctx, get("/status/x")).await;
    assert_eq!(
        (s, code(s, &h, &b).as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    let compress = |token: Option<&str>, body: &str| {
        let mut r = Request::post("/compress").header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(Body::from(body.to_string())).expect("request")
    };
    let (s, h, b) = call(&ctx, compress(None, r#"{"model_id":"a/b"}"#)).await;
    assert_eq!(h["www-authenticate"], "Bearer");
    assert_eq!(
        (s, code(s, &h, &b).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (s, h, b) = call(&ctx, compress(Some("nope"), r#"{"model_id":"a/b"}"#)).await;
    assert_eq!(
        (s, code(s, &h, &b).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // Checked before any Hub call (the Hub here is a closed port).
    for bad in [
        r#"{"model_id":"a/b","revision":"../main"}"#,
        r#"{"model_id":"a/b/c"}"#,
        r#"{"model_id":"a/b","target":"huge"}"#,
        r#"{"model_id":"a/b","extra":1}"#,
        "not json",
    ] {
        let (s, h, b) = call(&ctx, compress(Some("t"), bad)).await;
        assert_eq!(
            (s, code(s, &h, &b).as_str()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{bad}"
        );
    }
    // The Hub cannot be reached: 502, said so.
    let (s, h, b) = call(&ctx, compress(Some("t"), r#"{"model_id":"a/b"}"#)).await;
    assert_eq!(
        (s, code(s, &h, &b).as_str()),
        (StatusCode::BAD_GATEWAY, "bad_gateway")
    );

    // A done job is not retried: 409 with its state.
    let en = ctx
        .store
        .enqueue(&NewJob {
            key: "k",
            repo: "a/b",
            revision: "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c",
            targets: "balanced",
            origin: "api",
            companion: "a/b-tnpk",
            kind: "auto",
            params: None,
        })
        .expect("enqueue");
    ctx.store.finish(en.job.id).expect("finish");
    let retry = Request::post(format!("/jobs/{}/retry", en.job.id))
        .header("authorization", "Bearer t")
        .body(Body::empty())
        .expect("request");
    let (s, _, b) = call(&ctx, retry).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["state"], "done");

    // The job as /status shows it, typed; /jobs pages.
    let (s, _, b) = call(&ctx, get(&format!("/status/{}", en.job.id))).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(
        (v["state"].as_str(), v["artifacts"].as_array().map(Vec::len)),
        (Some("done"), Some(0))
    );
    let (_, _, b) = call(&ctx, get("/jobs?state=done&limit=1")).await;
    let v: Value = serde_json::from_slice(&b).expect("json");
    assert_eq!((v["total"].as_i64(), v["next"].is_null()), (Some(1), true));

    // Everything above was counted, by route pattern.
    let (_, _, b) = call(&ctx, get("/metrics")).await;
    let m = String::from_utf8(b).expect("utf8");
    assert!(
        m.contains(r#"tenpak_http_requests_total{route="/jobs",method="GET",status="400"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tenpak_http_requests_total{route="/compress",method="POST",status="400"} 5"#),
        "{m}"
    );
    assert!(m.contains(r#"tenpak_jobs{state="done"} 1"#), "{m}");
}
