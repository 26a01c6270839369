//! The HTTP surface: webhook receiver, Studio API, artifact range serving and the
//! Hub-compatible read API (`/api/models/...`, `/{repo}/resolve/{rev}/{path}`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tenpak::artifact::sign;
use tenpak_hooks::{check_secret, decide, job_key, Decision, Payload, Policy, SECRET_HEADER};

use crate::config::{parse_targets, target_name};
use crate::pipeline::Ctx;
use crate::store::{Enqueued, NewJob, RepoRevision, FAILED};

/// Builds the router.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/keys", get(keys))
        .route("/keys/registry.pub", get(key_file))
        .route("/webhooks/hub", post(webhook))
        .route("/compress", post(compress))
        .route("/status/{id}", get(status))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}/retry", post(retry))
        .route("/artifact/{id}", get(artifact))
        .route("/api/models/{owner}/{name}", get(model_info))
        .route(
            "/api/models/{owner}/{name}/revision/{rev}",
            get(model_info_rev),
        )
        .route("/api/models/{owner}/{name}/tree/{rev}", get(tree))
        .route("/{owner}/{name}/resolve/{rev}/{*path}", get(resolve))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), track))
        // A span per request (method, URI); `RUST_LOG=tower_http=debug` logs each one.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctx)
}

/// Counts every request in the metrics by the route that matched (bounded labels: the
/// pattern, not the path), with its latency and declared body length.
async fn track(
    State(ctx): State<Arc<Ctx>>,
    matched: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    let bytes = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ctx.metrics
        .request(&route, &method, resp.status().as_u16(), t0.elapsed(), bytes);
    resp
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let c = ctx.clone();
    let counts = match tokio::task::spawn_blocking(move || c.store.counts()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.render(&counts),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// A failure of the registry itself (database, disk): the cause goes to the log under an
/// incident number, the client gets a stable message with that number and nothing of the
/// cause (SQL text, paths, URLs).
fn internal(e: impl std::fmt::Display) -> Response {
    static INCIDENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = INCIDENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!("internal error (incident {n}): {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({
            "error": format!("internal error (incident {n}; the registry's log has the cause)"),
            "code": "internal",
        })),
    )
        .into_response()
}

async fn root(State(ctx): State<Arc<Ctx>>) -> Response {
    let counts = match ctx.store.counts() {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let public = ctx.key.verifying_key();
    let s = &ctx.settings;
    Json(json!({
        "service": "tenpak-registry",
        "version": env!("CARGO_PKG_VERSION"),
        "status": "ok",
        "public_key": {
            "id": sign::key_id(&public),
            "algorithm": "ed25519",
            "hex": hex::encode(public.as_bytes()),
        },
        "jobs": counts.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "targets": s.targets.iter().map(|t| target_name(*t)).collect::<Vec<_>>(),
        "companion": s.companion,
        "workers": s.workers,
        "hub": ctx.hub.endpoint(),
        "endpoints": ["POST /webhooks/hub", "POST /compress", "GET /status/{id}", "GET /jobs",
                      "POST /jobs/{id}/retry", "GET /artifact/{id}", "GET /keys",
                      "GET /api/models/{repo}", "GET|HEAD /{repo}/resolve/{rev}/{path}",
                      "GET /metrics"],
    }))
    .into_response()
}

async fn keys(State(ctx): State<Arc<Ctx>>) -> Response {
    let public = ctx.key.verifying_key();
    let hex = hex::encode(public.as_bytes());
    Json(json!({ "keys": [{
        "id": sign::key_id(&public),
        "algorithm": "ed25519",
        "public_key": hex,
        "key_file": sign::public_key_line(&public),
    }]}))
    .into_response()
}

async fn key_file(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        sign::public_key_line(&ctx.key.verifying_key()),
    )
        .into_response()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/hub`: secret, parse, decide, enqueue; the work happens in a worker.
async fn webhook(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = check_secret(
        &ctx.settings.webhook_secret,
        header(&headers, SECRET_HEADER),
    ) {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
        return error(status, e);
    }
    let payload = match Payload::parse(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let policy = Policy {
        branch: ctx.settings.branch.clone(),
        allow_private: ctx.settings.allow_private,
        companion_suffix: ctx.settings.companion_suffix(),
    };
    let record = |decision: &str, job: Option<i64>| {
        ctx.store.record_delivery(
            Some(&payload.webhook.id),
            Some(&payload.event.scope),
            Some(&payload.repo.name),
            decision,
            job,
        )
    };
    match decide(&payload, &policy) {
        Decision::Ignore { reason } => {
            if let Err(e) = record(&format!("ignore: {reason}"), None) {
                return internal(e);
            }
            (
                StatusCode::OK,
                Json(json!({ "action": "ignore", "reason": reason })),
            )
                .into_response()
        }
        Decision::Compress {
            repo,
            revision,
            idempotency_key,
        } => {
            let targets = ctx
                .settings
                .targets
                .iter()
                .map(|t| target_name(*t))
                .collect::<Vec<_>>()
                .join(",");
            let companion = ctx.settings.companion_of(&repo);
            let r = ctx.store.enqueue(&NewJob {
                key: &idempotency_key,
                repo: &repo,
                revision: &revision,
                targets: &targets,
                origin: "webhook",
                companion: &companion,
                kind: crate::store::KIND_AUTO,
            });
            let en = match r.and_then(|en| retry_failed(&ctx, en)) {
                Ok(en) => en,
                Err(e) => return internal(e),
            };
            let what = match (en.created, en.retried) {
                (true, _) => "compress",
                (false, true) => "retry",
                (false, false) => "duplicate",
            };
            if let Err(e) = record(what, Some(en.job.id)) {
                return internal(e);
            }
            enqueued(
                &ctx,
                &en,
                json!({ "action": what, "repo": repo, "revision": revision }),
            )
        }
    }
}

/// A request for a model and commit whose job failed is a retry: the failed job goes back
/// to the queue (its idempotency key stays unique; the job keeps its id and history).
fn retry_failed(ctx: &Ctx, mut en: Enqueued) -> Result<Enqueued, crate::store::StoreError> {
    if !en.created && en.job.state == FAILED {
        if let Some((job, true)) = ctx.store.retry(en.job.id)? {
            en.job = job;
            en.retried = true;
        }
    }
    Ok(en)
}

/// The answer to an enqueue: 202 for a new or retried job (and a worker woken), 200 for
/// an existing one; `body` gets `job_id` and `status_url`.
fn enqueued(ctx: &Ctx, en: &Enqueued, mut body: serde_json::Value) -> Response {
    if en.created || en.retried {
        ctx.wake.notify_one();
    }
    body["job_id"] = json!(en.job.id);
    body["status_url"] = json!(format!("/status/{}", en.job.id));
    let status = if en.created || en.retried {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// Bearer-token check of the write endpoints (401 missing, 403 wrong).
fn authorize(ctx: &Ctx, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let got = header(headers, "authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    });
    match check_secret(&ctx.settings.api_token, got) {
        Ok(()) => Ok(()),
        Err(tenpak_hooks::SecretError::Missing) => Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({ "error": "missing bearer token" })),
            )
                .into_response(),
        )),
        Err(tenpak_hooks::SecretError::Wrong) => {
            Err(Box::new(error(StatusCode::FORBIDDEN, "wrong bearer token")))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompressRequest {
    model_id: String,
    revision: Option<String>,
    target: Option<String>,
}

/// `POST /compress {model_id, revision?, target?}` → job id. The revision is resolved
/// to a commit here, so the job (and its idempotency key) names an exact commit.
async fn compress(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&ctx, &headers) {
        return *r;
    }
    let req: CompressRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid request: {e}")),
    };
    let Some(mref) = tenpak::hub::ModelRef::parse(&req.model_id) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("model_id {:?} is not owner/name", req.model_id),
        );
    };
    let targets = match &req.target {
        Some(t) => match parse_targets(std::slice::from_ref(t)) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        None => ctx.settings.targets.clone(),
    };
    let revision = req
        .revision
        .clone()
        .or(mref.revision.clone())
        .unwrap_or_else(|| "main".into());
    // Who may read the model decides whether it is packed at all: the same rule as for
    // webhooks (a private or gated source only with allow_private, and then its
    // companion is private too).
    let access = match ctx.hub.access(&mref.repo, &revision).await {
        Ok(a) => a,
        Err(e) => {
            let status = match &e {
                tenpak::Error::Hub {
                    status: Some(s), ..
                } if *s == 404 || *s == 401 || *s == 403 => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            tracing::warn!("compress {}: {e}", mref.repo);
            return error(
                status,
                format!("{}@{revision} cannot be read on the Hub", mref.repo),
            );
        }
    };
    if access.restricted() && !ctx.settings.allow_private {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": format!(
                    "{} is {}: its weights are not republished (allow_private is off)",
                    mref.repo,
                    access.describe()
                ),
                "code": "restricted_source",
            })),
        )
            .into_response();
    }
    let commit = access.commit;
    let names: Vec<&str> = targets.iter().map(|t| target_name(*t)).collect();
    let targets_s = names.join(",");
    let key = if targets == ctx.settings.targets {
        job_key(&mref.repo, &commit)
    } else {
        format!("{}:{targets_s}", job_key(&mref.repo, &commit))
    };
    let companion = ctx.settings.companion_of(&mref.repo);
    let en = match ctx
        .store
        .enqueue(&NewJob {
            key: &key,
            repo: &mref.repo,
            revision: &commit,
            targets: &targets_s,
            origin: "api",
            companion: &companion,
            kind: crate::store::KIND_AUTO,
        })
        .and_then(|en| retry_failed(&ctx, en))
    {
        Ok(en) => en,
        Err(e) => return internal(e),
    };
    enqueued(
        &ctx,
        &en,
        json!({ "created": en.created, "retried": en.retried, "repo": mref.repo,
                "revision": commit, "targets": names }),
    )
}

/// `POST /jobs/{id}/retry` (bearer token): a failed job back to the queue, its attempts
/// counted afresh. 409 for a job that has not failed.
async fn retry(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&ctx, &headers) {
        return *r;
    }
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, "job id is a number");
    };
    match ctx.store.retry(id) {
        Ok(Some((job, true))) => {
            ctx.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(json!({ "job_id": id, "state": job.state, "status_url": format!("/status/{id}") })),
            )
                .into_response()
        }
        Ok(Some((job, false))) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("job {id} is {}; only a failed job is retried", job.state),
                "state": job.state,
            })),
        )
            .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => internal(e),
    }
}

async fn status(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, "job id is a number");
    };
    match ctx.store.job(id) {
        Ok(Some(job)) => {
            let artifacts = ctx.store.artifacts_of_job(id).unwrap_or_default();
            let mut v = serde_json::to_value(&job).unwrap_or_default();
            v["waited_on_by"] = json!(ctx.store.waiters(id).unwrap_or_default());
            v["artifacts"] = json!(artifacts
                .iter()
                .map(|a| json!({ "id": a, "url": format!("/artifact/{a}") }))
                .collect::<Vec<_>>());
            Json(v).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
    state: Option<String>,
}

/// `GET /jobs[?state=S][&limit=N&offset=K]`: jobs, newest first; `state=failed` is the
/// dead-letter view (each with its error; `POST /jobs/{id}/retry` puts one back).
async fn jobs(State(ctx): State<Arc<Ctx>>, Query(p): Query<Page>) -> Response {
    let limit = p.limit.unwrap_or(20).clamp(1, 200);
    let offset = p.offset.unwrap_or(0).max(0);
    let state = p.state.as_deref();
    if let Some(s) = state {
        if !crate::store::STATES.contains(&s) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("state {s:?} is none of {}", crate::store::STATES.join(", ")),
            );
        }
    }
    match ctx.store.jobs(state, limit, offset) {
        Ok((jobs, total)) => {
            let filter = state.map(|s| format!("state={s}&")).unwrap_or_default();
            let next = (offset + limit < total)
                .then(|| format!("/jobs?{filter}limit={limit}&offset={}", offset + limit));
            Json(json!({ "jobs": jobs, "total": total, "limit": limit, "offset": offset, "next": next }))
                .into_response()
        }
        Err(e) => internal(e),
    }
}

/// `GET|HEAD /artifact/{id}`: the artifact reassembled from the chunk store, by ranges.
async fn artifact(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let id = id.trim_start_matches("sha256:").to_string();
    let row = match ctx.store.artifact(&id) {
        Ok(Some(r)) if !r.private || authorize(&ctx, &headers).is_ok() => r,
        Ok(_) => return error(StatusCode::NOT_FOUND, format!("no artifact {id}")),
        Err(e) => return internal(e),
    };
    let rep = match ctx.chunks.assemble(&row.pieces, &row.sha256) {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", row.path)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    tenpak::serve::range_response_with(&rep, &method, &headers, h)
}

/// A companion revision, as the Hub shows it: one made from a private or gated source
/// exists only for a caller with the API token (to anyone else it is not found, as a
/// private repository on the Hub is).
fn companion_revision(
    ctx: &Ctx,
    headers: &HeaderMap,
    owner: &str,
    name: &str,
    rev: &str,
) -> Result<RepoRevision, Box<Response>> {
    let repo = format!("{owner}/{name}");
    match ctx.store.revision(&repo, rev) {
        Ok(Some(r)) if !r.private || authorize(ctx, headers).is_ok() => Ok(r),
        Ok(_) => Err(Box::new(
            (
                StatusCode::NOT_FOUND,
                [("x-error-code", "RepoNotFound")],
                Json(json!({ "error": format!("Repository {repo} (revision {rev}) not found") })),
            )
                .into_response(),
        )),
        Err(e) => Err(Box::new(internal(e))),
    }
}

fn model_json(r: &RepoRevision) -> serde_json::Value {
    json!({
        "_id": r.commit,
        "id": r.repo,
        "modelId": r.repo,
        "author": r.repo.split('/').next(),
        "sha": r.commit,
        "private": r.private,
        "disabled": false,
        "gated": false,
        "library_name": "tenpak",
        "tags": ["tenpak", "quantized"],
        "siblings": r.files.iter().map(|f| json!({
            "rfilename": f.path,
            "size": f.size,
            "lfs": f.artifact.as_ref().map(|_| json!({ "sha256": f.sha256, "size": f.size, "pointerSize": 134 })),
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api/models/{owner}/{name}`: the Hub's model-info shape, with `siblings`.
async fn model_info(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    match companion_revision(&ctx, &headers, &owner, &name, "main") {
        Ok(r) => Json(model_json(&r)).into_response(),
        Err(resp) => *resp,
    }
}

async fn model_info_rev(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path((owner, name, rev)): Path<(String, String, String)>,
) -> Response {
    match companion_revision(&ctx, &headers, &owner, &name, &rev) {
        Ok(r) => Json(model_json(&r)).into_response(),
        Err(resp) => *resp,
    }
}

/// `GET /api/models/{owner}/{name}/tree/{rev}`: the Hub's tree listing (flat repos).
async fn tree(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path((owner, name, rev)): Path<(String, String, String)>,
) -> Response {
    match companion_revision(&ctx, &headers, &owner, &name, &rev) {
        Ok(r) => Json(
            r.files
                .iter()
                .map(|f| {
                    let mut v =
                        json!({ "type": "file", "path": f.path, "size": f.size, "oid": f.sha256 });
                    if f.artifact.is_some() {
                        v["lfs"] = json!({ "oid": f.sha256, "size": f.size, "pointerSize": 134 });
                    }
                    v
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(resp) => *resp,
    }
}

/// `GET|HEAD /{owner}/{name}/resolve/{rev}/{path}`: the file, by ranges, with the
/// headers Hub clients read (`ETag`, `X-Repo-Commit`, `X-Linked-Size`, `X-Linked-Etag`).
async fn resolve(
    State(ctx): State<Arc<Ctx>>,
    Path((owner, name, rev, path)): Path<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let r = match companion_revision(&ctx, &headers, &owner, &name, &rev) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let Some(f) = r.files.iter().find(|f| f.path == path) else {
        return (
            StatusCode::NOT_FOUND,
            [("x-error-code", "EntryNotFound")],
            Json(json!({ "error": format!("{path} not found in {}/{name}", owner) })),
        )
            .into_response();
    };
    let pieces = match &f.artifact {
        Some(id) => match ctx.store.artifact(id) {
            Ok(Some(a)) => a.pieces,
            Ok(None) => return internal(format!("artifact {id} missing from the store")),
            Err(e) => return internal(e),
        },
        None => vec![(f.sha256.clone(), f.size)],
    };
    let rep = match ctx.chunks.assemble(&pieces, &f.sha256) {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut h = HeaderMap::new();
    let quoted = format!("\"{}\"", f.sha256);
    for (k, v) in [
        ("x-repo-commit", r.commit.clone()),
        ("x-linked-size", f.size.to_string()),
        ("x-linked-etag", quoted),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    if path.ends_with(".md") {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/markdown; charset=utf-8"),
        );
    }
    tenpak::serve::range_response_with(&rep, &method, &headers, h)
}
