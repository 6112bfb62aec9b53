//! Upload handlers: start (with mount and monolithic variants), chunk, status, complete, cancel.

use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{BlobBody, HandlerResult, OciError, Query, content_length, hv, parse_digest};
use crate::oci::{DigestAlgorithm, RepoName};
use crate::service::{ChunkRange, Principal, Registry, UploadStatus};

const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// 202 (or 204 for status) with `Location`, `Range` and `Docker-Upload-UUID`.
fn upload_response(status: StatusCode, repo: &RepoName, up: &UploadStatus) -> Response {
    (
        status,
        [
            (header::LOCATION, hv(upload_location(repo, &up.id))),
            (
                header::RANGE,
                hv(format!("0-{}", up.offset.saturating_sub(1))),
            ),
            (UPLOAD_UUID, hv(&up.id)),
            (header::CONTENT_LENGTH, hv("0")),
        ],
    )
        .into_response()
}

/// 201 for a blob now present in the repository.
fn created_blob(repo: &RepoName, digest: &str) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, hv(format!("/v2/{repo}/blobs/{digest}"))),
            (CONTENT_DIGEST, hv(digest)),
            (header::CONTENT_LENGTH, hv("0")),
        ],
    )
        .into_response()
}

/// end-4a / end-4b / end-11 / end-4c: `POST /v2/<name>/blobs/uploads/[?digest=|?mount=&from=|?digest-algorithm=]`
///
/// `digest-algorithm` (sha256 or sha512) chooses the hash of a chunked session; an unknown one is
/// 400 `DIGEST_INVALID`.
pub(super) async fn start_upload(
    reg: &Registry,
    principal: &Principal,
    repo: &RepoName,
    query: &Query,
    headers: &HeaderMap,
    body: BlobBody,
) -> HandlerResult {
    if let Some(mount) = query.get("mount") {
        let digest = parse_digest(mount)?;
        // A missing or invalid `from` is not an error: the client just gets an upload session.
        if let Some(from) = query.get("from").and_then(|f| f.parse::<RepoName>().ok())
            && let Some(blob) = reg.mount_blob(principal, repo, &from, &digest).await?
        {
            return Ok(created_blob(repo, blob.digest.as_str()));
        }
    } else if let Some(digest) = query.get("digest") {
        let digest = parse_digest(digest)?;
        let blob = reg
            .upload_blob(
                principal,
                repo,
                &digest,
                content_length(headers),
                body.into_stream(),
            )
            .await?;
        return Ok(created_blob(repo, blob.digest.as_str()));
    }
    let alg = match query.get("digest-algorithm") {
        None => DigestAlgorithm::Sha256,
        Some(name) => DigestAlgorithm::from_name(name).ok_or_else(|| {
            OciError::digest_invalid(format!("unsupported digest algorithm {name:?}"))
        })?,
    };
    let up = reg.start_upload(principal, repo, alg).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &up))
}

/// end-13: `GET /v2/<name>/blobs/uploads/<reference>`
pub(super) async fn get_upload(reg: &Registry, repo: &RepoName, id: &str) -> HandlerResult {
    let up = reg.upload_status(repo, id).await?;
    Ok(upload_response(StatusCode::NO_CONTENT, repo, &up))
}

/// Parses `Content-Range: <first>-<last>` (also tolerating a `bytes ` or `bytes=` prefix).
fn parse_content_range(headers: &HeaderMap) -> Result<Option<ChunkRange>, OciError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        OciError::new(
            StatusCode::BAD_REQUEST,
            "BLOB_UPLOAD_INVALID",
            "Content-Range must be <first>-<last>",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let first = a.trim().parse::<u64>().map_err(|_| bad())?;
    let last = b.trim().parse::<u64>().map_err(|_| bad())?;
    Ok(Some(ChunkRange { first, last }))
}

/// end-5: `PATCH /v2/<name>/blobs/uploads/<reference>`
pub(super) async fn patch_upload(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
    headers: &HeaderMap,
    body: BlobBody,
) -> HandlerResult {
    let range = parse_content_range(headers)?;
    let up = reg
        .append_upload(repo, id, range, content_length(headers), body.into_stream())
        .await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &up))
}

/// end-6: `PUT /v2/<name>/blobs/uploads/<reference>?digest=<digest>`
pub(super) async fn complete_upload(
    reg: &Registry,
    repo: &RepoName,
    id: &str,
    query: &Query,
    headers: &HeaderMap,
    body: BlobBody,
) -> HandlerResult {
    let digest = query
        .get("digest")
        .ok_or_else(|| OciError::digest_invalid("the digest query parameter is required"))?;
    let digest = parse_digest(digest)?;
    let blob = reg
        .complete_upload(
            repo,
            id,
            &digest,
            content_length(headers),
            body.into_stream(),
        )
        .await?;
    Ok(created_blob(repo, blob.digest.as_str()))
}

/// end-14 (spec HEAD): `DELETE /v2/<name>/blobs/uploads/<reference>`
pub(super) async fn cancel_upload(reg: &Registry, repo: &RepoName, id: &str) -> HandlerResult {
    reg.cancel_upload(repo, id).await?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, hv("0"))]).into_response())
}
