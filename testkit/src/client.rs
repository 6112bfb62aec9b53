//! A minimal OCI Distribution API client for tests.
//!
//! Two layers of API live here. Methods that return a raw [`Response`]
//! (`push_manifest`, `get_manifest`, `get_blob` and the generic
//! [`RegistryClient::request`]) never judge the status, so tests can assert on
//! status codes and headers themselves. The upload helpers and the `*_ok`
//! helpers check every step and fail with the method, URL, status and response
//! body of the step that went wrong.
//!
//! The HTTP client never follows redirects (tests must see a `307` from a blob
//! `GET` as it is) and never uses a proxy (the registry under test is always
//! local). `Location` headers from upload steps are reused verbatim, query
//! included, with relative references resolved against the URL of the request
//! that returned them, as RFC 9110 prescribes.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Body, Method, RequestBuilder, Response, StatusCode, Url};

use crate::image::{Blob, Image};

/// The content type of every blob upload request body.
const OCTET_STREAM: &str = "application/octet-stream";
/// The size of the pieces a streamed upload sends its body in.
const STREAM_PIECE: usize = 16 * 1024;

/// A client for one registry, addressed by its base URL.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    basic: Option<(String, String)>,
}

impl RegistryClient {
    /// Creates a client for the registry at `base_url` (for example
    /// `http://127.0.0.1:5000`), with redirects and proxies disabled.
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("a plain HTTP client without TLS always builds");
        Self::with_http_client(base_url, http)
    }

    /// Creates a client that sends requests through `http`, for tests that
    /// need other settings (default auth headers, redirect following, timeouts).
    pub fn with_http_client(base_url: impl Into<String>, http: reqwest::Client) -> Self {
        let mut base = base_url.into();
        while base.ends_with('/') {
            base.pop();
        }
        Self {
            base,
            http,
            basic: None,
        }
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Turns a path such as `/v2/` into a full URL; absolute URLs pass through
    /// unchanged.
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.base)
        } else {
            format!("{}/{path_or_url}", self.base)
        }
    }

    /// The same client, sending HTTP Basic credentials with every request
    /// (registries that accept Basic on their API authenticate each call).
    pub fn with_basic(mut self, username: &str, password: &str) -> Self {
        self.basic = Some((username.to_owned(), password.to_owned()));
        self
    }

    /// The same client without credentials.
    pub fn anonymous(mut self) -> Self {
        self.basic = None;
        self
    }

    /// Starts an arbitrary request to a path (resolved against the base URL)
    /// or to an absolute URL, with the client's credentials if it has any.
    pub fn request(&self, method: Method, path_or_url: &str) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path_or_url));
        match &self.basic {
            Some((user, pass)) => rb.basic_auth(user, Some(pass)),
            None => rb,
        }
    }

    /// Starts an upload session with `POST /v2/<repo>/blobs/uploads/` and
    /// returns the absolute upload URL from its `Location` header.
    pub async fn start_upload(&self, repo: &str) -> anyhow::Result<String> {
        let response = self
            .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .header(CONTENT_LENGTH, 0)
            .send()
            .await?;
        let response =
            expect_status(response, StatusCode::ACCEPTED, "starting a blob upload").await?;
        location(&response)
    }

    /// Uploads a blob monolithically: `POST` to open a session, then one `PUT`
    /// with `?digest=` and the whole body. Returns the final `Location`.
    pub async fn push_blob_monolithic(&self, repo: &str, blob: &Blob) -> anyhow::Result<String> {
        let upload = self.start_upload(repo).await?;
        let response = self
            .request(Method::PUT, &with_digest(&upload, &blob.digest))
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, blob.data.len())
            .body(blob.data.clone())
            .send()
            .await?;
        let response = expect_status(
            response,
            StatusCode::CREATED,
            "completing a monolithic upload",
        )
        .await?;
        raw_location(&response)
    }

    /// Uploads a blob with a single `POST /v2/<repo>/blobs/uploads/?digest=`
    /// carrying the whole body. Returns the final `Location`.
    ///
    /// This expects `201 Created`; a registry that answers `202 Accepted`
    /// (declining the single-request form) fails this helper.
    pub async fn push_blob_post_digest(&self, repo: &str, blob: &Blob) -> anyhow::Result<String> {
        let url = with_digest(
            &self.url(&format!("/v2/{repo}/blobs/uploads/")),
            &blob.digest,
        );
        let response = self
            .request(Method::POST, &url)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, blob.data.len())
            .body(blob.data.clone())
            .send()
            .await?;
        let response =
            expect_status(response, StatusCode::CREATED, "single-POST blob upload").await?;
        raw_location(&response)
    }

    /// Uploads a blob in chunks of `chunk_size` bytes: `POST`, one `PATCH` per
    /// chunk with an inclusive `Content-Range: <start>-<end>`, each sent to the
    /// `Location` of the previous step, and a final `PUT ?digest=` with an empty
    /// body. Returns the final `Location`.
    ///
    /// Each `PATCH` answer must be `202 Accepted` and, when it has a `Range`
    /// header, that header must read `0-<end>`.
    pub async fn push_blob_chunked(
        &self,
        repo: &str,
        blob: &Blob,
        chunk_size: usize,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(chunk_size > 0, "chunk_size must be positive");
        let mut upload = self.start_upload(repo).await?;
        let mut start = 0;
        while start < blob.data.len() {
            let end = (start + chunk_size).min(blob.data.len());
            let chunk = blob.data.slice(start..end);
            let last = end - 1;
            let response = self
                .request(Method::PATCH, &upload)
                .header(CONTENT_TYPE, OCTET_STREAM)
                .header(CONTENT_RANGE, format!("{start}-{last}"))
                .header(CONTENT_LENGTH, chunk.len())
                .body(chunk)
                .send()
                .await?;
            let step = format!("uploading chunk {start}-{last}");
            let response = expect_status(response, StatusCode::ACCEPTED, &step).await?;
            check_range(&response, last, &step)?;
            upload = location(&response)?;
            start = end;
        }
        self.finish_upload(&upload, blob).await
    }

    /// Uploads a blob as a stream: `POST`, a single `PATCH` without
    /// `Content-Range` whose body is sent with chunked transfer encoding (no
    /// `Content-Length`), and a final `PUT ?digest=` with an empty body.
    /// Returns the final `Location`.
    pub async fn push_blob_streamed(&self, repo: &str, blob: &Blob) -> anyhow::Result<String> {
        let upload = self.start_upload(repo).await?;
        let pieces: Vec<Result<Bytes, std::io::Error>> = (0..blob.data.len())
            .step_by(STREAM_PIECE)
            .map(|start| {
                Ok(blob
                    .data
                    .slice(start..(start + STREAM_PIECE).min(blob.data.len())))
            })
            .collect();
        let response = self
            .request(Method::PATCH, &upload)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(Body::wrap_stream(futures::stream::iter(pieces)))
            .send()
            .await?;
        let step = "streaming the blob body";
        let response = expect_status(response, StatusCode::ACCEPTED, step).await?;
        if let Some(last) = blob.data.len().checked_sub(1) {
            check_range(&response, last, step)?;
        }
        let upload = location(&response)?;
        self.finish_upload(&upload, blob).await
    }

    /// Completes an upload session with `PUT ?digest=` and an empty body,
    /// expecting `201 Created`, and returns the final `Location`.
    async fn finish_upload(&self, upload: &str, blob: &Blob) -> anyhow::Result<String> {
        let response = self
            .request(Method::PUT, &with_digest(upload, &blob.digest))
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, 0)
            .send()
            .await?;
        let response = expect_status(response, StatusCode::CREATED, "completing an upload").await?;
        raw_location(&response)
    }

    /// Sends `PUT /v2/<repo>/manifests/<reference>` with the manifest's media
    /// type as `Content-Type`, returning the response whatever its status.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Blob,
    ) -> anyhow::Result<Response> {
        Ok(self
            .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header(CONTENT_TYPE, &manifest.media_type)
            .body(manifest.data.clone())
            .send()
            .await?)
    }

    /// Pushes a manifest and checks for `201 Created` with a
    /// `Docker-Content-Digest` equal to the manifest digest. Returns the
    /// `Location`.
    pub async fn push_manifest_ok(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Blob,
    ) -> anyhow::Result<String> {
        let response = self.push_manifest(repo, reference, manifest).await?;
        let step = format!("pushing manifest {repo}:{reference}");
        let response = expect_status(response, StatusCode::CREATED, &step).await?;
        if let Some(digest) = response.headers().get("docker-content-digest") {
            anyhow::ensure!(
                digest.as_bytes() == manifest.digest.as_bytes(),
                "{step}: Docker-Content-Digest is {digest:?}, expected {}",
                manifest.digest
            );
        }
        raw_location(&response)
    }

    /// Pushes every blob of `image` monolithically, then its manifest under
    /// `reference` (a tag, or the manifest digest to push it untagged, as the
    /// children of an index are). Returns the manifest `Location`.
    pub async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        image: &Image,
    ) -> anyhow::Result<String> {
        for blob in image.content_blobs() {
            self.push_blob_monolithic(repo, blob)
                .await
                .with_context(|| format!("pushing blob {} of {repo}:{reference}", blob.digest))?;
        }
        self.push_manifest_ok(repo, reference, &image.manifest)
            .await
    }

    /// Sends `GET /v2/<repo>/manifests/<reference>` with the given media types
    /// as `Accept` (none when empty), returning the response whatever its status.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> anyhow::Result<Response> {
        let mut request = self.request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"));
        if !accept.is_empty() {
            request = request.header(ACCEPT, accept.join(", "));
        }
        Ok(request.send().await?)
    }

    /// Sends `GET /v2/<repo>/blobs/<digest>`, returning the response whatever
    /// its status (redirects are not followed).
    pub async fn get_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Response> {
        Ok(self
            .request(Method::GET, &format!("/v2/{repo}/blobs/{digest}"))
            .send()
            .await?)
    }

    /// Fetches a blob, expecting `200 OK`, and returns its body.
    pub async fn get_blob_ok(&self, repo: &str, digest: &str) -> anyhow::Result<Bytes> {
        let response = self.get_blob(repo, digest).await?;
        let response = expect_status(
            response,
            StatusCode::OK,
            &format!("fetching blob {repo}@{digest}"),
        )
        .await?;
        Ok(response.bytes().await?)
    }
}

/// Returns `response` if its status is `expected`; otherwise fails with the
/// step, URL, status and body.
pub async fn expect_status(
    response: Response,
    expected: StatusCode,
    step: &str,
) -> anyhow::Result<Response> {
    if response.status() == expected {
        return Ok(response);
    }
    let status = response.status();
    let url = response.url().clone();
    let body = match response.text().await {
        Ok(body) => body,
        Err(error) => format!("<unreadable body: {error}>"),
    };
    bail!("{step}: expected {expected}, got {status} from {url}; body: {body}")
}

/// The `Location` header exactly as the server sent it.
fn raw_location(response: &Response) -> anyhow::Result<String> {
    let value = response.headers().get(LOCATION).with_context(|| {
        format!(
            "the response from {} has no Location header",
            response.url()
        )
    })?;
    Ok(value
        .to_str()
        .with_context(|| format!("the Location header from {} is not ASCII", response.url()))?
        .to_owned())
}

/// The `Location` header, resolved against the URL of the request it answered.
fn location(response: &Response) -> anyhow::Result<String> {
    resolve(response.url(), &raw_location(response)?)
}

/// Resolves a `Location` value against `request_url`, keeping absolute URLs
/// byte for byte.
fn resolve(request_url: &Url, location: &str) -> anyhow::Result<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_owned());
    }
    Ok(request_url
        .join(location)
        .with_context(|| format!("cannot resolve Location {location:?} against {request_url}"))?
        .to_string())
}

/// Appends a `digest` query parameter to an upload URL, keeping any query it
/// already has.
fn with_digest(url: &str, digest: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}digest={}", percent_encode(digest))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so that `:`
/// and `+` in digests survive query parsing.
fn percent_encode(value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a `String` cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Checks the `Range` header of an upload progress response, if present.
fn check_range(response: &Response, last: usize, step: &str) -> anyhow::Result<()> {
    if let Some(range) = response.headers().get(RANGE) {
        let expected = format!("0-{last}");
        anyhow::ensure!(
            range.as_bytes() == expected.as_bytes(),
            "{step}: Range is {range:?}, expected {expected:?}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_against_the_base() {
        let client = RegistryClient::new("http://127.0.0.1:5000/");
        assert_eq!(client.base(), "http://127.0.0.1:5000");
        assert_eq!(client.url("/v2/"), "http://127.0.0.1:5000/v2/");
        assert_eq!(client.url("v2/"), "http://127.0.0.1:5000/v2/");
        assert_eq!(client.url("http://other:1/x?y=z"), "http://other:1/x?y=z");
    }

    #[test]
    fn locations_resolve_verbatim() -> anyhow::Result<()> {
        let request = Url::parse("http://127.0.0.1:5000/v2/a/b/blobs/uploads/")?;
        assert_eq!(
            resolve(&request, "/v2/a/b/blobs/uploads/123?state=x%2By")?,
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/123?state=x%2By"
        );
        assert_eq!(
            resolve(&request, "123?state=x")?,
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/123?state=x"
        );
        assert_eq!(
            resolve(&request, "http://elsewhere/u?q=1")?,
            "http://elsewhere/u?q=1"
        );
        Ok(())
    }

    #[test]
    fn digest_query_is_appended_and_encoded() {
        assert_eq!(
            with_digest("http://h/u", "sha256:ab"),
            "http://h/u?digest=sha256%3Aab"
        );
        assert_eq!(
            with_digest("http://h/u?s=1", "sha256:ab"),
            "http://h/u?s=1&digest=sha256%3Aab"
        );
        assert_eq!(percent_encode("a+b=c"), "a%2Bb%3Dc");
    }
}
