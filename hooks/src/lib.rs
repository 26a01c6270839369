//! `tenpak-hooks`: a Hugging Face Hub webhook delivery in, a registry decision out.
//!
//! - [`Payload`]: the Hub's webhook payload (version 3) as typed structs. Unknown fields
//!   are ignored and the event scope is kept as a string, so new sub-scopes
//!   (`repo.config`, `discussion.comment`, ...) parse, as the Hub's documentation asks of
//!   receivers.
//! - [`check_secret`]: the `X-Webhook-Secret` header against the configured secret,
//!   compared in constant time (missing → 401, wrong → 403).
//! - [`decide`]: a pure function from a payload and a [`Policy`] to [`Decision`]:
//!   "compress repo R at commit S" with an idempotency key, or "ignore, because ...".
//!   The key names the repository and the exact commit, so a redelivered or replayed
//!   webhook, or two events about the same commit, map to one job.
//!
//! Nothing here does I/O; the registry owns the HTTP endpoint and the job store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The header the Hub sends the webhook's secret in, verbatim.
pub const SECRET_HEADER: &str = "x-webhook-secret";

/// The payload version this crate understands.
pub const SUPPORTED_VERSION: u32 = 3;

/// A webhook delivery's JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// What happened.
    pub event: Event,
    /// The repository it happened to.
    pub repo: Repo,
    /// The webhook that sent it.
    pub webhook: Webhook,
    /// Refs changed by a `repo.content` update (branches, tags, PR refs).
    #[serde(default)]
    pub updated_refs: Option<Vec<UpdatedRef>>,
    /// Where a moved repository went (`event.action == "move"`).
    #[serde(default)]
    pub moved_to: Option<MovedTo>,
    /// The discussion or pull request, for `discussion*` scopes.
    #[serde(default)]
    pub discussion: Option<Discussion>,
    /// The comment, for `discussion.comment`.
    #[serde(default)]
    pub comment: Option<serde_json::Value>,
}

/// `event`: an action in a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `create`, `delete`, `update` or `move` (others are kept as they come).
    pub action: String,
    /// `repo`, `repo.content`, `repo.config`, `discussion`, `discussion.comment`, ...
    pub scope: String,
}

/// `repo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Repo {
    /// `model`, `dataset` or `space`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `owner/name`.
    pub name: String,
    /// The Hub's object id of the repository.
    pub id: String,
    /// Whether the repository is private.
    #[serde(default)]
    pub private: bool,
    /// The commit at the head of the default branch after the event.
    #[serde(default, alias = "head_sha")]
    pub head_sha: Option<String>,
    /// Web and API addresses.
    #[serde(default)]
    pub url: Option<Urls>,
    /// The owner's object id.
    #[serde(default)]
    pub owner: Option<ObjectId>,
    /// Repository tags, when the Hub sends them.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// `{ "web": ..., "api": ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Urls {
    /// The page on the Hub.
    pub web: String,
    /// The API address.
    #[serde(default)]
    pub api: Option<String>,
}

/// `{ "id": ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectId {
    /// The Hub's object id.
    pub id: String,
}

/// `webhook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// The webhook's id.
    pub id: String,
    /// Payload version (3).
    pub version: u32,
}

/// One entry of `updatedRefs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdatedRef {
    /// `refs/heads/main`, `refs/tags/v1`, `refs/pr/3`, ...
    #[serde(rename = "ref")]
    pub reference: String,
    /// The commit before (absent when the ref was created).
    #[serde(default)]
    pub old_sha: Option<String>,
    /// The commit after (absent when the ref was deleted).
    #[serde(default)]
    pub new_sha: Option<String>,
}

/// `movedTo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovedTo {
    /// The new `owner/name`.
    pub name: String,
    /// The new owner.
    #[serde(default)]
    pub owner: Option<ObjectId>,
}

/// `discussion` (only what the decision needs; the rest is ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Discussion {
    /// Discussion number.
    pub num: u64,
    /// Whether it is a pull request.
    #[serde(default)]
    pub is_pull_request: bool,
    /// `open`, `closed`, `merged`, `draft`.
    #[serde(default)]
    pub status: Option<String>,
}

/// A delivery that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or required fields missing or of the wrong type.
    #[error("webhook payload is not a Hub v3 payload: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl Payload {
    /// Parses a delivery body.
    pub fn parse(body: &[u8]) -> Result<Self, PayloadError> {
        Ok(serde_json::from_slice(body)?)
    }
}

/// Why a delivery's secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No `X-Webhook-Secret` header (answer 401).
    #[error("missing X-Webhook-Secret header")]
    Missing,
    /// A secret that does not match (answer 403).
    #[error("wrong webhook secret")]
    Wrong,
}

impl SecretError {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Self::Missing => 401,
            Self::Wrong => 403,
        }
    }
}

/// Checks the delivery's `X-Webhook-Secret` value against the configured secret.
///
/// The comparison takes time independent of where the values differ (lengths are
/// compared through their sha256, so the expected length does not leak either).
pub fn check_secret(expected: &str, received: Option<&str>) -> Result<(), SecretError> {
    let Some(received) = received else {
        return Err(SecretError::Missing);
    };
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(received.as_bytes());
    if bool::from(a.ct_eq(&b)) {
        Ok(())
    } else {
        Err(SecretError::Wrong)
    }
}

/// What the registry compresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The branch whose updates are compressed (`main`).
    pub branch: String,
    /// Whether private repositories are compressed (their companions would be public
    /// unless the publisher makes them private; off by default).
    pub allow_private: bool,
    /// Repositories whose name ends with this are the registry's own companion repos
    /// and are never compressed (otherwise publishing would trigger itself).
    pub companion_suffix: String,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            branch: "main".into(),
            allow_private: false,
            companion_suffix: "-tnpk".into(),
        }
    }
}

/// The outcome of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Compress `repo` at exactly `revision`.
    Compress {
        /// `owner/name` of the model repository.
        repo: String,
        /// The full commit sha to fetch.
        revision: String,
        /// Same for every delivery about this repository at this commit.
        idempotency_key: String,
    },
    /// Nothing to do.
    Ignore {
        /// Why, in words (logged and returned to the sender).
        reason: String,
    },
}

impl Decision {
    fn ignore(reason: impl Into<String>) -> Self {
        Self::Ignore {
            reason: reason.into(),
        }
    }
}

/// The idempotency key of "compress `repo` at `revision`": a hex sha256, so any
/// repository name fits a database key.
pub fn job_key(repo: &str, revision: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tenpak-job-v1\0model\0");
    h.update(repo.as_bytes());
    h.update(b"\0");
    h.update(revision.as_bytes());
    hex::encode(h.finalize())
}

/// Whether `s` is a full 40-hex commit sha: what the Hub names an exact revision by. The
/// one definition (`tenpak::hub` re-exports it).
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Whether `r` can name a branch, tag or commit of a Hub repository: 1–255 characters of
/// letters, digits, `.`, `_`, `-` and `/`, not starting with `/`, `-` or `.`, not ending
/// with `/`, without `..` or `//` (checked before it goes into a Hub URL).
pub fn is_revision(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && !r.starts_with(['/', '-', '.'])
        && !r.ends_with('/')
        && !r.contains("..")
        && !r.contains("//")
}

/// Whether `s` is a Hub repository id: `owner/name`, each part 1–96 ASCII letters, digits,
/// `-`, `_` or `.`, not starting with `-` or `.` and without `..`. The one definition
/// (`tenpak::hub` uses it for model references and cards).
pub fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            && !p.starts_with(['-', '.'])
            && !p.contains("..")
    };
    matches!(s.split_once('/'), Some((o, n)) if ok(o) && ok(n))
}

/// Decides what a delivery asks of the registry.
pub fn decide(p: &Payload, policy: &Policy) -> Decision {
    if p.webhook.version != SUPPORTED_VERSION {
        return Decision::ignore(format!(
            "webhook payload version {} (this registry reads version {SUPPORTED_VERSION})",
            p.webhook.version
        ));
    }
    if p.repo.kind != "model" {
        return Decision::ignore(format!(
            "{} repositories are not compressed (only models)",
            p.repo.kind
        ));
    }
    if !is_repo_id(&p.repo.name) {
        return Decision::ignore(format!(
            "{:?} is not a Hub repository id (owner/name)",
            p.repo.name
        ));
    }
    if !policy.companion_suffix.is_empty() && p.repo.name.ends_with(&policy.companion_suffix) {
        return Decision::ignore(format!(
            "{} is a companion repository (ends with {})",
            p.repo.name, policy.companion_suffix
        ));
    }
    if p.repo.private && !policy.allow_private {
        return Decision::ignore(format!(
            "{} is private and private repositories are not compressed",
            p.repo.name
        ));
    }
    let scope = p.event.scope.as_str();
    let action = p.event.action.as_str();
    if scope == "discussion" || scope.starts_with("discussion.") {
        return Decision::ignore(format!("{scope} events do not change the model"));
    }
    if scope != "repo.content" {
        // `repo` create/delete/move, `repo.config` and scopes added later.
        let why = match (scope, action) {
            ("repo", "create") => {
                "repository created; its files arrive as repo.content updates".to_string()
            }
            ("repo", "delete") => "repository deleted; published artifacts are kept".to_string(),
            ("repo", "move") => format!(
                "repository moved to {}; published artifacts keep their names",
                p.moved_to.as_ref().map_or("?", |m| m.name.as_str())
            ),
            _ => format!("{scope} {action} does not change the model's files"),
        };
        return Decision::ignore(why);
    }
    if action != "update" {
        return Decision::ignore(format!("repo.content {action} is not a content update"));
    }
    let branch_ref = format!("refs/heads/{}", policy.branch);
    let revision = match &p.updated_refs {
        Some(refs) if !refs.is_empty() => match refs.iter().find(|r| r.reference == branch_ref) {
            Some(r) => match &r.new_sha {
                Some(sha) => sha.clone(),
                None => {
                    return Decision::ignore(format!("{branch_ref} was deleted"));
                }
            },
            None => {
                let names: Vec<&str> = refs.iter().map(|r| r.reference.as_str()).collect();
                return Decision::ignore(format!(
                    "only {} changed, not {branch_ref}",
                    names.join(", ")
                ));
            }
        },
        // An update without refs: the head of the default branch.
        _ => match &p.repo.head_sha {
            Some(sha) => sha.clone(),
            None => return Decision::ignore("content update without headSha or updatedRefs"),
        },
    };
    if !is_commit(&revision) {
        return Decision::ignore(format!("{revision:?} is not a full commit sha"));
    }
    let revision = revision.to_ascii_lowercase();
    Decision::Compress {
        idempotency_key: job_key(&p.repo.name, &revision),
        repo: p.repo.name.clone(),
        revision,
    }
}
