//! Manifest and referrers handlers.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{HandlerResult, Query, hv, parse_digest, parse_reference};
use crate::oci::{RepoName, media_types};
use crate::service::{Error, Registry};

const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// end-3: `GET|HEAD /v2/<name>/manifests/<reference>`
pub(super) async fn get_manifest(
    reg: &Registry,
    repo: &RepoName,
    reference: &str,
    headers: &HeaderMap,
    head: bool,
) -> HandlerResult {
    let reference = parse_reference(reference)?;
    let m = reg.get_manifest(repo, &reference).await?;
    let etag = format!("\"{}\"", m.digest);
    let common = [
        (header::CONTENT_TYPE, hv(&m.media_type)),
        (CONTENT_DIGEST, hv(m.digest.as_str())),
        (header::ETAG, hv(&etag)),
        (header::CONTENT_LENGTH, hv(m.payload.len().to_string())),
    ];
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if not_modified {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [common[1].clone(), common[2].clone()],
        )
            .into_response());
    }
    if head {
        return Ok((StatusCode::OK, common).into_response());
    }
    Ok((StatusCode::OK, common, m.payload).into_response())
}

/// end-7: `PUT /v2/<name>/manifests/<reference>`
pub(super) async fn put_manifest(
    reg: &Registry,
    repo: &RepoName,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> HandlerResult {
    let reference = parse_reference(reference)?;
    // The body is read up to the limit rather than refused on its Content-Length, so the client
    // (which is still sending) reads a 413 instead of a reset connection.
    let limit = reg.settings().manifest_max_bytes;
    let bytes = match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(Error::ManifestTooLarge { limit }.into());
        }
        Err(e) => {
            return Err(
                Error::ManifestInvalid(format!("reading the request body failed: {e}")).into(),
            );
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let pushed = reg
        .push_manifest(repo, &reference, content_type, &bytes)
        .await?;
    let mut res = (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                hv(format!("/v2/{repo}/manifests/{}", pushed.digest)),
            ),
            (CONTENT_DIGEST, hv(pushed.digest.as_str())),
            (header::CONTENT_LENGTH, hv("0")),
        ],
    )
        .into_response();
    if let Some(subject) = pushed.subject {
        res.headers_mut()
            .insert("oci-subject", hv(subject.as_str()));
    }
    Ok(res)
}

/// end-9: `DELETE /v2/<name>/manifests/<reference>`
pub(super) async fn delete_manifest(
    reg: &Registry,
    repo: &RepoName,
    reference: &str,
) -> HandlerResult {
    let reference = parse_reference(reference)?;
    reg.delete_manifest(repo, &reference).await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, hv("0"))]).into_response())
}

/// end-12a / end-12b: `GET /v2/<name>/referrers/<digest>[?artifactType=]`
pub(super) async fn get_referrers(
    reg: &Registry,
    repo: &RepoName,
    digest: &str,
    query: &Query,
) -> HandlerResult {
    let digest = parse_digest(digest)?;
    let filter = query.get("artifactType").filter(|a| !a.is_empty());
    let body = reg.referrers(repo, &digest, filter).await?;
    let mut res: Response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, hv(media_types::OCI_INDEX))],
        body,
    )
        .into_response();
    if filter.is_some() {
        res.headers_mut()
            .insert("oci-filters-applied", hv("artifactType"));
    }
    Ok(res)
}
