//! The HTTP surface: webhook receiver, Studio API, artifact range serving and the
//! Hub-compatible read API (`/api/models/...`, `/{repo}/resolve/{rev}/{path}`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tenpak::artifact::sign;
use tenpak_hooks::{check_secret, decide, job_key, Decision, Payload, Policy, SECRET_HEADER};
use utoipa::ToSchema;

use crate::config::{parse_targets, target_name};
use crate::pipeline::Ctx;
use crate::store::{Enqueued, Job, NewJob, RepoRevision, FAILED};

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
        .route("/openapi.json", get(openapi))
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
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
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
    (
        status,
        Json(ErrorBody {
            error: message.to_string(),
            code: None,
        }),
    )
        .into_response()
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
        Json(ErrorBody {
            error: format!("internal error (incident {n}; the registry's log has the cause)"),
            code: Some("internal".into()),
        }),
    )
        .into_response()
}

/// An error answer: a message for people, and for some errors a stable `code`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// A stable code (`internal`, `restricted_source`), where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// An artifact of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactLink {
    /// The artifact's id: the sha256 of its manifest.
    pub id: String,
    /// Where it is served (`/artifact/{id}`, with ranges).
    pub url: String,
}

/// `GET /status/{id}`: the job, its artifacts, and the jobs waiting for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobStatus {
    /// The job.
    #[serde(flatten)]
    pub job: Job,
    /// Jobs waiting for this one (fine-tunes of the model it packs).
    pub waited_on_by: Vec<i64>,
    /// What it made.
    pub artifacts: Vec<ArtifactLink>,
}

/// `GET /jobs`: a page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// The jobs of this page.
    pub jobs: Vec<Job>,
    /// Jobs matching, over all pages.
    pub total: i64,
    /// Page size.
    pub limit: i64,
    /// First job of the page.
    pub offset: i64,
    /// The next page's URL, if any.
    pub next: Option<String>,
}

/// The answer to a webhook delivery or a compress request.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Answer {
    /// Webhooks: `compress`, `retry`, `duplicate` or `ignore`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Why a delivery was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The job (new, retried or existing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<i64>,
    /// `/status/{job_id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    /// Compress: whether the job is new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// Compress: whether a failed job of the same commit went back to the queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried: Option<bool>,
    /// The source repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The exact commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Compress: the targets packed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
}

/// `POST /jobs/{id}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryAnswer {
    /// The job.
    pub job_id: i64,
    /// Its state now.
    pub state: String,
    /// `/status/{job_id}`.
    pub status_url: String,
}

/// `POST /jobs/{id}/retry` on a job that has not failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryConflict {
    /// Why nothing was done.
    pub error: String,
    /// The job's state.
    pub state: String,
}

/// `POST /compress`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompressRequest {
    /// `owner/name` (optionally `@revision`).
    pub model_id: String,
    /// Branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// Comma-separated targets (`quality`, `balanced`, `size`); default: the registry's.
    pub target: Option<String>,
}

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        c.add_security_scheme(
            "webhook_secret",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::new(SECRET_HEADER),
            )),
        );
    }
}

/// The OpenAPI document of the HTTP surface, generated from the handlers' annotations and
/// the answer types above; served at `GET /openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tenpak-registry",
        description = "Hub webhooks in, signed companion repos out, range-served artifacts: the Studio API, the webhook receiver, artifact ranges and the Hub-compatible read API."
    ),
    paths(
        root, keys, key_file, webhook, compress, status, jobs, retry, artifact, model_info,
        model_info_rev, tree, resolve, metrics, openapi
    ),
    modifiers(&Bearer),
    tags(
        (name = "studio", description = "Compress jobs, their status and artifacts"),
        (name = "webhooks", description = "The Hub's webhook deliveries"),
        (name = "hub", description = "Hub-compatible reads of the companion repos (HF_ENDPOINT can point here)"),
        (name = "service", description = "Keys, metrics, this document")
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
async fn openapi() -> Response {
    Json(<ApiDoc as utoipa::OpenApi>::openapi()).into_response()
}

/// `GET /`: what this service is.
#[utoipa::path(get, path = "/", tag = "service",
    responses((status = 200, description = "Service, version, public key, job counts per state, targets", body = Object)))]
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

/// `GET /keys`: the registry's signing key.
#[utoipa::path(get, path = "/keys", tag = "service",
    responses((status = 200, description = "`{keys: [{id, algorithm, public_key, key_file}]}`", body = Object)))]
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

/// `GET /keys/registry.pub`: the public key as a `tenpak verify --key` file.
#[utoipa::path(get, path = "/keys/registry.pub", tag = "service",
    responses((status = 200, description = "The key file", content_type = "text/plain", body = String)))]
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
#[utoipa::path(post, path = "/webhooks/hub", tag = "webhooks",
    request_body(content = Object, description = "A Hub webhook delivery (`event`, `repo`, `updatedRefs`, `webhook`)", content_type = "application/json"),
    security(("webhook_secret" = [])),
    responses(
        (status = 200, description = "Ignored, or a job that exists already", body = Answer),
        (status = 202, description = "A job was queued (new, or a failed one retried)", body = Answer),
        (status = 400, description = "Not a webhook delivery", body = ErrorBody),
        (status = 401, description = "No secret", body = ErrorBody),
        (status = 403, description = "Wrong secret", body = ErrorBody),
        (status = 500, description = "The registry failed (see its log)", body = ErrorBody)))]
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
                Json(Answer {
                    action: Some("ignore".into()),
                    reason: Some(reason.to_string()),
                    ..Answer::default()
                }),
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
                Answer {
                    action: Some(what.into()),
                    repo: Some(repo),
                    revision: Some(revision),
                    ..Answer::default()
                },
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
fn enqueued(ctx: &Ctx, en: &Enqueued, mut body: Answer) -> Response {
    if en.created || en.retried {
        ctx.wake.notify_one();
    }
    body.job_id = Some(en.job.id);
    body.status_url = Some(format!("/status/{}", en.job.id));
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
                Json(ErrorBody {
                    error: "missing bearer token".into(),
                    code: None,
                }),
            )
                .into_response(),
        )),
        Err(tenpak_hooks::SecretError::Wrong) => {
            Err(Box::new(error(StatusCode::FORBIDDEN, "wrong bearer token")))
        }
    }
}

/// `POST /compress {model_id, revision?, target?}` → job id. The revision is resolved
/// to a commit here, so the job (and its idempotency key) names an exact commit.
#[utoipa::path(post, path = "/compress", tag = "studio", request_body = CompressRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The same job exists already", body = Answer),
        (status = 202, description = "Queued", body = Answer),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token, or a private or gated model (`code: restricted_source`)", body = ErrorBody),
        (status = 404, description = "No such repository or revision on the Hub", body = ErrorBody),
        (status = 502, description = "The Hub could not be asked", body = ErrorBody)))]
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
    if !tenpak_hooks::is_revision(&revision) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("revision {revision:?} is not a branch, tag or commit name"),
        );
    }
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
            Json(ErrorBody {
                error: format!(
                    "{} is {}: its weights are not republished (allow_private is off)",
                    mref.repo,
                    access.describe()
                ),
                code: Some("restricted_source".into()),
            }),
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
        Answer {
            created: Some(en.created),
            retried: Some(en.retried),
            repo: Some(mref.repo),
            revision: Some(commit),
            targets: Some(names.iter().map(|n| n.to_string()).collect()),
            ..Answer::default()
        },
    )
}

/// `POST /jobs/{id}/retry` (bearer token): a failed job back to the queue, its attempts
/// counted afresh. 409 for a job that has not failed.
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "studio",
    params(("id" = i64, Path, description = "Job id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued again", body = RetryAnswer),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has not failed", body = RetryConflict)))]
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
                Json(RetryAnswer {
                    job_id: id,
                    state: job.state,
                    status_url: format!("/status/{id}"),
                }),
            )
                .into_response()
        }
        Ok(Some((job, false))) => (
            StatusCode::CONFLICT,
            Json(RetryConflict {
                error: format!("job {id} is {}; only a failed job is retried", job.state),
                state: job.state,
            }),
        )
            .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => internal(e),
    }
}

/// `GET /status/{id}`: one job.
#[utoipa::path(get, path = "/status/{id}", tag = "studio",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)))]
async fn status(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, "job id is a number");
    };
    match ctx.store.job(id) {
        Ok(Some(job)) => {
            let artifacts = ctx.store.artifacts_of_job(id).unwrap_or_default();
            Json(JobStatus {
                job,
                waited_on_by: ctx.store.waiters(id).unwrap_or_default(),
                artifacts: artifacts
                    .into_iter()
                    .map(|a| ArtifactLink {
                        url: format!("/artifact/{a}"),
                        id: a,
                    })
                    .collect(),
            })
            .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Page size (1–200, default 20).
    limit: Option<i64>,
    /// Jobs to skip (default 0).
    offset: Option<i64>,
    /// Only jobs in this state (`queued`, `running`, `waiting`, `done`, `failed`).
    state: Option<String>,
}

/// `GET /jobs[?state=S][&limit=N&offset=K]`: jobs, newest first; `state=failed` is the
/// dead-letter view (each with its error; `POST /jobs/{id}/retry` puts one back).
#[utoipa::path(get, path = "/jobs", tag = "studio", params(Page),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Unknown state or bad numbers", body = ErrorBody)))]
async fn jobs(
    State(ctx): State<Arc<Ctx>>,
    p: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // A malformed query is answered like every other error (JSON), not with the
    // extractor's plain text.
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
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
            Json(JobPage {
                jobs,
                total,
                limit,
                offset,
                next,
            })
            .into_response()
        }
        Err(e) => internal(e),
    }
}

/// `GET|HEAD /artifact/{id}`: the artifact reassembled from the chunk store, by ranges.
#[utoipa::path(get, path = "/artifact/{id}", tag = "studio",
    params(("id" = String, Path, description = "The manifest sha256 (hex, with or without `sha256:`)"),
           ("Range" = Option<String>, Header, description = "`bytes=a-b`, `a-` or `-n`")),
    responses(
        (status = 200, description = "The whole artifact", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such artifact", body = ErrorBody),
        (status = 416, description = "Unsatisfiable range")))]
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
#[utoipa::path(get, path = "/api/models/{owner}/{name}", tag = "hub",
    params(("owner" = String, Path, example = "acme"), ("name" = String, Path, example = "tiny-llama-tnpk")),
    responses((status = 200, description = "Model info as the Hub gives it", body = Object),
              (status = 404, description = "No such companion repo", body = ErrorBody)))]
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

/// `GET /api/models/{owner}/{name}/revision/{rev}`.
#[utoipa::path(get, path = "/api/models/{owner}/{name}/revision/{rev}", tag = "hub",
    params(("owner" = String, Path, example = "acme"), ("name" = String, Path, example = "tiny-llama-tnpk"), ("rev" = String, Path, example = "main")),
    responses((status = 200, description = "Model info at a revision", body = Object),
              (status = 404, description = "No such companion repo or revision", body = ErrorBody)))]
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
#[utoipa::path(get, path = "/api/models/{owner}/{name}/tree/{rev}", tag = "hub",
    params(("owner" = String, Path, example = "acme"), ("name" = String, Path, example = "tiny-llama-tnpk"), ("rev" = String, Path, example = "main")),
    responses((status = 200, description = "The files", body = Vec<Object>),
              (status = 404, description = "No such companion repo or revision", body = ErrorBody)))]
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
#[utoipa::path(get, path = "/{owner}/{name}/resolve/{rev}/{path}", tag = "hub",
    params(("owner" = String, Path, example = "acme"), ("name" = String, Path, example = "tiny-llama-tnpk"),
           ("rev" = String, Path, example = "main"), ("path" = String, Path, example = "README.md"),
           ("Range" = Option<String>, Header)),
    responses(
        (status = 200, description = "The file (a model card as Markdown)", content(
            (Vec<u8> = "application/octet-stream"), (String = "text/markdown"))),
        (status = 206, description = "The range asked for", content(
            (Vec<u8> = "application/octet-stream"), (String = "text/markdown"))),
        (status = 404, description = "No such repo, revision or file", body = ErrorBody),
        (status = 416, description = "Unsatisfiable range")))]
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
