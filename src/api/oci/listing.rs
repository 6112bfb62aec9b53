//! Tag list and catalog handlers with `n`/`last` pagination and `Link` headers.

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::{HandlerResult, OciError, Query, hv};
use crate::oci::RepoName;
use crate::service::{Page, Principal, Registry};

fn page_params(query: &Query) -> Result<(Option<u32>, Option<&str>), OciError> {
    let n = match query.get("n") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                "n must be a non-negative integer",
            )
        })?),
    };
    Ok((n, query.get("last").filter(|l| !l.is_empty())))
}

fn respond(body: serde_json::Value, page: &Page, base: &str) -> HandlerResult {
    let mut res = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, hv("application/json"))],
        body.to_string(),
    )
        .into_response();
    if let (Some(n), Some(last)) = (page.next, page.items.last()) {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        res.headers_mut().insert(
            header::LINK,
            hv(format!("<{base}?n={n}&last={last}>; rel=\"next\"")),
        );
    }
    Ok(res)
}

/// end-8a / end-8b: `GET /v2/<name>/tags/list[?n=&last=]`
pub(super) async fn list_tags(reg: &Registry, repo: &RepoName, query: &Query) -> HandlerResult {
    let (n, last) = page_params(query)?;
    let page = reg.list_tags(repo, n, last).await?;
    respond(
        json!({ "name": repo.as_str(), "tags": page.items }),
        &page,
        &format!("/v2/{repo}/tags/list"),
    )
}

/// `GET /v2/_catalog[?n=&last=]` (distribution extension).
pub(super) async fn catalog(reg: &Registry, principal: &Principal, query: &Query) -> HandlerResult {
    let (n, last) = page_params(query)?;
    let page = reg.catalog(principal, n, last).await?;
    respond(json!({ "repositories": page.items }), &page, "/v2/_catalog")
}
