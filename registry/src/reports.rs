//! GitHub reports of the registry's jobs: for a model an operator mapped to a GitHub
//! repository (`github_repos` in the settings: a Hub owner or `owner/name` → a GitHub
//! `owner/repo`; a model card cannot choose, so strangers cannot make the registry write
//! to their repositories), one issue per model and one comment per revision with the
//! report table, or the failure reason ([`tenpak::github::GitHub::model_report`]).
//!
//! A report never touches its job: it runs as a task of its own after the job ended,
//! retried with back-off (rate limits, GitHub's failures, the network) up to
//! [`ATTEMPTS`] times, and only logged when it gives up. A registry stopped while a report
//! waits sends it at its next start: [`catch_up`] reports again every job of a mapped
//! model that ended within [`CATCH_UP`] (reports are idempotent: a comment that says it
//! already is left alone, so this costs GitHub reads, not comments).

use std::sync::Arc;
use std::time::Duration;

use tenpak::github::{GitHub, RepoName};

use crate::pipeline::Ctx;
use crate::report::{markdown_table, ArtifactDetails};
use crate::store::{off_thread, JobState};

/// Tries per report.
pub const ATTEMPTS: u32 = 6;

/// Reports job `id` in the background, if its model is mapped to a GitHub repository.
pub fn spawn(ctx: Arc<Ctx>, id: i64) {
    let Some(gh) = ctx.github.clone() else { return };
    tokio::spawn(async move { deliver(&ctx, &gh, id).await });
}

/// How far back [`catch_up`] looks.
pub const CATCH_UP: Duration = Duration::from_secs(24 * 3600);

/// At start: the reports of the jobs of mapped models that ended within [`CATCH_UP`]
/// (newest 200 done and 200 failed), one after another, in the background.
pub fn catch_up(ctx: Arc<Ctx>) {
    let Some(gh) = ctx.github.clone() else { return };
    tokio::spawn(async move {
        let since = crate::store::now() - CATCH_UP.as_secs_f64();
        let found = off_thread(&ctx.store, |s| {
            let (mut jobs, _) = s.jobs(Some(JobState::Done), 200, 0)?;
            jobs.extend(s.jobs(Some(JobState::Failed), 200, 0)?.0);
            Ok(jobs)
        })
        .await;
        let jobs = match found {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("GitHub reports at start: job store: {e}");
                return;
            }
        };
        let due: Vec<i64> = jobs
            .iter()
            .filter(|j| j.finished_at.is_some_and(|t| t >= since))
            .filter(|j| ctx.settings.github_repo_for(&j.repo).is_some())
            .filter(|j| j.state == JobState::Failed || j.published_commit.is_some())
            .map(|j| j.id)
            .collect();
        if !due.is_empty() {
            tracing::info!(
                "GitHub reports at start: {} recent job(s) to check",
                due.len()
            );
        }
        for id in due {
            deliver(&ctx, &gh, id).await;
        }
    });
}

/// Posts job `id`'s report, retried with back-off; logs the outcome.
async fn deliver(ctx: &Arc<Ctx>, gh: &GitHub, id: i64) {
    let mut wait = Duration::from_secs(2);
    for attempt in 1..=ATTEMPTS {
        match report(ctx, gh, id).await {
            Ok(Some(what)) => {
                tracing::info!("job {id}: GitHub report {what}");
                return;
            }
            Ok(None) => return,
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tracing::warn!(
                    "job {id}: GitHub report (attempt {attempt}): {e}; again in {wait:?}"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 4).min(Duration::from_secs(600));
            }
            Err(e) => {
                tracing::warn!("job {id}: GitHub report given up: {e}");
                return;
            }
        }
    }
}

/// Posts the report of job `id`; `None` when there is nothing to report (not mapped, not
/// ended).
async fn report(
    ctx: &Arc<Ctx>,
    gh: &GitHub,
    id: i64,
) -> Result<Option<String>, tenpak::github::GitHubError> {
    let found = off_thread(&ctx.store, move |s| {
        let job = s.job(id)?;
        let arts = match &job {
            Some(j) => s.artifact_rows_of_job(j.id)?,
            None => vec![],
        };
        Ok((job, arts))
    })
    .await;
    let (job, arts) = match found {
        Ok((Some(j), a)) => (j, a),
        Ok((None, _)) => return Ok(None),
        Err(e) => {
            return Err(tenpak::github::GitHubError::Transport(format!(
                "job store: {e}"
            )))
        }
    };
    let Some(target) = ctx.settings.github_repo_for(&job.repo) else {
        return Ok(None);
    };
    let repo = RepoName::parse(target)?;
    let hub = ctx.hub.endpoint().trim_end_matches('/').to_string();
    let body = match (job.state, &job.published_commit) {
        (JobState::Done, Some(commit)) => {
            let mut details: Vec<ArtifactDetails> = arts
                .iter()
                .filter_map(|a| a.details.as_deref())
                .filter_map(|d| serde_json::from_str(d).ok())
                .collect();
            details.sort_by(|a, b| a.target.cmp(&b.target));
            format!(
                "### Revision `{}`: published to [{c}]({hub}/{c}) at `{}`\n\n{}\nSigned by the registry key `{}`; \
                 verify with `tenpak verify {hub}/{c}/resolve/{commit}/FILE --key` and the key at the registry's `/keys`.\n",
                job.revision,
                &commit[..12.min(commit.len())],
                markdown_table(&details, &format!("{hub}/{c}/resolve/{commit}", c = job.companion)),
                details.first().map(|d| d.signer.as_str()).unwrap_or("?"),
                c = job.companion,
            )
        }
        (JobState::Failed, _) => format!(
            "### Revision `{}`: failed after {} attempt(s)\n\n```\n{}\n```\n",
            job.revision,
            job.attempts,
            job.error.as_deref().unwrap_or("no reason recorded")
        ),
        _ => return Ok(None),
    };
    let posted = gh
        .model_report(&repo, &job.repo, &job.revision, &body)
        .await?;
    Ok(Some(format!(
        "{:?} on {repo}#{} ({})",
        posted.action, posted.issue, posted.url
    )))
}
