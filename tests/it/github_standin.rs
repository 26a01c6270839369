//! A local stand-in for GitHub's REST API (api.github.com and uploads.github.com), for
//! the report tests. It follows these endpoints of the real API, with their request and
//! response shapes (the fields our client and octocrab read):
//!
//! - `GET /repos/{o}/{r}/issues?state=all&labels=L&per_page=N&page=P` — issues, paged;
//!   `POST /repos/{o}/{r}/issues` `{title, body, labels}` → 201 `{id, number, title,
//!   html_url, ...}` ("Issues" REST docs);
//! - `GET /repos/{o}/{r}/issues/{n}/comments?per_page=N&page=P`, `POST` the same
//!   `{body}` → 201, `PATCH /repos/{o}/{r}/issues/comments/{id}` `{body}` → 200 ("Issue
//!   comments"; a pull request's conversation comments are issue comments);
//! - `GET /repos/{o}/{r}/releases/tags/{tag}` → `{id, tag_name, upload_url:
//!   "…/repos/{o}/{r}/releases/{id}/assets{?name,label}", assets}`; `DELETE
//!   /repos/{o}/{r}/releases/assets/{id}` → 204; `POST
//!   /repos/{o}/{r}/releases/{id}/assets?name=N` (the uploads host; raw body,
//!   `Content-Type: application/octet-stream`) → 201 `{id, name, size, state: "uploaded",
//!   browser_download_url}` ("Release assets");
//! - `POST /app/installations/{id}/access_tokens` (Bearer: the App's JWT) → 201 `{token,
//!   expires_at}` ("GitHub Apps": installation access tokens).
//!
//! Every other call must carry `Authorization: Bearer <token>` (or `token <token>`) with
//! the token the test configured, or an installation token it issued: 401 otherwise, as
//! GitHub answers. A test can make the next N calls answer 403 with `retry-after` and
//! GitHub's secondary-rate-limit message, to check that clients wait.

#![allow(dead_code)]

// (Each stand-in includes the server helper; the `it` binary holds both stand-ins.)
#[allow(clippy::duplicate_mod)]
#[path = "standin_server.rs"]
mod server;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// An issue (or pull request) and its comments.
#[derive(Debug, Clone, Default)]
pub struct Issue {
    /// Number.
    pub number: u64,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Labels.
    pub labels: Vec<String>,
    /// A pull request (listed by the issues API too, with `pull_request`).
    pub pull_request: bool,
    /// Comments: (id, body).
    pub comments: Vec<(u64, String)>,
}

/// A release and its assets: (id, name, bytes).
#[derive(Debug, Clone, Default)]
pub struct Release {
    /// Release id.
    pub id: u64,
    /// Tag.
    pub tag: String,
    /// Assets.
    pub assets: Vec<(u64, String, Vec<u8>)>,
}

#[derive(Default)]
struct Inner {
    /// `owner/repo` → issues by number.
    issues: BTreeMap<String, BTreeMap<u64, Issue>>,
    releases: BTreeMap<String, Vec<Release>>,
    next_id: u64,
    installation_tokens: Vec<String>,
    base_url: String,
}

/// The stand-in's state, shared with the test.
#[derive(Clone)]
pub struct GitHubStandIn {
    inner: Arc<Mutex<Inner>>,
    token: String,
    /// The App JWTs seen at the installation-token endpoint.
    pub jwts: Arc<Mutex<Vec<String>>>,
    /// Calls to answer with a secondary rate limit before serving again.
    pub rate_limited: Arc<AtomicUsize>,
    /// Calls refused for a rate limit.
    pub limited: Arc<AtomicUsize>,
    /// Calls made (any endpoint).
    pub calls: Arc<AtomicUsize>,
    /// Calls refused for a missing or wrong token.
    pub unauthorized: Arc<AtomicUsize>,
}

/// A running stand-in.
pub struct Running {
    /// `http://127.0.0.1:PORT` (both the API and the uploads host).
    pub url: String,
    /// Its state.
    pub gh: GitHubStandIn,
    _thread: std::thread::JoinHandle<()>,
}

impl GitHubStandIn {
    /// Adds a pull request (or issue) `number` to `repo`.
    pub fn add_pull(&self, repo: &str, number: u64, title: &str) {
        let mut g = self.inner.lock().expect("lock");
        g.issues.entry(repo.into()).or_default().insert(
            number,
            Issue {
                number,
                title: title.into(),
                pull_request: true,
                ..Issue::default()
            },
        );
    }

    /// Adds a release `tag` to `repo`; its id.
    pub fn add_release(&self, repo: &str, tag: &str) -> u64 {
        let mut g = self.inner.lock().expect("lock");
        g.next_id += 1;
        let id = g.next_id;
        g.releases.entry(repo.into()).or_default().push(Release {
            id,
            tag: tag.into(),
            assets: vec![],
        });
        id
    }

    /// The issues of `repo`, by number.
    pub fn issues(&self, repo: &str) -> Vec<Issue> {
        let g = self.inner.lock().expect("lock");
        g.issues
            .get(repo)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The releases of `repo`.
    pub fn releases(&self, repo: &str) -> Vec<Release> {
        let g = self.inner.lock().expect("lock");
        g.releases.get(repo).cloned().unwrap_or_default()
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let got = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("token "))
            })
            .unwrap_or("");
        got == self.token
            || self
                .inner
                .lock()
                .expect("lock")
                .installation_tokens
                .iter()
                .any(|t| t == got)
    }

    /// The gate every API call passes: counted, rate limits, the token.
    fn gate(&self, headers: &HeaderMap) -> Option<Response> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .rate_limited
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.limited.fetch_add(1, Ordering::SeqCst);
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    [("retry-after", "1")],
                    Json(json!({
                        "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
                    })),
                )
                    .into_response(),
            );
        }
        if !self.authorized(headers) {
            self.unauthorized.fetch_add(1, Ordering::SeqCst);
            return Some(
                (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({ "message": "Bad credentials", "documentation_url": "https://docs.github.com/rest" })),
                )
                    .into_response(),
            );
        }
        None
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({ "message": "Not Found", "documentation_url": "https://docs.github.com/rest" }),
        ),
    )
        .into_response()
}

fn issue_json(base: &str, repo: &str, i: &Issue) -> Value {
    let mut v = json!({
        "id": 1000 + i.number,
        "node_id": format!("I_{}", i.number),
        "number": i.number,
        "title": i.title,
        "body": i.body,
        "state": "open",
        "labels": i.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
        "url": format!("{base}/repos/{repo}/issues/{}", i.number),
        "html_url": format!("https://github.com/{repo}/issues/{}", i.number),
        "comments": i.comments.len(),
    });
    if i.pull_request {
        v["pull_request"] = json!({ "url": format!("{base}/repos/{repo}/pulls/{}", i.number) });
    }
    v
}

fn comment_json(repo: &str, number: u64, id: u64, body: &str) -> Value {
    json!({
        "id": id,
        "node_id": format!("IC_{id}"),
        "body": body,
        "html_url": format!("https://github.com/{repo}/issues/{number}#issuecomment-{id}"),
        "user": { "login": "tenpak-bot", "id": 1, "type": "Bot" },
    })
}

fn page<T: Clone>(items: &[T], q: &BTreeMap<String, String>) -> Vec<T> {
    let per = q
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let p = q
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    items
        .iter()
        .skip((p - 1) * per)
        .take(per)
        .cloned()
        .collect()
}

async fn list_issues(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath((o, r)): UrlPath<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(x) = gh.gate(&headers) {
        return x;
    }
    let repo = format!("{o}/{r}");
    let g = gh.inner.lock().expect("lock");
    let label = q.get("labels").cloned();
    let all: Vec<Value> = g
        .issues
        .get(&repo)
        .map(|m| {
            m.values()
                .filter(|i| label.as_ref().is_none_or(|l| i.labels.contains(l)))
                .map(|i| issue_json(&g.base_url, &repo, i))
                .collect()
        })
        .unwrap_or_default();
    Json(page(&all, &q)).into_response()
}

async fn create_issue(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath((o, r)): UrlPath<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(x) = gh.gate(&headers) {
        return x;
    }
    let Some(title) = body.get("title").and_then(|t| t.as_str()) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "Validation Failed"})),
        )
            .into_response();
    };
    let repo = format!("{o}/{r}");
    let mut g = gh.inner.lock().expect("lock");
    let issues = g.issues.entry(repo.clone()).or_default();
    let number = issues.keys().max().copied().unwrap_or(0) + 1;
    let i = Issue {
        number,
        title: title.into(),
        body: body
            .get("body")
            .and_then(|b| b.as_str())
            .unwrap_or("")
            .into(),
        labels: body
            .get("labels")
            .and_then(|l| l.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        ..Issue::default()
    };
    issues.insert(number, i.clone());
    let base = g.base_url.clone();
    (StatusCode::CREATED, Json(issue_json(&base, &repo, &i))).into_response()
}

async fn list_comments(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(x) = gh.gate(&headers) {
        return x;
    }
    let repo = format!("{o}/{r}");
    let g = gh.inner.lock().expect("lock");
    match g.issues.get(&repo).and_then(|m| m.get(&n)) {
        Some(i) => {
            let all: Vec<Value> = i
                .comments
                .iter()
                .map(|(id, b)| comment_json(&repo, n, *id, b))
                .collect();
            Json(page(&all, &q)).into_response()
        }
        None => not_found(),
    }
}

async fn create_comment(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath((o, r, n)): UrlPath<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(x) = gh.gate(&headers) {
        return x;
    }
    let repo = format!("{o}/{r}");
    let text = body
        .get("body")
        .and_then(|b| b.as_str())
        .unwrap_or("")
        .to_string();
    let mut g = gh.inner.lock().expect("lock");
    g.next_id += 1;
    let id = g.next_id;
    match g.issues.get_mut(&repo).and_then(|m| m.get_mut(&n)) {
        Some(i) => {
            i.comments.push((id, text.clone()));
            (StatusCode::CREATED, Json(comment_json(&repo, n, id, &text))).into_response()
        }
        None => not_found(),
    }
}

async fn edit_comment(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath((o, r, id)): UrlPath<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(x) = gh.gate(&headers) {
        return x;
    }
    let repo = format!("{o}/{r}");
    let text = body
        .get("body")
        .and_then(|b| b.as_str())
        .unwrap_or("")
        .to_string();
    let mut g = gh.inner.lock().expect("lock");
    for i in g
        .issues
        .get_mut(&repo)
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        if let Some(c) = i.comments.iter_mut().find(|c| c.0 == id) {
            c.1 = text.clone();
            return Json(comment_json(&repo, i.number, id, &text)).into_response();
        }
    }
    not_found()
}

fn release_json(base: &str, repo: &str, r: &Release) -> Value {
    json!({
        "id": r.id,
        "tag_name": r.tag,
        "url": format!("{base}/repos/{repo}/releases/{}", r.id),
        "html_url": format!("https://github.com/{repo}/releases/tag/{}", r.tag),
        "upload_url": format!("{base}/repos/{repo}/releases/{}/assets{{?name,label}}", r.id),
        "assets": r.assets.iter().map(|(id, name, b)| json!({
            "id": id, "name": name, "size": b.len(), "state": "uploaded",
            "browser_download_url": format!("{base}/download/{repo}/{}/{name}", r.tag),
        })).collect::<Vec<_>>(),
    })
}

async fn release_by_tag(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath((o, r, tag)): UrlPath<(String, String, String)>,
) -> Response {
    if let Some(x) = gh.gate(&headers) {
        return x;
    }
    let repo = format!("{o}/{r}");
    let g = gh.inner.lock().expect("lock");
    match g
        .releases
        .get(&repo)
        .and_then(|v| v.iter().find(|x| x.tag == tag))
    {
        Some(rel) => Json(release_json(&g.base_url, &repo, rel)).into_response(),
        None => not_found(),
    }
}

async fn delete_asset(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath((o, r, id)): UrlPath<(String, String, u64)>,
) -> Response {
    if let Some(x) = gh.gate(&headers) {
        return x;
    }
    let repo = format!("{o}/{r}");
    let mut g = gh.inner.lock().expect("lock");
    for rel in g.releases.get_mut(&repo).into_iter().flatten() {
        if let Some(k) = rel.assets.iter().position(|a| a.0 == id) {
            rel.assets.remove(k);
            return StatusCode::NO_CONTENT.into_response();
        }
    }
    not_found()
}

async fn upload_asset(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath((o, r, rid)): UrlPath<(String, String, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(x) = gh.gate(&headers) {
        return x;
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/octet-stream")
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "Content-Type must be set"})),
        )
            .into_response();
    }
    let Some(name) = q.get("name").cloned() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "name is required"})),
        )
            .into_response();
    };
    let repo = format!("{o}/{r}");
    let mut g = gh.inner.lock().expect("lock");
    g.next_id += 1;
    let id = g.next_id;
    let base = g.base_url.clone();
    let Some(rel) = g
        .releases
        .get_mut(&repo)
        .and_then(|v| v.iter_mut().find(|x| x.id == rid))
    else {
        return not_found();
    };
    if rel.assets.iter().any(|a| a.1 == name) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "Validation Failed", "errors": [{"resource": "ReleaseAsset", "code": "already_exists", "field": "name"}]})),
        )
            .into_response();
    }
    rel.assets.push((id, name.clone(), body.to_vec()));
    (
        StatusCode::CREATED,
        Json(json!({
            "id": id, "name": name, "size": body.len(), "state": "uploaded",
            "content_type": "application/octet-stream",
            "browser_download_url": format!("{base}/download/{repo}/{}/{name}", rel.tag),
        })),
    )
        .into_response()
}

async fn installation_token(
    State(gh): State<GitHubStandIn>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    gh.calls.fetch_add(1, Ordering::SeqCst);
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    // A JWT: three base64url parts, its header naming RS256.
    let parts: Vec<&str> = jwt.split('.').collect();
    let header_ok = parts.len() == 3
        && base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[0])
            .ok()
            .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
            .is_some_and(|h| h.get("alg") == Some(&json!("RS256")));
    if !header_ok {
        gh.unauthorized.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "A JSON web token could not be decoded"})),
        )
            .into_response();
    }
    gh.jwts.lock().expect("lock").push(jwt);
    let token = format!("ghs_standin_installation_{id}");
    gh.inner
        .lock()
        .expect("lock")
        .installation_tokens
        .push(token.clone());
    (
        StatusCode::CREATED,
        Json(json!({ "token": token, "expires_at": "2099-01-01T00:00:00Z", "permissions": {"issues": "write"} })),
    )
        .into_response()
}

/// Starts the stand-in; calls must carry `token` (or an installation token it issued).
pub fn start(token: &str) -> Running {
    let gh = GitHubStandIn {
        inner: Arc::new(Mutex::new(Inner::default())),
        token: token.to_string(),
        jwts: Arc::default(),
        rate_limited: Arc::default(),
        limited: Arc::default(),
        calls: Arc::default(),
        unauthorized: Arc::default(),
    };
    let app = Router::new()
        .route("/repos/{o}/{r}/issues", get(list_issues).post(create_issue))
        .route(
            "/repos/{o}/{r}/issues/{n}/comments",
            get(list_comments).post(create_comment),
        )
        .route("/repos/{o}/{r}/issues/comments/{id}", patch(edit_comment))
        .route("/repos/{o}/{r}/releases/tags/{tag}", get(release_by_tag))
        .route("/repos/{o}/{r}/releases/assets/{id}", delete(delete_asset))
        .route(
            "/repos/{o}/{r}/releases/{id}/assets",
            post(upload_asset).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/app/installations/{id}/access_tokens",
            post(installation_token),
        )
        .with_state(gh.clone());
    let (addr, thread) = server::serve(app);
    gh.inner.lock().expect("lock").base_url = format!("http://{addr}");
    Running {
        url: format!("http://{addr}"),
        gh,
        _thread: thread,
    }
}
