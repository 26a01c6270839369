//! The HTTP surface, split by audience:
//! - [`webhook`]: the Hub's webhook deliveries;
//! - [`studio`]: the Studio API (compress jobs, status, the dead letters and retries,
//!   artifact ranges);
//! - [`analysis`]: the Studio's evaluate and optimize jobs and their results;
//! - [`hub`]: Hub-compatible reads of the companion repos (`/api/models/...`,
//!   `/{repo}/resolve/{rev}/{path}`), so `HF_ENDPOINT` can point here;
//! - [`service`]: what the service is, its keys, its metrics.
//!
//! Here: the router, [`AppError`] (every error answer), the OpenAPI document and the
//! helpers the handlers share.

mod analysis;
mod hub;
mod service;
mod studio;
mod ui;
mod webhook;

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
use crate::store::{Enqueued, Job, JobState, NewJob, RepoRevision};

/// Builds the router.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/", get(service::root))
        .route("/keys", get(service::keys))
        .route("/keys/registry.pub", get(service::key_file))
        .route("/webhooks/hub", post(webhook::webhook))
        .route("/compress", post(studio::compress))
        .route("/status/{id}", get(studio::status))
        .route("/jobs", get(studio::jobs))
        .route("/jobs/{id}/retry", post(studio::retry))
        .route("/artifact/{id}", get(studio::artifact))
        .route("/evaluate", post(analysis::evaluate))
        .route("/evaluate/{id}", get(analysis::evaluate_status))
        .route("/optimize", post(analysis::optimize))
        .route("/optimize/candidates", get(analysis::candidates))
        .route("/optimize/{id}", get(analysis::optimize_status))
        .route("/optimize/{id}/plot", get(analysis::optimize_plot))
        .route("/texts", get(analysis::texts))
        .route("/api/models/{owner}/{name}", get(hub::model_info))
        .route(
            "/api/models/{owner}/{name}/revision/{rev}",
            get(hub::model_info_rev),
        )
        .route("/api/models/{owner}/{name}/tree/{rev}", get(hub::tree))
        .route("/{owner}/{name}/resolve/{rev}/{*path}", get(hub::resolve))
        .route("/metrics", get(service::metrics))
        .route("/openapi.json", get(openapi))
        .route("/ui", get(ui::jobs_page))
        .route("/ui/jobs/rows", get(ui::job_rows))
        .route("/ui/jobs/counts", get(ui::job_counts))
        .route("/ui/jobs/{id}/retry", post(ui::retry_submit))
        .route("/ui/models", get(ui::models_page))
        .route("/ui/optimize/{id}", get(ui::optimize_page))
        .route("/ui/models/{owner}/{name}", get(ui::model_page))
        .route(
            "/ui/compress",
            get(ui::compress_form).post(ui::compress_submit),
        )
        .route("/ui/static/{file}", get(ui::asset))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            service::track,
        ))
        // A span per request (method, URI); `RUST_LOG=tower_http=debug` logs each one.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(ctx)
}

/// Every error the HTTP surface answers with, in one type (axum's error-handling
/// example is the model): the client gets a stable `code` and a message written for it;
/// an [`AppError::Internal`]'s cause goes to the log under an incident number and never
/// to the client (no SQL text, paths or URLs).
#[derive(Debug)]
pub enum AppError {
    /// 400: the request is malformed.
    BadRequest(String),
    /// 401: no credentials.
    Unauthorized(String),
    /// 403: wrong credentials.
    Forbidden(String),
    /// 403: a private or gated source without `allow_private`.
    Restricted(String),
    /// 404.
    NotFound(String),
    /// 409: the resource is in another state.
    Conflict(String),
    /// 502: the Hub could not be asked.
    BadGateway(String),
    /// 500: the registry itself failed; the cause is logged, not sent.
    Internal(String),
    /// 503: the job store cannot be reached now (a database restart); try again.
    Unavailable(String),
}

impl AppError {
    /// The status and the stable code.
    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::Restricted(_) => (StatusCode::FORBIDDEN, "restricted_source"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(cause) => AppError::Unavailable(cause),
            e => AppError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        static INCIDENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let (status, code) = self.status_code();
        let message = match self {
            AppError::Internal(cause) => {
                let n = INCIDENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("internal error (incident {n}): {cause}");
                format!("internal error (incident {n}; the registry's log has the cause)")
            }
            AppError::Unavailable(cause) => {
                tracing::warn!("job store unavailable: {cause}");
                "the job store cannot be reached now; try again in a moment".to_string()
            }
            AppError::BadRequest(m)
            | AppError::Unauthorized(m)
            | AppError::Forbidden(m)
            | AppError::Restricted(m)
            | AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::BadGateway(m) => m,
        };
        let body = Json(ErrorBody {
            error: message,
            code: Some(code.into()),
        });
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            (status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

/// An [`AppError`] for `status` (the handlers' shorthand).
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let m = message.to_string();
    match status {
        StatusCode::BAD_REQUEST => AppError::BadRequest(m),
        StatusCode::UNAUTHORIZED => AppError::Unauthorized(m),
        StatusCode::FORBIDDEN => AppError::Forbidden(m),
        StatusCode::NOT_FOUND => AppError::NotFound(m),
        StatusCode::CONFLICT => AppError::Conflict(m),
        StatusCode::BAD_GATEWAY => AppError::BadGateway(m),
        _ => AppError::Internal(m),
    }
    .into_response()
}

/// A failure of the registry itself (database, disk): see [`AppError::Internal`].
fn internal(e: impl std::fmt::Display) -> Response {
    AppError::Internal(e.to_string()).into_response()
}

/// [`crate::store::off_thread`], answering its failure as an [`AppError`].
async fn db<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&dyn crate::store::Store) -> crate::store::Result<T> + Send + 'static,
) -> Result<T, AppError> {
    Ok(crate::store::off_thread(&ctx.store, f).await?)
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
    /// Evaluate and optimize: where the result will be (`/evaluate/{id}`, `/optimize/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
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
        service::root, service::keys, service::key_file, webhook::webhook, studio::compress,
        studio::status, studio::jobs, studio::retry, studio::artifact, analysis::evaluate,
        analysis::evaluate_status, analysis::optimize, analysis::optimize_status,
        analysis::optimize_plot, analysis::candidates, analysis::texts, hub::model_info,
        hub::model_info_rev, hub::tree, hub::resolve, service::metrics, openapi
    ),
    modifiers(&Bearer),
    tags(
        (name = "studio", description = "Compress, evaluate and optimize jobs, their status, results and artifacts"),
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

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A request for a model and commit whose job failed is a retry: the failed job goes back
/// to the queue (its idempotency key stays unique; the job keeps its id and history).
fn retry_failed(
    store: &dyn crate::store::Store,
    mut en: Enqueued,
) -> Result<Enqueued, crate::store::StoreError> {
    if !en.created && en.job.state == JobState::Failed {
        if let Some((job, true)) = store.retry(en.job.id)? {
            en.job = job;
            en.retried = true;
        }
    }
    Ok(en)
}

/// The answer to an enqueue: 202 for a new or retried job (and a worker woken), 200 for
/// an existing one; `body` gets `job_id` and `status_url`.
fn enqueued(ctx: &Ctx, en: &Enqueued, mut body: Answer) -> Response {
    wake_for(ctx, en);
    body.job_id = Some(en.job.id);
    body.status_url = Some(format!("/status/{}", en.job.id));
    let status = if en.created || en.retried {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// A new or retried job wakes an idle worker.
fn wake_for(ctx: &Ctx, en: &Enqueued) {
    if en.created || en.retried {
        ctx.wake.notify_one();
    }
}

/// A write endpoint's request: the bearer token checked, then the body parsed as `T`
/// (400 with serde's message when it is not).
fn authorized_json<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    authorize(ctx, headers)?;
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("invalid request: {e}"),
        ))
    })
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
            AppError::Unauthorized("missing bearer token".into()).into_response(),
        )),
        Err(tenpak_hooks::SecretError::Wrong) => {
            Err(Box::new(error(StatusCode::FORBIDDEN, "wrong bearer token")))
        }
    }
}
