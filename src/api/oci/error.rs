//! `OciError`: the registry API's error response, and the one mapping from `service::Error`.
//!
//! The body is the spec's envelope `{"errors":[{"code","message","detail"}]}`; a 4xx code is always
//! one of the spec's fourteen. 5xx answers carry a generic message: the cause travels in a response
//! extension to the logging middleware, which logs it once with the request id.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::service::Error;

/// The cause of a 5xx answer, for the logging middleware. Never shown to clients.
#[derive(Clone, Debug)]
pub struct InternalCause(pub String);

/// An error answer of the registry API.
#[derive(Debug)]
pub struct OciError {
    /// HTTP status.
    pub status: StatusCode,
    /// Spec error code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Optional structured detail.
    pub detail: Option<Value>,
    /// Extra headers (`Range`, `Content-Range`, `Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    cause: Option<String>,
}

impl OciError {
    /// A new error answer.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
            cause: None,
        }
    }

    /// Adds structured detail.
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: String) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.headers.push((name, v));
        }
        self
    }

    /// 400 `NAME_INVALID`.
    pub fn name_invalid(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name: {reason}"),
        )
    }

    /// 400 `DIGEST_INVALID`.
    pub fn digest_invalid(reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("invalid digest: {reason}"),
        )
    }

    /// 405 `UNSUPPORTED` for a method an endpoint does not serve.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the operation is unsupported: method not allowed on this endpoint",
        )
    }

    /// 404 for a path that is no registry endpoint.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such registry endpoint",
        )
    }
}

impl From<Error> for OciError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NameUnknown => Self::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", msg),
            Error::NameInvalid(_) => Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", msg),
            Error::BlobUnknown(d) => Self::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", msg)
                .detail(json!({ "digest": d.as_str() })),
            Error::UploadUnknown => Self::new(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", msg),
            Error::UploadInvalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", msg)
            }
            Error::RangeNotSatisfiable { offset } => {
                let range = format!("0-{}", offset.saturating_sub(1));
                Self::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UPLOAD_INVALID",
                    msg,
                )
                .header(header::RANGE, range)
                .detail(json!({ "offset": offset }))
            }
            Error::RangeInvalid { size } => {
                Self::new(StatusCode::RANGE_NOT_SATISFIABLE, "SIZE_INVALID", msg)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
            }
            Error::DigestInvalid(_) => Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", msg),
            Error::SizeInvalid(_) => Self::new(StatusCode::BAD_REQUEST, "SIZE_INVALID", msg),
            Error::ManifestUnknown => Self::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", msg),
            Error::ManifestInvalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", msg)
            }
            Error::ManifestTooLarge { limit } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID", msg)
                    .detail(json!({ "limit": limit }))
            }
            Error::ManifestBlobUnknown(missing) => {
                let digests: Vec<&str> = missing.iter().map(|d| d.as_str()).collect();
                Self::new(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", msg)
                    .detail(json!({ "missing": digests }))
            }
            Error::Unauthorized => Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", msg),
            Error::Denied => Self::new(StatusCode::FORBIDDEN, "DENIED", msg),
            Error::Unsupported(_) => Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", msg),
            Error::TooManyRequests { retry_after_secs } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", msg)
                    .header(header::RETRY_AFTER, retry_after_secs.to_string())
            }
            Error::Invalid(_) => Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", msg),
            Error::Conflict(_) => Self::new(StatusCode::CONFLICT, "DENIED", msg),
            Error::Unavailable(cause) => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "service unavailable; retry later",
                )
                .header(header::RETRY_AFTER, "1".into());
                e.cause = Some(cause);
                e
            }
            Error::Internal(source) => {
                let mut e = Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error",
                );
                e.cause = Some(format!("{source:#}"));
                e
            }
        }
    }
}

/// Renders the spec's error envelope.
pub fn error_body(code: &str, message: &str, detail: Option<&Value>) -> Vec<u8> {
    let mut entry = json!({ "code": code, "message": message });
    if let Some(d) = detail {
        entry["detail"] = d.clone();
    }
    json!({ "errors": [entry] }).to_string().into_bytes()
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = error_body(self.code, &self.message, self.detail.as_ref());
        let mut res = (self.status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            h.insert(name, value);
        }
        if let Some(cause) = self.cause {
            res.extensions_mut().insert(InternalCause(cause));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    /// Pins the whole `service::Error` → HTTP table.
    #[test]
    fn error_table() {
        let d = Digest::sha256(b"");
        let cases: Vec<(Error, StatusCode, &str)> = vec![
            (Error::NameUnknown, StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            (
                Error::NameInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
            ),
            (
                Error::BlobUnknown(d.clone()),
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
            ),
            (
                Error::UploadUnknown,
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
            ),
            (
                Error::UploadInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
            ),
            (
                Error::RangeNotSatisfiable { offset: 5 },
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
            ),
            (
                Error::RangeInvalid { size: 5 },
                StatusCode::RANGE_NOT_SATISFIABLE,
                "SIZE_INVALID",
            ),
            (
                Error::DigestInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
            ),
            (
                Error::SizeInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "SIZE_INVALID",
            ),
            (
                Error::ManifestUnknown,
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
            ),
            (
                Error::ManifestInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
            ),
            (
                Error::ManifestTooLarge { limit: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "MANIFEST_INVALID",
            ),
            (
                Error::ManifestBlobUnknown(vec![d]),
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
            ),
            (
                Error::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
            ),
            (Error::Denied, StatusCode::FORBIDDEN, "DENIED"),
            (
                Error::Unsupported("x".into()),
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
            ),
            (
                Error::TooManyRequests {
                    retry_after_secs: 3,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
            ),
            (
                Error::Invalid("x".into()),
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
            ),
            (Error::Conflict("x".into()), StatusCode::CONFLICT, "DENIED"),
            (
                Error::Unavailable("db down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
            ),
            (
                Error::Internal(anyhow::anyhow!("secret cause")),
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
            ),
        ];
        for (err, status, code) in cases {
            let e = OciError::from(err);
            assert_eq!((e.status, e.code), (status, code));
            let body =
                String::from_utf8(error_body(e.code, &e.message, e.detail.as_ref())).unwrap();
            assert!(
                !body.contains("secret cause") && !body.contains("db down"),
                "{body}"
            );
        }
    }
}
