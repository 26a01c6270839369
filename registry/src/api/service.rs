//! What the service is: `/`, its keys, `/metrics` (and the middleware that counts every
//! request).

use super::*;

/// Counts every request in the metrics by the route that matched (bounded labels: the
/// pattern, not the path), with its latency and declared body length.
pub(super) async fn track(
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
pub(super) async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
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

/// `GET /`: what this service is.
#[utoipa::path(get, path = "/", tag = "service",
    responses((status = 200, description = "Service, version, public key, job counts per state, targets, the dashboard's address", body = Object),
              (status = 303, description = "A browser (Accept: text/html) is sent to the dashboard at /ui")))]
pub(super) async fn root(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response {
    // A browser asks for HTML: it gets the dashboard.
    if header(&headers, "accept").is_some_and(|a| a.contains("text/html")) {
        return axum::response::Redirect::to("/ui").into_response();
    }
    let counts = match db(&ctx, |s| s.counts()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
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
        "dashboard": "/ui",
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
pub(super) async fn keys(State(ctx): State<Arc<Ctx>>) -> Response {
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
pub(super) async fn key_file(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        sign::public_key_line(&ctx.key.verifying_key()),
    )
        .into_response()
}
