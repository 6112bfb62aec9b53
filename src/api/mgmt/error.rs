//! `ApiError`: the management API's error response, and its one mapping from `service::Error`.
//!
//! The body is always `{"error": {"code", "message"}}` with a short, stable, lowercase `code`
//! (`not_found`, `invalid`, `unauthorized`, `forbidden`, `conflict`, `too_many_requests`,
//! `unsupported`, `method_not_allowed`, `too_large`, `unavailable`, `internal`). 5xx answers carry a
//! generic message; the cause travels in the [`InternalCause`] response extension to the logging
//! middleware, which logs it once with the request id. Extractor rejections (JSON bodies, query
//! strings, path segments) become 400 `invalid`, never 415/422.
//! Must not depend on anything but `service` (and axum for the response type).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::oci::error::InternalCause;
use crate::service::Error;

/// An error answer of the management API.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// HTTP status.
    pub(crate) status: StatusCode,
    /// Stable machine-readable code.
    pub(crate) code: &'static str,
    /// Human-readable message (generic for 5xx).
    pub(crate) message: String,
    /// Extra headers (`Retry-After`).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The cause of a 5xx, for the logging middleware only.
    cause: Option<String>,
}

impl ApiError {
    /// A new error answer.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            cause: None,
        }
    }

    /// 400 `invalid`: the request is malformed.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// 401 `unauthorized`: credentials are missing or wrong (the challenge is added by the
    /// router's middleware, which knows the public URL).
    pub(crate) fn unauthorized() -> Self {
        Self::from(Error::Unauthorized)
    }

    /// 404 for a path that is no management endpoint.
    pub(crate) fn no_endpoint() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            NO_ENDPOINT_MESSAGE.to_owned(),
        )
    }

    /// 405 for a method an endpoint does not serve.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        )
    }

    fn header(mut self, name: HeaderName, value: String) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.headers.push((name, v));
        }
        self
    }

    fn internal(status: StatusCode, code: &'static str, message: &str, cause: String) -> Self {
        let mut e = Self::new(status, code, message);
        e.cause = Some(cause);
        e
    }
}

/// The message of the router's 404 fallback; tests tell "no such endpoint" from "no such
/// resource" by it.
pub(crate) const NO_ENDPOINT_MESSAGE: &str = "no such management API endpoint";

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NameUnknown
            | Error::BlobUnknown(_)
            | Error::UploadUnknown
            | Error::ManifestUnknown => Self::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            Error::NameInvalid(_)
            | Error::UploadInvalid(_)
            | Error::DigestInvalid(_)
            | Error::SizeInvalid(_)
            | Error::ManifestInvalid(_)
            | Error::ManifestBlobUnknown(_)
            | Error::RangeNotSatisfiable { .. }
            | Error::RangeInvalid { .. }
            | Error::Invalid(_) => Self::invalid(msg),
            Error::ManifestTooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", msg)
            }
            Error::Unauthorized => Self::new(StatusCode::UNAUTHORIZED, "unauthorized", msg),
            Error::Denied => Self::new(StatusCode::FORBIDDEN, "forbidden", msg),
            Error::Unsupported(_) => Self::new(StatusCode::METHOD_NOT_ALLOWED, "unsupported", msg),
            Error::TooManyRequests { retry_after_secs } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", msg)
                    .header(header::RETRY_AFTER, retry_after_secs.to_string())
            }
            Error::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", msg),
            Error::Unavailable(cause) => Self::internal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "service unavailable; retry later",
                cause,
            )
            .header(header::RETRY_AFTER, "1".into()),
            Error::Internal(source) => Self::internal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error",
                format!("{source:#}"),
            ),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", r.body_text());
        }
        Self::invalid(format!("invalid JSON body: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::invalid(format!("invalid query: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::invalid(format!("invalid path: {}", r.body_text()))
    }
}

/// Renders the management API's error envelope.
pub(crate) fn error_body(code: &str, message: &str) -> Vec<u8> {
    json!({ "error": { "code": code, "message": message } })
        .to_string()
        .into_bytes()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, error_body(self.code, &self.message)).into_response();
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

    /// Pins the whole `service::Error` → management HTTP table.
    #[test]
    fn error_table() {
        let d = Digest::sha256(b"");
        let cases: Vec<(Error, StatusCode, &str)> = vec![
            (Error::NameUnknown, StatusCode::NOT_FOUND, "not_found"),
            (
                Error::BlobUnknown(d.clone()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (Error::UploadUnknown, StatusCode::NOT_FOUND, "not_found"),
            (Error::ManifestUnknown, StatusCode::NOT_FOUND, "not_found"),
            (
                Error::NameInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::UploadInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::DigestInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::SizeInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::ManifestInvalid("x".into()),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::ManifestBlobUnknown(vec![d]),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::RangeNotSatisfiable { offset: 1 },
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::RangeInvalid { size: 1 },
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::Invalid("x".into()),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                Error::ManifestTooLarge { limit: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            (
                Error::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (Error::Denied, StatusCode::FORBIDDEN, "forbidden"),
            (
                Error::Unsupported("x".into()),
                StatusCode::METHOD_NOT_ALLOWED,
                "unsupported",
            ),
            (
                Error::TooManyRequests {
                    retry_after_secs: 7,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
            ),
            (
                Error::Conflict("x".into()),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                Error::Unavailable("db down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                Error::Internal(anyhow::anyhow!("secret cause")),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (err, status, code) in cases {
            let res = ApiError::from(err).into_response();
            assert_eq!(res.status(), status, "{code}");
            let retry = res.headers().get(header::RETRY_AFTER).cloned();
            let cause = res.extensions().get::<InternalCause>().cloned();
            let body = futures::executor::block_on(axum::body::to_bytes(res.into_body(), 4096))
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"].is_string());
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("secret cause") && !text.contains("db down"),
                "{text}"
            );
            if status == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(retry.as_ref().and_then(|v| v.to_str().ok()), Some("7"));
            }
            if status.is_server_error() {
                assert!(cause.is_some(), "a 5xx carries its cause for the logger");
            }
        }
    }
}
