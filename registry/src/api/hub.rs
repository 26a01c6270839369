//! Hub-compatible reads of the companion repos: model info, tree and resolve, as the
//! Hub answers them (so `HF_ENDPOINT` can point at the registry).

use super::*;

/// A companion revision, as the Hub shows it: one made from a private or gated source
/// exists only for a caller with the API token (to anyone else it is not found, as a
/// private repository on the Hub is).
async fn companion_revision(
    ctx: &Arc<Ctx>,
    headers: &HeaderMap,
    owner: &str,
    name: &str,
    rev: &str,
) -> Result<RepoRevision, Box<Response>> {
    let repo = format!("{owner}/{name}");
    let (repo2, rev2) = (repo.clone(), rev.to_string());
    match db(ctx, move |s| s.revision(&repo2, &rev2)).await {
        Ok(Some(r)) if !r.private || authorize(ctx, headers).is_ok() => Ok(r),
        Ok(_) => Err(Box::new(
            (
                StatusCode::NOT_FOUND,
                [("x-error-code", "RepoNotFound")],
                Json(json!({ "error": format!("Repository {repo} (revision {rev}) not found") })),
            )
                .into_response(),
        )),
        Err(e) => Err(Box::new(e.into_response())),
    }
}

fn model_json(r: &RepoRevision) -> serde_json::Value {
    json!({
        "_id": r.commit,
        "id": r.repo,
        "modelId": r.repo,
        "author": r.repo.split('/').next(),
        "sha": r.commit,
        "private": r.private,
        "disabled": false,
        "gated": false,
        "library_name": "tenpak",
        "tags": ["tenpak", "quantized"],
        "siblings": r.files.iter().map(|f| json!({
            "rfilename": f.path,
            "size": f.size,
            "lfs": f.artifact.as_ref().map(|_| json!({ "sha256": f.sha256, "size": f.size, "pointerSize": 134 })),
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api/models/{owner}/{name}`: the Hub's model-info shape, with `siblings`.
#[utoipa::path(get, path = "/api/models/{owner}/{name}", tag = "hub",
    params(("owner" = String, Path, example = "acme"), ("name" = String, Path, example = "tiny-llama-tnpk")),
    responses((status = 200, description = "Model info as the Hub gives it", body = Object),
              (status = 404, description = "No such companion repo", body = ErrorBody)))]
pub(super) async fn model_info(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    match companion_revision(&ctx, &headers, &owner, &name, "main").await {
        Ok(r) => Json(model_json(&r)).into_response(),
        Err(resp) => *resp,
    }
}

/// `GET /api/models/{owner}/{name}/revision/{rev}`.
#[utoipa::path(get, path = "/api/models/{owner}/{name}/revision/{rev}", tag = "hub",
    params(("owner" = String, Path, example = "acme"), ("name" = String, Path, example = "tiny-llama-tnpk"), ("rev" = String, Path, example = "main")),
    responses((status = 200, description = "Model info at a revision", body = Object),
              (status = 404, description = "No such companion repo or revision", body = ErrorBody)))]
pub(super) async fn model_info_rev(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path((owner, name, rev)): Path<(String, String, String)>,
) -> Response {
    match companion_revision(&ctx, &headers, &owner, &name, &rev).await {
        Ok(r) => Json(model_json(&r)).into_response(),
        Err(resp) => *resp,
    }
}

/// `GET /api/models/{owner}/{name}/tree/{rev}`: the Hub's tree listing (flat repos).
#[utoipa::path(get, path = "/api/models/{owner}/{name}/tree/{rev}", tag = "hub",
    params(("owner" = String, Path, example = "acme"), ("name" = String, Path, example = "tiny-llama-tnpk"), ("rev" = String, Path, example = "main")),
    responses((status = 200, description = "The files", body = Vec<Object>),
              (status = 404, description = "No such companion repo or revision", body = ErrorBody)))]
pub(super) async fn tree(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Path((owner, name, rev)): Path<(String, String, String)>,
) -> Response {
    match companion_revision(&ctx, &headers, &owner, &name, &rev).await {
        Ok(r) => Json(
            r.files
                .iter()
                .map(|f| {
                    let mut v =
                        json!({ "type": "file", "path": f.path, "size": f.size, "oid": f.sha256 });
                    if f.artifact.is_some() {
                        v["lfs"] = json!({ "oid": f.sha256, "size": f.size, "pointerSize": 134 });
                    }
                    v
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(resp) => *resp,
    }
}

/// `GET|HEAD /{owner}/{name}/resolve/{rev}/{path}`: the file, by ranges, with the
/// headers Hub clients read (`ETag`, `X-Repo-Commit`, `X-Linked-Size`, `X-Linked-Etag`).
#[utoipa::path(get, path = "/{owner}/{name}/resolve/{rev}/{path}", tag = "hub",
    params(("owner" = String, Path, example = "acme"), ("name" = String, Path, example = "tiny-llama-tnpk"),
           ("rev" = String, Path, example = "main"), ("path" = String, Path, example = "README.md"),
           ("Range" = Option<String>, Header)),
    responses(
        (status = 200, description = "The file (a model card as Markdown)", content(
            (Vec<u8> = "application/octet-stream"), (String = "text/markdown"))),
        (status = 206, description = "The range asked for", content(
            (Vec<u8> = "application/octet-stream"), (String = "text/markdown"))),
        (status = 404, description = "No such repo, revision or file", body = ErrorBody),
        (status = 416, description = "Unsatisfiable range")))]
pub(super) async fn resolve(
    State(ctx): State<Arc<Ctx>>,
    Path((owner, name, rev, path)): Path<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let r = match companion_revision(&ctx, &headers, &owner, &name, &rev).await {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let Some(f) = r.files.iter().find(|f| f.path == path) else {
        return (
            StatusCode::NOT_FOUND,
            [("x-error-code", "EntryNotFound")],
            Json(json!({ "error": format!("{path} not found in {}/{name}", owner) })),
        )
            .into_response();
    };
    let stored = match &f.artifact {
        Some(id) => {
            let id = id.clone();
            Some(db(&ctx, move |s| s.artifact(&id)).await)
        }
        None => None,
    };
    let pieces = match (&f.artifact, stored) {
        (Some(id), Some(stored)) => match stored {
            Ok(Some(a)) => a.pieces,
            Ok(None) => return internal(format!("artifact {id} missing from the store")),
            Err(e) => return e.into_response(),
        },
        _ => vec![(f.sha256.clone(), f.size)],
    };
    let rep = match ctx.chunks.assemble(&pieces, &f.sha256) {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut h = HeaderMap::new();
    let quoted = format!("\"{}\"", f.sha256);
    for (k, v) in [
        ("x-repo-commit", r.commit.clone()),
        ("x-linked-size", f.size.to_string()),
        ("x-linked-etag", quoted),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    if path.ends_with(".md") {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/markdown; charset=utf-8"),
        );
    }
    tenpak::serve::range_response_with(&rep, &method, &headers, h)
}
