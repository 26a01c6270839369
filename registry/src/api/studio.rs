//! The Studio API: compress jobs, their status, the dead letters and retries, artifacts
//! by ranges.

use super::*;

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

/// `POST /jobs/{id}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryAnswer {
    /// The job.
    pub job_id: i64,
    /// Its state now.
    pub state: JobState,
    /// `/status/{job_id}`.
    pub status_url: String,
}

/// `POST /jobs/{id}/retry` on a job that has not failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryConflict {
    /// Why nothing was done.
    pub error: String,
    /// The job's state.
    pub state: JobState,
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
pub(super) async fn compress(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: CompressRequest = match authorized_json(&ctx, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match start_compress(&ctx, req).await {
        Ok((en, answer)) => enqueued(&ctx, &en, answer),
        Err(r) => r,
    }
}

/// Queues (or finds, or retries) the job of a compress request, its caller authorized:
/// `POST /compress` and the dashboard's form. The error is the API's answer.
pub(super) async fn start_compress(
    ctx: &Arc<Ctx>,
    req: CompressRequest,
) -> Result<(Enqueued, Answer), Response> {
    let targets = match &req.target {
        Some(t) => match parse_targets(std::slice::from_ref(t)) {
            Ok(t) => t,
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, e)),
        },
        None => ctx.settings.targets.clone(),
    };
    // Who may read the model decides whether it is packed at all: the same rule as for
    // webhooks (a private or gated source only with allow_private, and then its
    // companion is private too).
    let (repo, commit) =
        super::analysis::resolve_model(ctx, &req.model_id, req.revision.as_deref()).await?;
    let names: Vec<&str> = targets.iter().map(|t| target_name(*t)).collect();
    let targets_s = names.join(",");
    let key = if targets == ctx.settings.targets {
        job_key(&repo, &commit)
    } else {
        format!("{}:{targets_s}", job_key(&repo, &commit))
    };
    let companion = ctx.settings.companion_of(&repo);
    let (repo2, commit2) = (repo.clone(), commit.clone());
    let en = match db(ctx, move |s| {
        let en = s.enqueue(&NewJob {
            key: &key,
            repo: &repo2,
            revision: &commit2,
            targets: &targets_s,
            origin: "api",
            companion: &companion,
            kind: crate::store::KIND_AUTO,
            params: None,
        })?;
        retry_failed(s, en)
    })
    .await
    {
        Ok(en) => en,
        Err(e) => return Err(e.into_response()),
    };
    let answer = Answer {
        created: Some(en.created),
        retried: Some(en.retried),
        repo: Some(repo),
        revision: Some(commit),
        targets: Some(names.iter().map(|n| n.to_string()).collect()),
        ..Answer::default()
    };
    Ok((en, answer))
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
pub(super) async fn retry(
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
    match db(&ctx, move |s| s.retry(id)).await {
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
        Err(e) => e.into_response(),
    }
}

/// `GET /status/{id}`: one job.
#[utoipa::path(get, path = "/status/{id}", tag = "studio",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub(super) async fn status(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, "job id is a number");
    };
    let found = db(&ctx, move |s| {
        Ok(match s.job(id)? {
            Some(job) => Some((job, s.artifacts_of_job(id)?, s.waiters(id)?)),
            None => None,
        })
    })
    .await;
    match found {
        Ok(Some((job, artifacts, waiters))) => Json(JobStatus {
            job,
            waited_on_by: waiters,
            artifacts: artifacts
                .into_iter()
                .map(|a| ArtifactLink {
                    url: format!("/artifact/{a}"),
                    id: a,
                })
                .collect(),
        })
        .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Page {
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
pub(super) async fn jobs(
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
    let state = match p.state.as_deref().map(|s| (s, JobState::parse(s))) {
        None => None,
        Some((_, Some(st))) => Some(st),
        Some((s, None)) => {
            let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("state {s:?} is none of {}", all.join(", ")),
            );
        }
    };
    match db(&ctx, move |s| s.jobs(state, limit, offset)).await {
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
        Err(e) => e.into_response(),
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
pub(super) async fn artifact(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let id = id.trim_start_matches("sha256:").to_string();
    let id2 = id.clone();
    let row = match db(&ctx, move |s| s.artifact(&id2)).await {
        Ok(Some(r)) if !r.private || authorize(&ctx, &headers).is_ok() => r,
        Ok(_) => return error(StatusCode::NOT_FOUND, format!("no artifact {id}")),
        Err(e) => return e.into_response(),
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
