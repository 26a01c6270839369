//! The Studio's analysis endpoints: `POST /evaluate`, `POST /optimize` (async jobs in
//! the queue, kinds `evaluate` and `optimize`), their results (`GET /evaluate/{id}`,
//! `GET /optimize/{id}`, the Pareto plot at `GET /optimize/{id}/plot`), the candidates
//! and hardware (`GET /optimize/candidates`) and the named texts (`GET /texts`). Auth as
//! `/compress`. The work itself is [`crate::analysis`].

use sha2::Digest;

use super::*;
use crate::analysis::{
    self, EvaluateParams, OptimizeParams, Subject, TextRef, DEFAULT_CTX, DEFAULT_OPTIMIZE_TOKENS,
    DEFAULT_SAMPLES, MAX_EVAL_TOKENS, MAX_TEXT_BYTES,
};
use crate::store::{KIND_EVALUATE, KIND_OPTIMIZE};

/// `POST /evaluate`: exactly one of `model_id`, `artifact_id`, `url`; exactly one of
/// `text` (a named text, `GET /texts`) and `text_content` (the text itself).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// A Hub model, `owner/name` (optionally `@revision`).
    pub model_id: Option<String>,
    /// Branch, tag or commit of `model_id` (default `main`).
    pub revision: Option<String>,
    /// An artifact this registry stores (`/artifact/{id}`'s id).
    pub artifact_id: Option<String>,
    /// A `.tnpk` URL served with ranges, on a host the registry allows
    /// (`evaluate_url_hosts`).
    pub url: Option<String>,
    /// A named text (`GET /texts`).
    pub text: Option<String>,
    /// The text itself (UTF-8, at most 8 MiB).
    pub text_content: Option<String>,
    /// Windows evaluated (default 8).
    pub samples: Option<usize>,
    /// Tokens per window (default 512).
    pub ctx: Option<usize>,
    /// Also evaluate the model the artifact was packed from (its `source`), on the same
    /// windows, and report the change (artifacts and URLs only).
    pub compare_source: Option<bool>,
}

/// `POST /optimize`: the options of `tenpak optimize`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizeRequest {
    /// A Hub model, `owner/name` (optionally `@revision`).
    pub model_id: String,
    /// Branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// The evaluation text: a named text (`GET /texts`) ...
    pub text: Option<String>,
    /// ... or the text itself.
    pub text_content: Option<String>,
    /// The calibration text for the candidates that need one: a named text ...
    pub calib_text: Option<String>,
    /// ... or the text itself. Without either, those candidates are skipped (said so).
    pub calib_text_content: Option<String>,
    /// Candidates (`GET /optimize/candidates`); default all.
    pub candidates: Option<Vec<String>>,
    /// Hardware names; default all.
    pub hardware: Option<Vec<String>>,
    /// Largest perplexity increase over the source, percent.
    pub max_ppl_delta: Option<f64>,
    /// Largest estimated ms per token (batch 1).
    pub max_latency: Option<f64>,
    /// Fewest estimated tokens per second (batch 1).
    pub min_throughput: Option<f64>,
    /// Tokens per window (default 512).
    pub ctx: Option<usize>,
    /// Tokens of the text evaluated (default 8192).
    pub max_tokens: Option<usize>,
}

/// An analysis job and, once there, its result.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalysisStatus {
    /// The job (its `params` are the request as stored).
    #[serde(flatten)]
    pub job: Job,
    /// The result: `POST /evaluate`'s perplexities, or `POST /optimize`'s report (the
    /// JSON of `tenpak optimize --output`; `complete: false` while it runs).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// `/optimize/{id}/plot` for an optimize job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot_url: Option<String>,
}

/// One candidate of the optimizer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateInfo {
    /// Its name.
    pub name: String,
    /// What it is.
    pub about: String,
    /// Whether it needs a calibration text.
    pub needs_calibration: bool,
}

/// `GET /optimize/candidates`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Candidates {
    /// The candidates, in the order they are measured.
    pub candidates: Vec<CandidateInfo>,
    /// The hardware table (name, $/h, memory, bandwidth, efficiency factors, source).
    #[schema(value_type = Vec<Object>)]
    pub hardware: Vec<tenpak::optimize::Hardware>,
}

/// A named text.
#[derive(Debug, Serialize, ToSchema)]
pub struct NamedText {
    /// Its name (`"text": NAME`).
    pub name: String,
    /// Bytes.
    pub bytes: u64,
}

fn bad(m: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, m)
}

/// The text of a request: exactly one of a name and the content, stored by sha256.
fn text_of(
    ctx: &Ctx,
    name: Option<&str>,
    content: Option<&str>,
    field: &str,
) -> Result<TextRef, AppError> {
    let (label, bytes) = match (name, content) {
        (Some(_), Some(_)) => {
            return Err(AppError::BadRequest(format!(
                "give {field} (a name) or {field}_content, not both"
            )))
        }
        (None, None) => {
            return Err(AppError::BadRequest(format!(
                "{field} (a named text, GET /texts) or {field}_content is needed"
            )))
        }
        (Some(n), None) => {
            let Some(p) = ctx.settings.texts.get(n) else {
                let known: Vec<&str> = ctx.settings.texts.keys().map(String::as_str).collect();
                return Err(AppError::BadRequest(format!(
                    "no text named {n:?} (known: {})",
                    if known.is_empty() {
                        "none configured".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            let bytes = std::fs::read(p)
                .map_err(|e| AppError::Internal(format!("{}: {e}", p.display())))?;
            (n.to_string(), bytes)
        }
        (None, Some(c)) => ("upload".to_string(), c.as_bytes().to_vec()),
    };
    if bytes.len() > MAX_TEXT_BYTES {
        return Err(AppError::BadRequest(format!(
            "{field}: {} bytes, more than the {MAX_TEXT_BYTES} allowed",
            bytes.len()
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::BadRequest(format!("{field} is empty")));
    }
    analysis::store_text(&ctx.settings.data_dir, &label, &bytes)
        .map_err(|e| AppError::Internal(format!("storing the text: {e}")))
}

/// The model of a request resolved on the Hub: `(repo, commit)`; a private or gated
/// model only with `allow_private` (as `/compress`).
pub(super) async fn resolve_model(
    ctx: &Arc<Ctx>,
    model_id: &str,
    revision: Option<&str>,
) -> Result<(String, String), Response> {
    let Some(mref) = tenpak::hub::ModelRef::parse(model_id) else {
        return Err(bad(format!("model_id {model_id:?} is not owner/name")));
    };
    let revision = revision
        .map(str::to_string)
        .or(mref.revision.clone())
        .unwrap_or_else(|| "main".into());
    if !tenpak_hooks::is_revision(&revision) {
        return Err(bad(format!(
            "revision {revision:?} is not a branch, tag or commit name"
        )));
    }
    let access = match ctx.hub.access(&mref.repo, &revision).await {
        Ok(a) => a,
        Err(e) => {
            let status = match &e {
                tenpak::Error::Hub {
                    status: Some(s), ..
                } if *s == 404 || *s == 401 || *s == 403 => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            tracing::warn!("{}: {e}", mref.repo);
            return Err(error(
                status,
                format!("{}@{revision} cannot be read on the Hub", mref.repo),
            ));
        }
    };
    if access.restricted() && !ctx.settings.allow_private {
        return Err(AppError::Restricted(format!(
            "{} is {}: its weights are not republished (allow_private is off)",
            mref.repo,
            access.describe()
        ))
        .into_response());
    }
    Ok((mref.repo, access.commit))
}

/// A URL the registry may fetch: http(s), its host (`host` or `host:port`) listed in
/// `evaluate_url_hosts`.
fn allowed_url(ctx: &Ctx, url: &str) -> Result<(), AppError> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(AppError::BadRequest("url: only http and https URLs".into()));
    }
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| AppError::BadRequest(format!("url {url:?} is not a URL")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(AppError::BadRequest("url: only http and https URLs".into()));
    }
    let Some(auth) = uri.authority() else {
        return Err(AppError::BadRequest("url: no host".into()));
    };
    if auth.as_str().contains('@') {
        return Err(AppError::BadRequest(
            "url: credentials in URLs are refused".into(),
        ));
    }
    let hosts = &ctx.settings.evaluate_url_hosts;
    if !hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(auth.host()) || h.eq_ignore_ascii_case(auth.as_str()))
    {
        return Err(AppError::Forbidden(format!(
            "url: host {} is not one this registry fetches from (evaluate_url_hosts: {})",
            auth.as_str(),
            if hosts.is_empty() {
                "none".to_string()
            } else {
                hosts.join(", ")
            }
        )));
    }
    Ok(())
}

/// Queues an analysis job whose idempotency key is the sha256 of its stored request:
/// the same request again finds the same job (or retries it, when it failed).
async fn enqueue_analysis(
    ctx: &Arc<Ctx>,
    kind: &'static str,
    repo: String,
    revision: String,
    params: serde_json::Value,
) -> Response {
    let params_s = params.to_string();
    let key = format!(
        "{kind}:{}",
        hex::encode(sha2::Sha256::digest(params_s.as_bytes()))
    );
    let (repo2, rev2) = (repo.clone(), revision.clone());
    let en = match db(ctx, move |s| {
        let en = s.enqueue(&NewJob {
            key: &key,
            repo: &repo2,
            revision: &rev2,
            targets: "",
            origin: "api",
            companion: "",
            kind,
            params: Some(&params_s),
        })?;
        retry_failed(s, en)
    })
    .await
    {
        Ok(en) => en,
        Err(e) => return e.into_response(),
    };
    let id = en.job.id;
    let answer = Answer {
        created: Some(en.created),
        retried: Some(en.retried),
        repo: Some(repo),
        revision: (!revision.is_empty()).then_some(revision),
        result_url: Some(format!("/{kind}/{id}")),
        ..Answer::default()
    };
    enqueued(ctx, &en, answer)
}

/// `POST /evaluate` → an `evaluate` job: the perplexity of a Hub model, a stored
/// artifact or a `.tnpk` URL on a text (named or uploaded), `samples` windows of `ctx`
/// tokens, the rule of `tenpak eval` (same windows, same numbers); with
/// `compare_source`, the artifact's source model on the same windows too.
#[utoipa::path(post, path = "/evaluate", tag = "studio", request_body = EvaluateRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The same request was made before: its job", body = Answer),
        (status = 202, description = "Queued; the result will be at `result_url`", body = Answer),
        (status = 400, description = "Bad request (fields, sizes, unknown text)", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token, a private or gated model, or a URL host not allowed", body = ErrorBody),
        (status = 404, description = "No such model, revision or artifact", body = ErrorBody),
        (status = 502, description = "The Hub could not be asked", body = ErrorBody)))]
pub(super) async fn evaluate(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: EvaluateRequest = match authorized_json(&ctx, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let samples = req.samples.unwrap_or(DEFAULT_SAMPLES);
    let ctx_len = req.ctx.unwrap_or(DEFAULT_CTX);
    if samples == 0 || ctx_len < 2 || samples.saturating_mul(ctx_len) > MAX_EVAL_TOKENS {
        return bad(format!(
            "samples and ctx must be positive (ctx at least 2) with samples × ctx at most {MAX_EVAL_TOKENS}"
        ));
    }
    let compare_source = req.compare_source.unwrap_or(false);
    let (subject, repo, revision) = match (&req.model_id, &req.artifact_id, &req.url) {
        (Some(m), None, None) => {
            if compare_source {
                return bad(
                    "compare_source applies to an artifact_id or url (a model is its own source)",
                );
            }
            match resolve_model(&ctx, m, req.revision.as_deref()).await {
                Ok((repo, commit)) => (
                    Subject::Model {
                        repo: repo.clone(),
                        commit: commit.clone(),
                    },
                    repo,
                    commit,
                ),
                Err(r) => return r,
            }
        }
        (None, Some(a), None) => {
            let a = a.trim_start_matches("sha256:").to_ascii_lowercase();
            if a.len() != 64 || !a.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("artifact_id is 64 hex digits");
            }
            let a2 = a.clone();
            match db(&ctx, move |s| s.artifact(&a2)).await {
                Ok(Some(_)) => {}
                Ok(None) => return error(StatusCode::NOT_FOUND, format!("no artifact {a}")),
                Err(e) => return e.into_response(),
            }
            (
                Subject::Artifact { id: a.clone() },
                format!("artifact:{a}"),
                String::new(),
            )
        }
        (None, None, Some(u)) => {
            if let Err(e) = allowed_url(&ctx, u) {
                return e.into_response();
            }
            (Subject::Url { url: u.clone() }, u.clone(), String::new())
        }
        _ => return bad("give exactly one of model_id, artifact_id and url"),
    };
    if req.revision.is_some() && req.model_id.is_none() {
        return bad("revision applies to model_id");
    }
    let text = match text_of(
        &ctx,
        req.text.as_deref(),
        req.text_content.as_deref(),
        "text",
    ) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let params = EvaluateParams {
        subject,
        text,
        samples,
        ctx: ctx_len,
        compare_source,
    };
    let v = serde_json::to_value(&params).unwrap_or_default();
    enqueue_analysis(&ctx, KIND_EVALUATE, repo, revision, v).await
}

/// `POST /optimize` → an `optimize` job: `tenpak optimize` on a Hub model (the same
/// candidates, measurements, cache, constraints and report); the result is the CLI's
/// JSON, the plot at `/optimize/{id}/plot`. Constraints nothing meets are an answer
/// (`chosen: null`, `none_because`), not an error.
#[utoipa::path(post, path = "/optimize", tag = "studio", request_body = OptimizeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The same request was made before: its job", body = Answer),
        (status = 202, description = "Queued; the report will be at `result_url`", body = Answer),
        (status = 400, description = "Bad request (unknown candidate or hardware, bad constraints, unknown text)", body = ErrorBody),
        (status = 401, description = "No bearer token", body = ErrorBody),
        (status = 403, description = "Wrong token, or a private or gated model", body = ErrorBody),
        (status = 404, description = "No such model or revision", body = ErrorBody),
        (status = 502, description = "The Hub could not be asked", body = ErrorBody)))]
pub(super) async fn optimize(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: OptimizeRequest = match authorized_json(&ctx, &headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let candidates = req.candidates.unwrap_or_default();
    if let Err(e) = tenpak::optimize::select(&candidates) {
        return bad(e.to_string().replace("--candidates", "candidates"));
    }
    let hardware = req.hardware.unwrap_or_default();
    let hw = tokio::task::spawn_blocking({
        let c = ctx.clone();
        move || analysis::hardware(&c)
    })
    .await;
    match hw {
        Ok(Ok(all)) => {
            if let Err(e) = tenpak::optimize::pick_hardware(&all, &hardware) {
                return bad(e.to_string().replace("--hardware", "hardware"));
            }
        }
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    }
    let constraints = tenpak::optimize::Constraints {
        max_ppl_delta_pct: req.max_ppl_delta,
        max_latency_ms: req.max_latency,
        min_tokens_per_s: req.min_throughput,
    };
    if let Err(tenpak::Error::InvalidOption { option, reason }) =
        tenpak::optimize::study::check_constraints(&constraints)
    {
        return bad(format!("{option} {reason}"));
    }
    let ctx_len = req.ctx.unwrap_or(DEFAULT_CTX);
    let max_tokens = req.max_tokens.unwrap_or(DEFAULT_OPTIMIZE_TOKENS);
    if ctx_len < 2 || max_tokens < ctx_len || max_tokens > MAX_EVAL_TOKENS {
        return bad(format!(
            "ctx must be at least 2 and max_tokens between ctx and {MAX_EVAL_TOKENS}"
        ));
    }
    let (repo, commit) = match resolve_model(&ctx, &req.model_id, req.revision.as_deref()).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let text = match text_of(
        &ctx,
        req.text.as_deref(),
        req.text_content.as_deref(),
        "text",
    ) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let calib_text = match (&req.calib_text, &req.calib_text_content) {
        (None, None) => None,
        (n, c) => match text_of(&ctx, n.as_deref(), c.as_deref(), "calib_text") {
            Ok(t) => Some(t),
            Err(e) => return e.into_response(),
        },
    };
    let params = OptimizeParams {
        repo: repo.clone(),
        commit: commit.clone(),
        text,
        calib_text,
        candidates,
        hardware,
        constraints,
        ctx: ctx_len,
        max_tokens,
    };
    let v = serde_json::to_value(&params).unwrap_or_default();
    enqueue_analysis(&ctx, KIND_OPTIMIZE, repo, commit, v).await
}

/// An analysis job of `kind` and its stored result.
async fn job_of_kind(
    ctx: &Arc<Ctx>,
    id: &str,
    kind: &'static str,
) -> Result<(Job, Option<serde_json::Value>), Response> {
    let Ok(id) = id.parse::<i64>() else {
        return Err(bad("job id is a number"));
    };
    let found = db(ctx, move |s| {
        Ok(match s.job(id)? {
            Some(j) if j.kind == kind => Some((j, s.result(id)?)),
            _ => None,
        })
    })
    .await;
    match found {
        Ok(Some((job, result))) => {
            let result = match result.map(|r| serde_json::from_str(&r)) {
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => return Err(internal(format!("job {id}'s stored result: {e}"))),
                None => None,
            };
            Ok((job, result))
        }
        Ok(None) => Err(error(StatusCode::NOT_FOUND, format!("no {kind} job {id}"))),
        Err(e) => Err(e.into_response()),
    }
}

/// `GET /evaluate/{id}`: the job and, once done, its perplexities.
#[utoipa::path(get, path = "/evaluate/{id}", tag = "studio",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job and its result (null until done)", body = AnalysisStatus),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 404, description = "No such evaluate job", body = ErrorBody)))]
pub(super) async fn evaluate_status(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> Response {
    match job_of_kind(&ctx, &id, KIND_EVALUATE).await {
        Ok((job, result)) => Json(AnalysisStatus {
            job,
            result,
            plot_url: None,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// `GET /optimize/{id}`: the job and its report (as far as it got while running).
#[utoipa::path(get, path = "/optimize/{id}", tag = "studio",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job and its report (`complete: false` while it runs)", body = AnalysisStatus),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 404, description = "No such optimize job", body = ErrorBody)))]
pub(super) async fn optimize_status(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> Response {
    match job_of_kind(&ctx, &id, KIND_OPTIMIZE).await {
        Ok((job, result)) => Json(AnalysisStatus {
            plot_url: Some(format!("/optimize/{}/plot", job.id)),
            job,
            result,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// `GET /optimize/{id}/plot`: the Pareto plot (SVG) of the report.
#[utoipa::path(get, path = "/optimize/{id}/plot", tag = "studio",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "bits/weight against PPL change, the frontier drawn, the choice marked", content_type = "image/svg+xml", body = String),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 404, description = "No such optimize job, or nothing measured yet", body = ErrorBody)))]
pub(super) async fn optimize_plot(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    let (job, result) = match job_of_kind(&ctx, &id, KIND_OPTIMIZE).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(report) =
        result.and_then(|v| serde_json::from_value::<tenpak::optimize::study::Report>(v).ok())
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("optimize job {} has measured nothing yet", job.id),
        );
    };
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        report.plot_svg(),
    )
        .into_response()
}

/// `GET /optimize/candidates`: what `POST /optimize` may name.
#[utoipa::path(get, path = "/optimize/candidates", tag = "studio",
    responses((status = 200, description = "Candidates and hardware", body = Candidates)))]
pub(super) async fn candidates(State(ctx): State<Arc<Ctx>>) -> Response {
    let hw = tokio::task::spawn_blocking(move || analysis::hardware(&ctx)).await;
    match hw {
        Ok(Ok(hardware)) => Json(Candidates {
            candidates: tenpak::optimize::CANDIDATES
                .iter()
                .map(|c| CandidateInfo {
                    name: c.name.into(),
                    about: c.about.into(),
                    needs_calibration: c.needs_calibration,
                })
                .collect(),
            hardware,
        })
        .into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// `GET /texts`: the named texts requests may use.
#[utoipa::path(get, path = "/texts", tag = "studio",
    responses((status = 200, description = "Named texts", body = Vec<NamedText>)))]
pub(super) async fn texts(State(ctx): State<Arc<Ctx>>) -> Response {
    Json(
        ctx.settings
            .texts
            .iter()
            .map(|(name, p)| NamedText {
                name: name.clone(),
                bytes: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}
