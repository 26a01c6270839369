//! GitHub reports through `octocrab`: where teams review their models next to their
//! code.
//!
//! - [`GitHub::model_report`]: one issue per model ("TenPak: compressed variants of
//!   org/model", label `tenpak`), one comment per revision. A comment carries a hidden
//!   marker naming its revision, so a second report of the same revision (a redelivered
//!   webhook, a retried job) updates that comment instead of adding one, and GitHub
//!   itself is the state: nothing to keep in step on our side.
//! - [`GitHub::sticky_comment`]: one comment on a pull request (or issue) that each run
//!   updates in place (`tenpak report --pr N`).
//! - [`GitHub::upload_release_asset`]: a file streamed into a release as an asset (an
//!   asset of the same name is replaced).
//!
//! Authentication: a token (`GITHUB_TOKEN`), or a GitHub App's installation (app id,
//! private key, installation id: octocrab makes the JWT and fetches installation tokens
//! from `/app/installations/{id}/access_tokens`). Rate limits are honoured as GitHub
//! documents them: a 403/429 with `retry-after` waits that long (secondary limits), one
//! with `x-ratelimit-remaining: 0` waits until `x-ratelimit-reset` (primary limits), a
//! secondary limit without either waits a minute; a wait longer than `max_wait` is an
//! error the caller can retry later ([`GitHubError::is_transient`]).

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use octocrab::Octocrab;
use serde_json::{json, Value};

/// How the client signs in.
#[derive(Clone)]
pub enum GitHubAuth {
    /// A personal access token or `GITHUB_TOKEN` of an Actions run.
    Token(String),
    /// A GitHub App installation.
    App {
        /// The App's id.
        app_id: u64,
        /// Its private key (PEM).
        key_pem: String,
        /// The installation (on the account that owns the repositories written to).
        installation_id: u64,
    },
}

impl std::fmt::Debug for GitHubAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitHubAuth::Token(_) => f.write_str("Token(<redacted>)"),
            GitHubAuth::App {
                app_id,
                installation_id,
                ..
            } => write!(
                f,
                "App {{ app_id: {app_id}, installation_id: {installation_id} }}"
            ),
        }
    }
}

/// Where GitHub is and how to reach it.
#[derive(Debug, Clone)]
pub struct GitHubConfig {
    /// Credentials.
    pub auth: GitHubAuth,
    /// The REST API (default `https://api.github.com`; GitHub Enterprise:
    /// `https://HOST/api/v3`).
    pub api_url: Option<String>,
    /// Release uploads (default `https://uploads.github.com`).
    pub uploads_url: Option<String>,
    /// The longest a rate limit is waited out before giving up.
    pub max_wait: Duration,
}

impl GitHubConfig {
    /// From the environment: `GITHUB_TOKEN`, or `GITHUB_APP_ID` + `GITHUB_APP_KEY` (a PEM
    /// file) + `GITHUB_INSTALLATION_ID`; `GITHUB_API_URL` / `GITHUB_UPLOADS_URL` for
    /// another host. `None` when no credential is set.
    pub fn from_env() -> Result<Option<Self>, GitHubError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let auth = match (
            var("GITHUB_APP_ID"),
            var("GITHUB_APP_KEY"),
            var("GITHUB_INSTALLATION_ID"),
        ) {
            (Some(app), Some(key), Some(inst)) => GitHubAuth::App {
                app_id: app.parse().map_err(|_| {
                    GitHubError::Config(format!("GITHUB_APP_ID {app:?} is not a number"))
                })?,
                key_pem: std::fs::read_to_string(&key)
                    .map_err(|e| GitHubError::Config(format!("GITHUB_APP_KEY {key}: {e}")))?,
                installation_id: inst.parse().map_err(|_| {
                    GitHubError::Config(format!("GITHUB_INSTALLATION_ID {inst:?} is not a number"))
                })?,
            },
            _ => match var("GITHUB_TOKEN") {
                Some(t) => GitHubAuth::Token(t),
                None => return Ok(None),
            },
        };
        Ok(Some(GitHubConfig {
            auth,
            api_url: var("GITHUB_API_URL"),
            uploads_url: var("GITHUB_UPLOADS_URL"),
            max_wait: Duration::from_secs(15 * 60),
        }))
    }
}

/// What went wrong talking to GitHub.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// Bad settings (a repository name, a key).
    #[error("GitHub settings: {0}")]
    Config(String),
    /// GitHub answered with an error.
    #[error("GitHub {method} {route}: HTTP {status}: {message}")]
    Http {
        /// Method.
        method: String,
        /// Path asked for.
        route: String,
        /// Status.
        status: u16,
        /// GitHub's `message`.
        message: String,
    },
    /// A rate limit longer than we wait.
    #[error("GitHub rate limit: retry in {0:?}")]
    RateLimited(Duration),
    /// The connection failed.
    #[error("GitHub: {0}")]
    Transport(String),
    /// An answer without the fields GitHub's documentation promises.
    #[error("GitHub answered {route} with something unexpected: {what}")]
    BadAnswer {
        /// Path asked for.
        route: String,
        /// What was missing.
        what: String,
    },
    /// A local file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl GitHubError {
    /// Worth trying again later (rate limits, GitHub's own failures, the network).
    pub fn is_transient(&self) -> bool {
        match self {
            GitHubError::RateLimited(_) | GitHubError::Transport(_) => true,
            GitHubError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// `owner/repo` on GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    /// Owner (user or organisation).
    pub owner: String,
    /// Repository.
    pub name: String,
}

impl RepoName {
    /// Parses `owner/repo` (GitHub's characters only).
    pub fn parse(s: &str) -> Result<Self, GitHubError> {
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                && p != "."
                && p != ".."
        };
        match s.split_once('/') {
            Some((o, n)) if ok(o) && ok(n) => Ok(RepoName {
                owner: o.into(),
                name: n.into(),
            }),
            _ => Err(GitHubError::Config(format!(
                "{s:?} is not a GitHub repository (owner/repo)"
            ))),
        }
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// What a comment call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new comment (or issue).
    Created,
    /// An existing one edited.
    Updated,
    /// It said that already.
    Unchanged,
}

/// A model report's place on GitHub.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Posted {
    /// Issue (or pull request) number.
    pub issue: u64,
    /// Whether the issue was opened by this call.
    pub issue_created: bool,
    /// Comment id.
    pub comment: u64,
    /// What happened to the comment.
    pub action: Action,
    /// The comment's page.
    pub url: String,
}

/// A release asset.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Asset {
    /// Asset id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Size GitHub recorded.
    pub size: u64,
    /// Where browsers download it.
    pub url: String,
}

/// The label of model issues.
pub const LABEL: &str = "tenpak";

/// The title of a model's issue.
pub fn issue_title(model: &str) -> String {
    format!("TenPak: compressed variants of {model}")
}

/// The hidden line that names what a comment is about.
pub fn marker(key: &str) -> String {
    format!("<!-- tenpak:{key} -->")
}

/// A GitHub client.
pub struct GitHub {
    crab: Octocrab,
    max_wait: Duration,
}

enum Payload<'a> {
    None,
    Json(Value),
    File(&'a Path, u64),
}

const PAGE: usize = 100;
const MAX_PAGES: usize = 20;

impl GitHub {
    /// A client (no request is made yet). Needs a Tokio runtime.
    pub fn new(cfg: &GitHubConfig) -> Result<Self, GitHubError> {
        let mut b = Octocrab::builder()
            .set_connect_timeout(Some(Duration::from_secs(15)))
            .set_read_timeout(Some(Duration::from_secs(120)));
        if let Some(u) = &cfg.api_url {
            b = b
                .base_uri(u.trim_end_matches('/'))
                .map_err(|e| GitHubError::Config(format!("api url {u}: {e}")))?;
        }
        if let Some(u) = &cfg.uploads_url {
            b = b
                .upload_uri(u.trim_end_matches('/'))
                .map_err(|e| GitHubError::Config(format!("uploads url {u}: {e}")))?;
        }
        let crab = match &cfg.auth {
            GitHubAuth::Token(t) => b
                .personal_token(t.clone())
                .build()
                .map_err(|e| GitHubError::Config(e.to_string()))?,
            GitHubAuth::App {
                app_id,
                key_pem,
                installation_id,
            } => {
                let key = octocrab::jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes())
                    .map_err(|e| GitHubError::Config(format!("GitHub App key: {e}")))?;
                b.app((*app_id).into(), key)
                    .build()
                    .map_err(|e| GitHubError::Config(e.to_string()))?
                    .installation((*installation_id).into())
                    .map_err(|e| GitHubError::Config(e.to_string()))?
            }
        };
        Ok(GitHub {
            crab,
            max_wait: cfg.max_wait,
        })
    }

    /// One request, rate limits waited out; the answer's JSON (`Null` for no content).
    async fn call(
        &self,
        method: http::Method,
        route: &str,
        payload: Payload<'_>,
    ) -> Result<Value, GitHubError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = http::Request::builder()
                .method(method.clone())
                .uri(route)
                .header(http::header::ACCEPT, "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .header(
                    http::header::USER_AGENT,
                    concat!("tenpak/", env!("CARGO_PKG_VERSION")),
                );
            let body = match &payload {
                Payload::None => octocrab::OctoBody::empty(),
                Payload::Json(v) => {
                    req = req.header(http::header::CONTENT_TYPE, "application/json");
                    octocrab::OctoBody::from(v.to_string())
                }
                Payload::File(path, len) => {
                    req = req
                        .header(http::header::CONTENT_TYPE, "application/octet-stream")
                        .header(http::header::CONTENT_LENGTH, *len);
                    let f = tokio::fs::File::open(path).await?;
                    let s = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)
                        .map(|r| r.map(http_body::Frame::data));
                    octocrab::OctoBody::new(http_body_util::StreamBody::new(s))
                }
            };
            let req = req
                .body(body)
                .map_err(|e| GitHubError::Config(format!("{route}: {e}")))?;
            let resp = self
                .crab
                .execute(req)
                .await
                .map_err(|e| GitHubError::Transport(format!("{method} {route}: {e}")))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = self
                .crab
                .body_to_string(resp)
                .await
                .map_err(|e| GitHubError::Transport(format!("{method} {route}: {e}")))?;
            if (200..300).contains(&status) {
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text).map_err(|e| GitHubError::BadAnswer {
                    route: route.into(),
                    what: format!("not JSON: {e}"),
                });
            }
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                .unwrap_or_else(|| text.chars().take(200).collect());
            if let Some(wait) = rate_limit_wait(status, &headers, &message) {
                if wait > self.max_wait || attempt >= 6 {
                    return Err(GitHubError::RateLimited(wait));
                }
                tracing::warn!(
                    "GitHub rate limit on {method} {route} ({message}): waiting {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            if status >= 500 && attempt < 3 {
                tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                continue;
            }
            return Err(GitHubError::Http {
                method: method.to_string(),
                route: route.into(),
                status,
                message,
            });
        }
    }

    async fn pages(&self, route: &str) -> Result<Vec<Value>, GitHubError> {
        let mut all = Vec::new();
        let sep = if route.contains('?') { '&' } else { '?' };
        for page in 1..=MAX_PAGES {
            let v = self
                .call(
                    http::Method::GET,
                    &format!("{route}{sep}per_page={PAGE}&page={page}"),
                    Payload::None,
                )
                .await?;
            let items = v
                .as_array()
                .cloned()
                .ok_or_else(|| GitHubError::BadAnswer {
                    route: route.into(),
                    what: "not a list".into(),
                })?;
            let n = items.len();
            all.extend(items);
            if n < PAGE {
                break;
            }
        }
        Ok(all)
    }

    /// The model's issue: found by its title among the `tenpak`-labelled issues (open or
    /// closed), or opened.
    async fn model_issue(&self, repo: &RepoName, model: &str) -> Result<(u64, bool), GitHubError> {
        let title = issue_title(model);
        let issues = self
            .pages(&format!(
                "/repos/{repo}/issues?state=all&labels={LABEL}&sort=created&direction=asc"
            ))
            .await?;
        if let Some(n) = issues
            .iter()
            .filter(|i| i.get("pull_request").is_none())
            .find(|i| i.get("title").and_then(|t| t.as_str()) == Some(title.as_str()))
            .and_then(|i| i.get("number").and_then(|n| n.as_u64()))
        {
            return Ok((n, false));
        }
        let body = format!(
            "{}\nCompressed variants of `{model}` made by the TenPak registry: each revision it \
             packs is reported in a comment below (sizes, bits per weight, perplexity change, \
             digests, links to the files).",
            marker(&format!("model:{model}"))
        );
        let v = self
            .call(
                http::Method::POST,
                &format!("/repos/{repo}/issues"),
                Payload::Json(json!({ "title": title, "body": body, "labels": [LABEL] })),
            )
            .await?;
        let n = v
            .get("number")
            .and_then(|n| n.as_u64())
            .ok_or_else(|| GitHubError::BadAnswer {
                route: format!("/repos/{repo}/issues"),
                what: "no issue number".into(),
            })?;
        Ok((n, true))
    }

    /// The comment on issue `number` that carries `key`'s marker: created, updated in place
    /// or left as it is. `body` gets the marker as its first line.
    pub async fn sticky_comment(
        &self,
        repo: &RepoName,
        number: u64,
        key: &str,
        body: &str,
    ) -> Result<(u64, Action, String), GitHubError> {
        let mark = marker(key);
        let full = format!("{mark}\n{body}");
        let comments = self
            .pages(&format!("/repos/{repo}/issues/{number}/comments"))
            .await?;
        let found = comments.iter().find(|c| {
            c.get("body")
                .and_then(|b| b.as_str())
                .is_some_and(|b| b.contains(&mark))
        });
        let id_url = |v: &Value, route: &str| -> Result<(u64, String), GitHubError> {
            Ok((
                v.get("id")
                    .and_then(|i| i.as_u64())
                    .ok_or_else(|| GitHubError::BadAnswer {
                        route: route.into(),
                        what: "no comment id".into(),
                    })?,
                v.get("html_url")
                    .and_then(|u| u.as_str())
                    .unwrap_or_default()
                    .to_string(),
            ))
        };
        match found {
            Some(c) => {
                let (id, url) = id_url(c, "comments")?;
                if c.get("body").and_then(|b| b.as_str()) == Some(full.as_str()) {
                    return Ok((id, Action::Unchanged, url));
                }
                let route = format!("/repos/{repo}/issues/comments/{id}");
                let v = self
                    .call(
                        http::Method::PATCH,
                        &route,
                        Payload::Json(json!({ "body": full })),
                    )
                    .await?;
                let (id, url) = id_url(&v, &route)?;
                Ok((id, Action::Updated, url))
            }
            None => {
                let route = format!("/repos/{repo}/issues/{number}/comments");
                let v = self
                    .call(
                        http::Method::POST,
                        &route,
                        Payload::Json(json!({ "body": full })),
                    )
                    .await?;
                let (id, url) = id_url(&v, &route)?;
                Ok((id, Action::Created, url))
            }
        }
    }

    /// A model's report for one revision: its issue (opened once), and one comment for
    /// the revision (added once, updated when the report changes).
    pub async fn model_report(
        &self,
        repo: &RepoName,
        model: &str,
        revision: &str,
        body: &str,
    ) -> Result<Posted, GitHubError> {
        let (issue, issue_created) = self.model_issue(repo, model).await?;
        let (comment, action, url) = self
            .sticky_comment(repo, issue, &format!("revision:{model}@{revision}"), body)
            .await?;
        Ok(Posted {
            issue,
            issue_created,
            comment,
            action,
            url,
        })
    }

    /// Streams `path` into release `tag` as asset `name`, replacing an asset of that name.
    pub async fn upload_release_asset(
        &self,
        repo: &RepoName,
        tag: &str,
        name: &str,
        path: &Path,
    ) -> Result<Asset, GitHubError> {
        let route = format!("/repos/{repo}/releases/tags/{}", encode(tag));
        let rel = self.call(http::Method::GET, &route, Payload::None).await?;
        let bad = |what: &str| GitHubError::BadAnswer {
            route: route.clone(),
            what: what.into(),
        };
        let upload = rel
            .get("upload_url")
            .and_then(|u| u.as_str())
            .ok_or_else(|| bad("no upload_url"))?;
        let upload = upload.split('{').next().unwrap_or(upload).to_string();
        if let Some(old) = rel
            .get("assets")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .find(|a| a.get("name").and_then(|n| n.as_str()) == Some(name))
            .and_then(|a| a.get("id").and_then(|i| i.as_u64()))
        {
            self.call(
                http::Method::DELETE,
                &format!("/repos/{repo}/releases/assets/{old}"),
                Payload::None,
            )
            .await?;
        }
        let len = tokio::fs::metadata(path).await?.len();
        let v = self
            .call(
                http::Method::POST,
                &format!("{upload}?name={}", encode(name)),
                Payload::File(path, len),
            )
            .await?;
        Ok(Asset {
            id: v
                .get("id")
                .and_then(|i| i.as_u64())
                .ok_or_else(|| bad("no asset id"))?,
            name: v
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or(name)
                .to_string(),
            size: v.get("size").and_then(|s| s.as_u64()).unwrap_or(0),
            url: v
                .get("browser_download_url")
                .and_then(|u| u.as_str())
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// How long a rate-limited answer asks us to wait, as GitHub documents it; `None` when
/// the answer is no rate limit.
pub fn rate_limit_wait(status: u16, headers: &http::HeaderMap, message: &str) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if let Some(s) = h("retry-after").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(s.max(0.0)));
    }
    if h("x-ratelimit-remaining") == Some("0") {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let reset = h("x-ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(now + 60);
        return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
    }
    let m = message.to_ascii_lowercase();
    (status == 429 || m.contains("rate limit")).then(|| Duration::from_secs(60))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_read_as_github_documents_them() {
        let mut h = http::HeaderMap::new();
        assert_eq!(rate_limit_wait(404, &h, "Not Found"), None);
        assert_eq!(rate_limit_wait(403, &h, "Resource not accessible"), None);
        assert_eq!(
            rate_limit_wait(403, &h, "You have exceeded a secondary rate limit"),
            Some(Duration::from_secs(60))
        );
        h.insert("retry-after", "3".parse().expect("header"));
        assert_eq!(rate_limit_wait(429, &h, ""), Some(Duration::from_secs(3)));
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().expect("header"));
        h.insert("x-ratelimit-reset", "0".parse().expect("header"));
        assert_eq!(
            rate_limit_wait(403, &h, "API rate limit exceeded"),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn repository_names_are_checked() {
        assert_eq!(
            RepoName::parse("acme-ml/models.v2")
                .expect("ok")
                .to_string(),
            "acme-ml/models.v2"
        );
        for bad in ["acme", "a/b/c", "../x", "a/..", "a b/c", "/x", "x/"] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(encode("v1.0/rc 1"), "v1.0%2Frc%201");
    }
}
