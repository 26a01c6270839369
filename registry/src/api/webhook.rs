//! `POST /webhooks/hub`: the Hub's webhook deliveries.

use super::*;

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
pub(super) async fn webhook(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    let delivery = (
        payload.webhook.id.clone(),
        payload.event.scope.clone(),
        payload.repo.name.clone(),
    );
    match decide(&payload, &policy) {
        Decision::Ignore { reason } => {
            let decision = format!("ignore: {reason}");
            let recorded = db(&ctx, move |s| {
                let (id, scope, name) = delivery;
                s.record_delivery(Some(&id), Some(&scope), Some(&name), &decision, None)
            })
            .await;
            if let Err(e) = recorded {
                return e.into_response();
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
            let (r2, rev2) = (repo.clone(), revision.clone());
            // One trip to the store, off the async threads: the job (new, retried or
            // existing) and the delivery's record.
            let stored = db(&ctx, move |s| {
                let en = s.enqueue(&NewJob {
                    key: &idempotency_key,
                    repo: &r2,
                    revision: &rev2,
                    targets: &targets,
                    origin: "webhook",
                    companion: &companion,
                    kind: crate::store::KIND_AUTO,
                    params: None,
                })?;
                let en = retry_failed(s, en)?;
                let what = match (en.created, en.retried) {
                    (true, _) => "compress",
                    (false, true) => "retry",
                    (false, false) => "duplicate",
                };
                let (id, scope, name) = delivery;
                s.record_delivery(Some(&id), Some(&scope), Some(&name), what, Some(en.job.id))?;
                Ok((en, what))
            })
            .await;
            let (en, what) = match stored {
                Ok(x) => x,
                Err(e) => return e.into_response(),
            };
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
