//! The dashboard (`/ui`): what people look at. Server-rendered HTML (askama templates
//! under `registry/templates/`, escaped by default), charts drawn as SVG on the server,
//! one small script that refreshes the job table (every page works without it), no
//! third-party request (a strict Content-Security-Policy says so to the browser).
//!
//! Pages: jobs (filters, live progress, retry with the API token), companion models,
//! one model (its artifacts, charts, how to load them), and a compress form. Reads are
//! as open as the JSON API's; a private or gated source's companion is not shown (as
//! the Hub-compatible reads hide it without the token); writes take the API token in
//! the form, checked like the bearer token, and never stored.

use std::collections::BTreeMap;
use std::time::Instant;

use askama::Template;
use axum::extract::Form;
use axum::response::Redirect;

use super::*;
use crate::charts::{self, Series};
use crate::report::{human_bytes, ppl_text, short_digest, ArtifactDetails};

/// What every page shows around its content.
struct Chrome {
    version: &'static str,
    key_id: String,
}

fn chrome(ctx: &Ctx) -> Chrome {
    Chrome {
        version: env!("CARGO_PKG_VERSION"),
        key_id: sign::key_id(&ctx.key.verifying_key()),
    }
}

/// A job as a table row shows it.
struct JobRow {
    id: i64,
    repo: String,
    revision: String,
    kind: String,
    base: Option<String>,
    state: String,
    stage: String,
    percent: u32,
    attempts: i64,
    duration: String,
    message: String,
    failed: bool,
    model_page: Option<String>,
    /// An analysis job's result: the optimize page, or an evaluation's JSON.
    result_page: Option<String>,
}

fn duration_text(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{}m {:02.0}s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{}h {:02.0}m", (s / 3600.0).floor(), (s % 3600.0) / 60.0)
    }
}

fn job_row(j: &Job) -> JobRow {
    let end = j.finished_at.unwrap_or_else(crate::store::now);
    JobRow {
        id: j.id,
        repo: j.repo.clone(),
        revision: j.revision.chars().take(12).collect(),
        kind: j.kind.clone(),
        base: j.base.clone(),
        state: j.state.to_string(),
        stage: j.stage.clone(),
        percent: (j.progress.clamp(0.0, 1.0) * 100.0).round() as u32,
        attempts: j.attempts,
        duration: duration_text(end - j.created_at),
        message: j.error.clone().or(j.note.clone()).unwrap_or_default(),
        failed: j.state == JobState::Failed,
        model_page: (j.state == JobState::Done && j.published_commit.is_some())
            .then(|| format!("/ui/models/{}", j.companion)),
        result_page: match j.kind.as_str() {
            crate::store::KIND_OPTIMIZE => Some(format!("/ui/optimize/{}", j.id)),
            crate::store::KIND_EVALUATE if j.state == JobState::Done => {
                Some(format!("/evaluate/{}", j.id))
            }
            _ => None,
        },
    }
}

/// One candidate row of the optimize page.
struct CandidateRow {
    name: String,
    size: String,
    bits: String,
    ppl: String,
    delta: String,
    best: String,
    verdict: String,
    chosen: bool,
    frontier: bool,
}

#[derive(Template)]
#[template(path = "optimize.html")]
struct OptimizePage {
    chrome: Chrome,
    id: i64,
    model: String,
    state: String,
    complete: bool,
    text: String,
    tokens: usize,
    constraints: String,
    chosen: Option<String>,
    none_because: Option<String>,
    estimates_are: String,
    rows: Vec<CandidateRow>,
    skipped: Vec<(String, String)>,
}

/// `GET /ui/optimize/{id}`: an optimize job's report as a page (the table as `tenpak
/// optimize` prints it, and the Pareto plot).
pub(super) async fn optimize_page(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> Response {
    let t0 = Instant::now();
    let Ok(id) = id.parse::<i64>() else {
        return page_error(&ctx, StatusCode::BAD_REQUEST, "job id is a number");
    };
    let found = db(&ctx, move |s| Ok((s.job(id)?, s.result(id)?))).await;
    let (job, result) = match found {
        Ok((Some(j), r)) if j.kind == crate::store::KIND_OPTIMIZE => (j, r),
        Ok(_) => {
            return page_error(
                &ctx,
                StatusCode::NOT_FOUND,
                &format!("no optimize job {id}"),
            )
        }
        Err(e) => return store_error(&ctx, e),
    };
    let report =
        result.and_then(|r| serde_json::from_str::<tenpak::optimize::study::Report>(&r).ok());
    let Some(rep) = report else {
        let msg = match &job.error {
            Some(e) => format!("optimize job {id} {}: {e}", job.state),
            None => format!(
                "optimize job {id} is {} ({}): nothing measured yet",
                job.state, job.stage
            ),
        };
        return page_error(&ctx, StatusCode::NOT_FOUND, &msg);
    };
    let said = rep.constraints.describe();
    let page = OptimizePage {
        chrome: chrome(&ctx),
        id,
        model: rep.model.clone(),
        state: job.state.to_string(),
        complete: rep.complete,
        text: rep.text.clone(),
        tokens: rep.rows.first().map_or(0, |r| r.measured.tokens),
        constraints: if said.is_empty() {
            "none".into()
        } else {
            said.join(", ")
        },
        chosen: rep
            .chosen
            .as_ref()
            .map(|c| format!("{} on {}", c.candidate, c.hardware)),
        none_because: rep.none_because.clone(),
        estimates_are: rep.estimates_are.clone(),
        rows: rep
            .rows
            .iter()
            .map(|r| CandidateRow {
                name: r.measured.candidate.clone(),
                size: human_bytes(r.measured.weight_bytes),
                bits: format!("{:.3}", r.measured.bits_per_weight),
                ppl: format!("{:.4}", r.measured.ppl),
                delta: format!("{:+.2}%", r.ppl_delta_pct),
                best: r.cheapest_text(),
                chosen: r.verdict == "chosen",
                verdict: r.verdict.clone(),
                frontier: r.on_frontier,
            })
            .collect(),
        skipped: rep
            .skipped
            .iter()
            .map(|k| (k.candidate.clone(), k.reason.clone()))
            .collect(),
    };
    html(page.render(), t0)
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    states: Vec<(String, bool)>,
    kinds: Vec<(String, bool)>,
    counts: Vec<(String, i64)>,
    query: String,
    jobs: Vec<JobRow>,
    filtered: bool,
    shown_of: String,
}

#[derive(Template)]
#[template(path = "job_counts.html")]
struct JobCounts {
    counts: Vec<(String, i64)>,
}

/// Jobs per state, every state named (0 where none).
async fn counts_by_state(ctx: &Arc<Ctx>) -> Result<Vec<(String, i64)>, Response> {
    let counts = db(ctx, |s| s.counts())
        .await
        .map_err(|e| store_error(ctx, e))?;
    let by_state: BTreeMap<String, i64> = counts.into_iter().collect();
    Ok(JobState::ALL
        .iter()
        .map(|s| {
            (
                s.to_string(),
                by_state.get(s.as_str()).copied().unwrap_or(0),
            )
        })
        .collect())
}

/// `GET /ui/jobs/counts`: the badges of jobs per state (refreshed by the page's script).
pub(super) async fn job_counts(State(ctx): State<Arc<Ctx>>) -> Response {
    let t0 = Instant::now();
    match counts_by_state(&ctx).await {
        Ok(counts) => html(JobCounts { counts }.render(), t0),
        Err(r) => r,
    }
}

#[derive(Template)]
#[template(path = "job_rows.html")]
struct JobRows {
    jobs: Vec<JobRow>,
    filtered: bool,
}

/// The job list's filters (`/ui?state=failed&kind=delta`).
#[derive(Debug, Deserialize, Default)]
pub(super) struct Filter {
    state: Option<String>,
    kind: Option<String>,
}

/// Jobs looked at for one page: the newest this many, then filtered by kind.
const JOB_WINDOW: i64 = 500;
/// Rows shown.
const JOB_ROWS: usize = 100;

const KINDS: [&str; 6] = [
    crate::store::KIND_AUTO,
    crate::store::KIND_FULL,
    crate::store::KIND_DELTA,
    crate::store::KIND_ADAPTER,
    crate::store::KIND_EVALUATE,
    crate::store::KIND_OPTIMIZE,
];

async fn filtered_jobs(ctx: &Arc<Ctx>, f: &Filter) -> Result<(Vec<JobRow>, i64), Response> {
    let state = match f.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match JobState::parse(s) {
            Some(st) => Some(st),
            None => {
                return Err(page_error(
                    ctx,
                    StatusCode::BAD_REQUEST,
                    &format!("no state {s:?}"),
                ))
            }
        },
    };
    let kind = f.kind.clone().filter(|k| !k.is_empty());
    if let Some(k) = &kind {
        if !KINDS.contains(&k.as_str()) {
            return Err(page_error(
                ctx,
                StatusCode::BAD_REQUEST,
                &format!("no kind {k:?}"),
            ));
        }
    }
    // Without a kind filter the store gives exactly the rows shown (the page's script asks
    // every 2 s); with one, a window of the newest jobs is filtered here.
    let window = if kind.is_some() {
        JOB_WINDOW
    } else {
        JOB_ROWS as i64
    };
    let (jobs, total) = db(ctx, move |s| s.jobs(state, window, 0))
        .await
        .map_err(|e| store_error(ctx, e))?;
    let rows = jobs
        .iter()
        .filter(|j| kind.as_deref().is_none_or(|k| j.kind == k))
        .take(JOB_ROWS)
        .map(job_row)
        .collect();
    Ok((rows, total))
}

fn query_of(f: &Filter) -> String {
    let mut q = Vec::new();
    if let Some(s) = f.state.as_deref().filter(|s| !s.is_empty()) {
        q.push(format!("state={s}"));
    }
    if let Some(k) = f.kind.as_deref().filter(|s| !s.is_empty()) {
        q.push(format!("kind={k}"));
    }
    q.join("&")
}

/// `GET /ui`: the jobs.
pub(super) async fn jobs_page(State(ctx): State<Arc<Ctx>>, Query(f): Query<Filter>) -> Response {
    let t0 = Instant::now();
    let (jobs, total) = match filtered_jobs(&ctx, &f).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let counts = match counts_by_state(&ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let sel = |v: &Option<String>, x: &str| v.as_deref() == Some(x);
    let page = JobsPage {
        chrome: chrome(&ctx),
        states: JobState::ALL
            .iter()
            .map(|s| (s.to_string(), sel(&f.state, s.as_str())))
            .collect(),
        kinds: KINDS
            .iter()
            .map(|k| (k.to_string(), sel(&f.kind, k)))
            .collect(),
        counts,
        query: query_of(&f),
        filtered: f.state.as_deref().is_some_and(|s| !s.is_empty())
            || f.kind.as_deref().is_some_and(|s| !s.is_empty()),
        shown_of: format!("{} shown of {total}", jobs.len()),
        jobs,
    };
    html(page.render(), t0)
}

/// `GET /ui/jobs/rows`: the job table's rows alone (what the page's script refreshes).
pub(super) async fn job_rows(State(ctx): State<Arc<Ctx>>, Query(f): Query<Filter>) -> Response {
    let t0 = Instant::now();
    match filtered_jobs(&ctx, &f).await {
        Ok((jobs, _)) => html(
            JobRows {
                jobs,
                filtered: !query_of(&f).is_empty(),
            }
            .render(),
            t0,
        ),
        Err(r) => r,
    }
}

/// A companion in the list.
struct ModelItem {
    repo: String,
    commit: String,
    files: usize,
    bytes: String,
    published: String,
}

#[derive(Template)]
#[template(path = "models.html")]
struct ModelsPage {
    chrome: Chrome,
    models: Vec<ModelItem>,
}

fn date_text(unix: f64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm), UTC.
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// `GET /ui/models`: every public companion repository, newest first.
pub(super) async fn models_page(State(ctx): State<Arc<Ctx>>) -> Response {
    let t0 = Instant::now();
    let revs = match db(&ctx, |s| s.companions(500)).await {
        Ok(r) => r,
        Err(e) => return store_error(&ctx, e),
    };
    let models = revs
        .iter()
        .filter(|r| !r.private)
        .map(|r| ModelItem {
            repo: r.repo.clone(),
            commit: r.commit.chars().take(12).collect(),
            files: r.files.iter().filter(|f| f.artifact.is_some()).count(),
            bytes: human_bytes(
                r.files
                    .iter()
                    .filter(|f| f.artifact.is_some())
                    .map(|f| f.size)
                    .sum(),
            ),
            published: date_text(r.created_at),
        })
        .collect();
    html(
        ModelsPage {
            chrome: chrome(&ctx),
            models,
        }
        .render(),
        t0,
    )
}

/// One artifact on its model page.
struct ArtifactView {
    target: String,
    file: String,
    url: String,
    bytes: u64,
    size: String,
    bits_quantized: String,
    bits_file: String,
    ratio: String,
    ppl: String,
    signer: String,
    digest: String,
    base: Option<BaseView>,
    note: Option<String>,
    tensors: usize,
    worst: String,
}

struct BaseView {
    repo: String,
    file: String,
    digest: String,
    own: String,
    share: String,
    adapter: bool,
    svg: String,
}

/// Two bars, the full artifact's size and the delta's, as a small SVG (no inline style:
/// the page's policy forbids it).
fn share_svg(delta: u64, full: u64, delta_text: &str, full_text: &str) -> String {
    let w = 600.0;
    let part = if full > 0 {
        (w * delta as f64 / full as f64).clamp(2.0, w)
    } else {
        w
    };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} 52\" width=\"{w}\" height=\"52\" role=\"img\" aria-label=\"delta {delta_text} against a full artifact of {full_text}\">\
<rect x=\"0\" y=\"2\" width=\"{w}\" height=\"22\" fill=\"#d0d5dd\"/>\
<text x=\"6\" y=\"18\" font-size=\"13\" font-family=\"sans-serif\">full artifact · {full_text}</text>\
<rect x=\"0\" y=\"28\" width=\"{part:.1}\" height=\"22\" fill=\"#1f77b4\"/>\
<text x=\"{tx:.1}\" y=\"44\" font-size=\"13\" font-family=\"sans-serif\" fill=\"{ink}\">delta · {delta_text}</text></svg>",
        tx = if part > 0.6 * w { 6.0 } else { part + 6.0 },
        ink = if part > 0.6 * w { "#fff" } else { "#1d2330" },
    )
}

#[derive(Template)]
#[template(path = "model.html")]
struct ModelPage {
    chrome: Chrome,
    repo: String,
    source: String,
    commit: String,
    published: String,
    artifacts: Vec<ArtifactView>,
    bits_chart: Option<String>,
    error_chart: Option<String>,
    load_cli: String,
    load_py: String,
    missing: usize,
}

/// The registry's own address as the browser reached it (for the load commands).
fn origin(headers: &HeaderMap) -> String {
    let host = header(headers, "host").unwrap_or("localhost");
    let proto = header(headers, "x-forwarded-proto").unwrap_or("http");
    let proto = if proto == "https" { "https" } else { "http" };
    format!("{proto}://{host}")
}

/// `GET /ui/models/{owner}/{name}`: a companion's newest revision, its artifacts and
/// charts, and how to load them.
pub(super) async fn model_page(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    let t0 = Instant::now();
    let repo = format!("{owner}/{name}");
    let repo2 = repo.clone();
    let rev = match db(&ctx, move |s| s.revision(&repo2, "main")).await {
        Ok(Some(r)) if !r.private => r,
        Ok(_) => {
            return page_error(
                &ctx,
                StatusCode::NOT_FOUND,
                &format!("no companion repository {repo} here"),
            )
        }
        Err(e) => return store_error(&ctx, e),
    };
    let ids: Vec<String> = rev
        .files
        .iter()
        .filter_map(|f| f.artifact.clone())
        .collect();
    let rows = match db(&ctx, move |s| {
        ids.iter()
            .map(|id| s.artifact(id))
            .collect::<crate::store::Result<Vec<_>>>()
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return store_error(&ctx, e),
    };
    let base_url = origin(&headers);
    let files_url = format!("{base_url}/{repo}/resolve/{}", rev.commit);
    let mut details: Vec<ArtifactDetails> = Vec::new();
    let mut missing = 0;
    let mut source = String::new();
    for row in rows.into_iter().flatten() {
        source = row.source.clone();
        match row
            .details
            .as_deref()
            .and_then(|d| serde_json::from_str::<ArtifactDetails>(d).ok())
        {
            Some(d) => details.push(d),
            None => {
                missing += 1;
                details.push(ArtifactDetails {
                    digest: format!("sha256:{}", row.id),
                    target: row.target.clone(),
                    file: row.path.clone(),
                    bytes: row.size,
                    bits_quantized: row.bits_per_weight,
                    ..Default::default()
                })
            }
        }
    }
    let artifacts = details
        .iter()
        .map(|d| {
            let worst = d
                .tensors
                .iter()
                .filter(|t| t.rel_error.is_finite())
                .max_by(|a, b| a.rel_error.total_cmp(&b.rel_error))
                .map(|t| format!("{:.4} ({})", t.rel_error, t.name))
                .unwrap_or_else(|| "—".into());
            ArtifactView {
                target: d.target.clone(),
                file: d.file.clone(),
                url: format!("{files_url}/{}", d.file),
                bytes: d.bytes,
                size: human_bytes(d.bytes),
                bits_quantized: format!("{:.3}", d.bits_quantized),
                bits_file: if d.bits_file > 0.0 {
                    format!("{:.3}", d.bits_file)
                } else {
                    "—".into()
                },
                ratio: d
                    .ratio()
                    .map(|r| format!("{r:.2}×"))
                    .unwrap_or_else(|| "—".into()),
                ppl: ppl_text(d),
                signer: if d.signer.is_empty() {
                    "—".into()
                } else {
                    d.signer.clone()
                },
                digest: d.digest.clone(),
                base: d.base.as_ref().map(|b| BaseView {
                    repo: b.repo.clone(),
                    file: b.file.clone(),
                    digest: short_digest(&b.digest),
                    own: human_bytes(b.own_bytes),
                    share: if b.own_bytes > 0 {
                        format!("{:.1}%", 100.0 * d.bytes as f64 / b.own_bytes as f64)
                    } else {
                        "—".into()
                    },
                    adapter: b.adapter,
                    svg: share_svg(
                        d.bytes,
                        b.own_bytes,
                        &human_bytes(d.bytes),
                        &human_bytes(b.own_bytes),
                    ),
                }),
                note: d.note.clone(),
                tensors: d.tensors.len(),
                worst,
            }
        })
        .collect();
    let bits_chart = charts::lines(
        "Bits per weight, per layer",
        "layer",
        "bits/weight",
        &details
            .iter()
            .map(|d| Series {
                name: d.target.clone(),
                points: d
                    .bits_per_layer()
                    .into_iter()
                    .map(|(l, b)| (l as f64, b))
                    .collect(),
            })
            .collect::<Vec<_>>(),
    );
    let error_chart = charts::lines(
        "Relative error per tensor (‖W − Ŵ‖ / ‖W‖)",
        "tensor (write order)",
        "relative error",
        &details
            .iter()
            .map(|d| Series {
                name: d.target.clone(),
                points: d
                    .tensors
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (i as f64, t.rel_error))
                    .collect(),
            })
            .collect::<Vec<_>>(),
    );
    let first = details.first();
    let load_cli = match first {
        Some(d) => {
            let url = format!("{files_url}/{}", d.file);
            let base = d
                .base
                .as_ref()
                .map(|b| format!(" --base {base_url}/{}/resolve/main/{}", b.repo, b.file))
                .unwrap_or_default();
            format!(
                "tenpak info {url}{base}\ntenpak verify {url}{base}\ntenpak unpack {url}{base} -o ./{}",
                name
            )
        }
        None => String::new(),
    };
    let load_py = match first {
        Some(d) => format!(
            "HF_ENDPOINT={base_url} python -c \"from huggingface_hub import hf_hub_download; print(hf_hub_download('{repo}', '{}', revision='{}'))\"",
            d.file, rev.commit
        ),
        None => String::new(),
    };
    html(
        ModelPage {
            chrome: chrome(&ctx),
            source,
            commit: rev.commit.clone(),
            published: date_text(rev.created_at),
            repo,
            artifacts,
            bits_chart,
            error_chart,
            load_cli,
            load_py,
            missing,
        }
        .render(),
        t0,
    )
}

#[derive(Template)]
#[template(path = "compress.html")]
struct CompressPage {
    chrome: Chrome,
    targets: Vec<(String, bool)>,
    model_id: String,
}

/// `GET /ui/compress`: the form.
pub(super) async fn compress_form(State(ctx): State<Arc<Ctx>>) -> Response {
    let t0 = Instant::now();
    let defaults: Vec<&str> = ctx
        .settings
        .targets
        .iter()
        .map(|t| target_name(*t))
        .collect();
    html(
        CompressPage {
            chrome: chrome(&ctx),
            targets: ["quality", "balanced", "size"]
                .iter()
                .map(|t| (t.to_string(), defaults.contains(t)))
                .collect(),
            model_id: String::new(),
        }
        .render(),
        t0,
    )
}

/// The compress form's fields (`application/x-www-form-urlencoded`; a checkbox per target
/// arrives as `quality=on`).
#[derive(Debug, Deserialize)]
pub(super) struct CompressForm {
    model_id: String,
    #[serde(default)]
    revision: String,
    #[serde(default)]
    token: String,
    quality: Option<String>,
    balanced: Option<String>,
    size: Option<String>,
}

fn token_ok(ctx: &Ctx, token: &str) -> Result<(), Box<Response>> {
    let got = (!token.is_empty()).then_some(token);
    match check_secret(&ctx.settings.api_token, got) {
        Ok(()) => Ok(()),
        Err(tenpak_hooks::SecretError::Missing) => Err(Box::new(page_error(
            ctx,
            StatusCode::UNAUTHORIZED,
            "the API token is needed for this",
        ))),
        Err(tenpak_hooks::SecretError::Wrong) => Err(Box::new(page_error(
            ctx,
            StatusCode::FORBIDDEN,
            "wrong API token",
        ))),
    }
}

/// `POST /ui/compress`: queue a job as `POST /compress` does, then show it in the list.
pub(super) async fn compress_submit(
    State(ctx): State<Arc<Ctx>>,
    Form(f): Form<CompressForm>,
) -> Response {
    if let Err(r) = token_ok(&ctx, &f.token) {
        return *r;
    }
    let targets: Vec<&str> = [
        ("quality", &f.quality),
        ("balanced", &f.balanced),
        ("size", &f.size),
    ]
    .iter()
    .filter(|(_, v)| v.is_some())
    .map(|(t, _)| *t)
    .collect();
    let req = super::studio::CompressRequest {
        model_id: f.model_id.trim().to_string(),
        revision: Some(f.revision.trim().to_string()).filter(|r| !r.is_empty()),
        target: (!targets.is_empty()).then(|| targets.join(",")),
    };
    match super::studio::start_compress(&ctx, req).await {
        Ok((en, _)) => {
            wake_for(&ctx, &en);
            Redirect::to(&format!("/ui?highlight={0}#job-{0}", en.job.id)).into_response()
        }
        Err(resp) => error_page_from(&ctx, resp).await,
    }
}

/// The retry button's form.
#[derive(Debug, Deserialize)]
pub(super) struct TokenForm {
    #[serde(default)]
    token: String,
}

/// `POST /ui/jobs/{id}/retry`: a failed job back to the queue (the API token in the form).
pub(super) async fn retry_submit(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<i64>,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Err(r) = token_ok(&ctx, &f.token) {
        return *r;
    }
    match db(&ctx, move |s| s.retry(id)).await {
        Ok(Some((_, true))) => {
            ctx.wake.notify_one();
            Redirect::to(&format!("/ui?highlight={id}#job-{id}")).into_response()
        }
        Ok(Some((job, false))) => page_error(
            &ctx,
            StatusCode::CONFLICT,
            &format!("job {id} is {}; only a failed job is retried", job.state),
        ),
        Ok(None) => page_error(&ctx, StatusCode::NOT_FOUND, &format!("no job {id}")),
        Err(e) => store_error(&ctx, e),
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    chrome: Chrome,
    status: u16,
    reason: String,
    message: String,
}

fn page_error(ctx: &Ctx, status: StatusCode, message: &str) -> Response {
    let page = MessagePage {
        chrome: chrome(ctx),
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("error").to_string(),
        message: message.to_string(),
    };
    let mut r = html(page.render(), Instant::now());
    *r.status_mut() = status;
    r
}

/// The job store failed: 503 when it cannot be reached now, else 500 with an incident
/// note (the cause only in the log, as the JSON API does).
fn store_error(ctx: &Ctx, e: AppError) -> Response {
    match e {
        AppError::Unavailable(_) => page_error(
            ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            "the job store cannot be reached now; try again in a moment",
        ),
        AppError::Internal(cause) => {
            tracing::error!("dashboard: {cause}");
            page_error(
                ctx,
                StatusCode::INTERNAL_SERVER_ERROR,
                "the job store failed",
            )
        }
        other => page_error(
            ctx,
            other.status_code().0,
            "the job store refused the request",
        ),
    }
}

/// An API error answer (JSON `{error}`) as a page with the same status.
async fn error_page_from(ctx: &Ctx, resp: Response) -> Response {
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    page_error(ctx, status, &message)
}

/// The headers every dashboard answer carries: no third-party request (only this
/// origin's script and style, SVG inline), no framing, no referrer, and how long the
/// page took to render (`Server-Timing`).
fn html(rendered: askama::Result<String>, t0: Instant) -> Response {
    match rendered {
        Ok(body) => {
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
                    (header::CONTENT_SECURITY_POLICY, CSP.to_string()),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                    (header::REFERRER_POLICY, "no-referrer".to_string()),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                    (
                        header::HeaderName::from_static("server-timing"),
                        format!("render;dur={ms:.2}"),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => internal(e),
    }
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `GET /ui/static/{file}`: the stylesheet and the script, built into the binary.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let (ty, body) = match file.as_str() {
        "style.css" => (
            "text/css; charset=utf-8",
            include_str!("../../templates/style.css"),
        ),
        "live.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../../templates/live.js"),
        ),
        _ => return error(StatusCode::NOT_FOUND, format!("no asset {file}")),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations_read_as_people_write_them() {
        assert_eq!(date_text(0.0), "1970-01-01 00:00 UTC");
        assert_eq!(date_text(1_764_547_200.0 + 3_660.0), "2025-12-01 01:01 UTC");
        assert_eq!(duration_text(4.25), "4.2 s");
        assert_eq!(duration_text(125.0), "2m 05s");
        assert_eq!(duration_text(7_260.0), "2h 01m");
    }
}
