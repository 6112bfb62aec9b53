//! Blob handlers.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{HandlerResult, hv, parse_digest};
use crate::oci::RepoName;
use crate::service::{ByteRange, Registry};

/// Parses a `Range` header. `Ok(None)`: no range, or one we may ignore (other units, several
/// ranges). `Err`: a malformed `bytes=` range, answered with 416.
fn parse_range(headers: &HeaderMap) -> Result<Option<ByteRange>, ()> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?.trim();
    let Some(spec) = value.strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.trim().split_once('-').ok_or(())?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| ());
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => Err(()),
        (true, false) => Ok(Some(ByteRange::Suffix(num(b)?))),
        (false, true) => Ok(Some(ByteRange::From {
            first: num(a)?,
            last: None,
        })),
        (false, false) => Ok(Some(ByteRange::From {
            first: num(a)?,
            last: Some(num(b)?),
        })),
    }
}

/// Whether `If-None-Match` names this blob: its entity tag (`"<digest>"`, weak or not), the bare
/// digest (some clients leave the quotes off), or `*`. A blob's content never changes, so a match
/// is always a 304.
fn if_none_match(headers: &HeaderMap, digest: &crate::oci::Digest) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(tag)
        })
        .any(|tag| tag == "*" || tag == digest.as_str())
}

/// end-2: `GET|HEAD /v2/<name>/blobs/<digest>`
pub(super) async fn get_blob(
    reg: &Registry,
    repo: &RepoName,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> HandlerResult {
    let digest = parse_digest(digest)?;
    let etag = format!("\"{digest}\"");
    if if_none_match(headers, &digest) {
        // Only a blob this repository holds is "not modified"; anything else answers as usual.
        reg.stat_blob(repo, &digest).await?;
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, hv(&etag)),
                (header::CACHE_CONTROL, hv("max-age=31536000")),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    hv(digest.as_str()),
                ),
            ],
        )
            .into_response());
    }
    if head {
        let blob = reg.stat_blob(repo, &digest).await?;
        return Ok((
            StatusCode::OK,
            [
                (header::CONTENT_LENGTH, hv(blob.size.to_string())),
                (header::CONTENT_TYPE, hv("application/octet-stream")),
                (header::ACCEPT_RANGES, hv("bytes")),
                (header::ETAG, hv(&etag)),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    hv(digest.as_str()),
                ),
            ],
        )
            .into_response());
    }
    // Redirected downloads: the client sends its `Range` header (if any) to the storage URL, whose
    // signature does not cover it. The URL carries its own signature, so no registry credential is
    // needed or wanted there.
    if let Some(url) = reg.blob_download_url(repo, &digest).await? {
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, hv(url)),
                (header::CACHE_CONTROL, hv("no-store")),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    hv(digest.as_str()),
                ),
                (header::CONTENT_LENGTH, hv("0")),
            ],
        )
            .into_response());
    }
    let range = match parse_range(headers) {
        Ok(r) => r,
        Err(()) => {
            let size = reg.stat_blob(repo, &digest).await?.size;
            return Err(crate::service::Error::RangeInvalid { size }.into());
        }
    };
    let read = reg.read_blob(repo, &digest, range).await?;
    let size = read.blob.size;
    let mut res = Response::new(Body::from_stream(read.body));
    if read.range.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, hv("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, hv("bytes"));
    h.insert(header::ETAG, hv(&etag));
    h.insert(header::CACHE_CONTROL, hv("max-age=31536000"));
    h.insert("docker-content-digest", hv(digest.as_str()));
    match read.range {
        Some(r) => {
            h.insert(header::CONTENT_LENGTH, hv((r.end - r.start).to_string()));
            h.insert(
                header::CONTENT_RANGE,
                hv(format!("bytes {}-{}/{size}", r.start, r.end - 1)),
            );
        }
        None => {
            h.insert(header::CONTENT_LENGTH, hv(size.to_string()));
        }
    }
    Ok(res)
}

/// end-10: `DELETE /v2/<name>/blobs/<digest>`
pub(super) async fn delete_blob(reg: &Registry, repo: &RepoName, digest: &str) -> HandlerResult {
    let digest = parse_digest(digest)?;
    reg.delete_blob(repo, &digest).await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, hv("0"))]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str) -> Result<Option<ByteRange>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, hv(v));
        parse_range(&h)
    }

    #[test]
    fn matches_if_none_match() {
        let d = crate::oci::Digest::sha256(b"x");
        let check = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, hv(v));
            if_none_match(&h, &d)
        };
        assert!(check(&format!("\"{d}\"")));
        assert!(check(d.as_str()));
        assert!(check(&format!("W/\"{d}\"")));
        assert!(check(&format!("\"sha256:other\", \"{d}\"")));
        assert!(check("*"));
        assert!(!check("\"sha256:other\""));
        assert!(!check(""));
        assert!(!if_none_match(&HeaderMap::new(), &d));
    }

    #[test]
    fn parses_range_headers() {
        assert_eq!(
            range("bytes=0-9"),
            Ok(Some(ByteRange::From {
                first: 0,
                last: Some(9)
            }))
        );
        assert_eq!(
            range("bytes=5-"),
            Ok(Some(ByteRange::From {
                first: 5,
                last: None
            }))
        );
        assert_eq!(range("bytes=-5"), Ok(Some(ByteRange::Suffix(5))));
        assert_eq!(range("items=0-1"), Ok(None));
        assert_eq!(range("bytes=0-1,4-5"), Ok(None));
        assert_eq!(range("bytes=-"), Err(()));
        assert_eq!(range("bytes=a-b"), Err(()));
        assert_eq!(range("bytes=1"), Err(()));
    }
}
