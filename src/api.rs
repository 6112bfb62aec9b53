//! HTTP only: the registry API under `/v2`, health endpoints, and the middleware stack.
//!
//! Handlers parse requests into typed values, call one `service::Registry` method and render the
//! answer; no SQL, storage or cache calls happen here. Only this module (and `app`) imports axum
//! and tower-http.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower::ServiceExt as _;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::service::Registry;

mod credentials;
mod mgmt;
pub mod oci;
mod token;

use oci::error::{InternalCause, error_body};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The registry use cases.
    pub registry: Registry,
    /// False while starting up and once shutdown has begun.
    pub ready: Arc<AtomicBool>,
    /// Longest a request without a blob body may take.
    pub request_timeout: Duration,
    /// Longest a blob body may send nothing.
    pub body_idle_timeout: Duration,
    /// The configured public URL (empty: derived from each request).
    pub public_url: String,
    /// The proxies whose forwarded headers are believed (`server.trusted_proxies`).
    pub trusted_proxies: Arc<crate::config::TrustedProxies>,
    /// Renders the process's metrics in the Prometheus text format.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("registry", &self.registry)
            .field("request_timeout", &self.request_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .finish_non_exhaustive()
    }
}

/// The route a response answered, for metrics labels (set by handlers, read by middleware).
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(pub &'static str);

/// The application while the node starts: bound and answering before the metadata store is
/// connected and migrated, so load balancers and clients get an answer instead of a refused
/// connection or a hang. Until [`Startup::finish`] installs the real application, `/healthz`
/// answers 200, `/readyz` 503 with a JSON reason, `/metrics` renders, and every other request 503
/// `UNAVAILABLE` (the OCI envelope, or the management API's under `/api/`). Afterwards every
/// request goes to the real application.
pub struct Startup {
    app: OnceLock<Router>,
    reason: Mutex<String>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("started", &self.app.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Startup {
    /// A node that is starting; `metrics` renders `/metrics` meanwhile.
    pub fn new(metrics: Arc<dyn Fn() -> String + Send + Sync>) -> Arc<Self> {
        Arc::new(Self {
            app: OnceLock::new(),
            reason: Mutex::new("starting".into()),
            metrics,
        })
    }

    /// Records why the node is not ready yet (shown by `/readyz`; never contains secrets).
    pub fn set_reason(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.into();
        }
    }

    /// Installs the real application; from now on every request goes to it.
    pub fn finish(&self, state: ApiState) {
        let _ = self.app.set(router(state));
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|_| "starting".into())
    }
}

/// The application a node serves from the moment it binds: see [`Startup`].
pub fn starting_router(startup: Arc<Startup>) -> Router {
    Router::new().fallback(move |req: Request| {
        let startup = startup.clone();
        async move {
            match startup.app.get() {
                Some(app) => match app.clone().oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                },
                None => while_starting(&startup, &req),
            }
        }
    })
}

/// The answer to `req` before the real application is installed.
fn while_starting(startup: &Startup, req: &Request) -> Response {
    let path = req.uri().path();
    let reason = startup.reason();
    let mut res = match path {
        "/healthz" => return (StatusCode::OK, "ok").into_response(),
        "/metrics" => return metrics_response((startup.metrics)()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "starting", "reason": reason }).to_string(),
        )
            .into_response(),
        p if p.starts_with("/api/") => (
            StatusCode::SERVICE_UNAVAILABLE,
            mgmt::error::error_body("unavailable", &format!("the node is starting: {reason}")),
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            error_body(
                "UNAVAILABLE",
                &format!("the node is starting: {reason}"),
                None,
            ),
        )
            .into_response(),
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    res
}

/// Longest request target (path and query) accepted, in bytes; longer ones answer 414. Far above
/// any registry request (a repository name is at most 255 bytes) and below hyper's own bound
/// (64 KiB, answered with a bare 414 before any handler runs).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Largest request head accepted: the header lines' bytes (name, value and 4 bytes of `: ` and
/// CRLF each); larger ones answer 431. Below hyper's own bound (its read buffer, about 400 KiB,
/// and `app`'s header count), above which hyper answers a bare 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refuses requests whose target or head is over the limits above, with the envelope of the API
/// they address: the OCI error (code `UNSUPPORTED`, the spec's code for a request the registry
/// will not process; none of its fourteen codes is about request heads) everywhere but under
/// `/api/`, where the management API's (`too_large`).
async fn limit_request_head(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let head_len: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let refused = if uri_len > MAX_URI_BYTES {
        Some((
            StatusCode::URI_TOO_LONG,
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ))
    } else if head_len > MAX_HEADER_BYTES {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request headers are larger than {MAX_HEADER_BYTES} bytes"),
        ))
    } else {
        None
    };
    let Some((status, message)) = refused else {
        return next.run(req).await;
    };
    let body = if req.uri().path().starts_with("/api/") {
        mgmt::error::error_body("too_large", &message)
    } else {
        error_body("UNSUPPORTED", &message, None)
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Builds the whole HTTP application.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v2", any(oci::dispatch))
        .route("/v2/", any(oci::dispatch))
        .route("/v2/{*rest}", any(oci::dispatch))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/auth/token", get(token::get_token).post(token::post_token))
        .route("/auth/jwks", get(token::jwks))
        .nest(mgmt::PREFIX, mgmt::router(&state))
        .fallback(fallback)
        .with_state(state)
        // Layers run outermost-last: the request id is set first and seen by everything inside.
        .layer(middleware::from_fn(limit_request_head))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(log_errors))
        .layer(middleware::from_fn(record_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %req.method(),
                        path = %req.uri().path(),
                        route = tracing::field::Empty,
                        repo.name = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(
                        status = res.status().as_u16(),
                        duration_ms = latency.as_secs_f64() * 1000.0,
                        "request finished"
                    );
                }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// The URL clients reach this registry at: `server.public_url`, else the request's scheme and
/// `Host`. The scheme is `X-Forwarded-Proto` only when the request came through a trusted proxy
/// (`server.trusted_proxies`); from anyone else the header is ignored and the scheme is `http`.
/// A `Host` that is not `host[:port]` (a DNS name, an IPv4 address or a bracketed IPv6 literal,
/// and an optional port) is replaced by `localhost`, so a client can never put quotes, commas or
/// other parameters into a challenge's realm.
pub(crate) fn public_base(
    state: &ApiState,
    headers: &axum::http::HeaderMap,
    client: &credentials::Client,
) -> String {
    if !state.public_url.is_empty() {
        return state.public_url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_host_and_port(h))
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .filter(|_| client.via_trusted_proxy)
        .and_then(|h| h.to_str().ok())
        // A chain of proxies may list several; the first is the client's.
        .and_then(|h| h.split(',').next())
        .map(str::trim)
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{proto}://{host}")
}

/// `value` as an HTTP quoted-string (RFC 9110 §5.6.4): in quotes, with `"` and `\` escaped, for
/// challenge parameters.
pub(crate) fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether `value` is `host[:port]` as a `Host` header may carry it: a registered name (letters,
/// digits, `-`, `_` and `.`, at most 253 bytes), or `[<IPv6 address>]`, then an optional decimal
/// port up to 65535.
fn is_host_and_port(value: &str) -> bool {
    let port = if let Some(rest) = value.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        if after.is_empty() {
            None
        } else if let Some(port) = after.strip_prefix(':') {
            Some(port)
        } else {
            return false;
        }
    } else {
        let (name, port) = match value.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (value, None),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return false;
        }
        port
    };
    port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    })
}

/// Counts requests and records their latency by route, method and status.
async fn record_metrics(req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let method = req.method().as_str().to_owned();
    let res = next.run(req).await;
    let route = res
        .extensions()
        .get::<RouteLabel>()
        .map_or("other", |r| r.0);
    let status = res.status().as_u16().to_string();
    metrics::counter!("aerugo_http_requests_total", "route" => route, "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("aerugo_http_request_duration_seconds", "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    res
}

/// Prometheus metrics of this node.
async fn metrics(State(state): State<ApiState>) -> Response {
    state.registry.record_gauges();
    metrics_response((state.metrics)())
}

fn metrics_response(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// Logs the cause of every 5xx once, with the request id, and keeps it out of the body.
async fn log_errors(req: Request, next: Next) -> Response {
    let id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .unwrap_or("")
        .to_owned();
    let is_mgmt = req.uri().path().starts_with("/api/");
    // Readiness explains itself (and is logged by its handler); its body stays as it is.
    let is_probe = req.uri().path() == "/readyz";
    let mut res = next.run(req).await;
    if res.status().is_server_error() && !is_probe {
        let cause = res
            .extensions_mut()
            .remove::<InternalCause>()
            .map(|c| c.0)
            .unwrap_or_else(|| "no cause recorded".into());
        tracing::error!(request_id = %id, status = res.status().as_u16(), error = %cause, "request failed");
        let code = if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            "UNAVAILABLE"
        } else {
            "UNKNOWN"
        };
        let message = format!("{}; request id {id}", canonical_message(res.status()));
        let (mut parts, _) = res.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The management API keeps its own envelope; everything else gets the OCI one.
        let body = if is_mgmt {
            let code = if code == "UNAVAILABLE" {
                "unavailable"
            } else {
                "internal"
            };
            mgmt::error::error_body(code, &message)
        } else {
            error_body(code, &message, None)
        };
        res = Response::from_parts(parts, Body::from(body));
    }
    res
}

fn canonical_message(status: StatusCode) -> &'static str {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        "service unavailable, retry later"
    } else {
        "internal server error"
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let mut res = (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
    res.extensions_mut()
        .insert(InternalCause("handler panicked".into()));
    res
}

async fn fallback() -> Response {
    oci::OciError::not_found().into_response()
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: started, not shutting down, and the metadata store and storage answer.
async fn readyz(State(state): State<ApiState>) -> Response {
    let json = |status: StatusCode, body: serde_json::Value| {
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body.to_string(),
        )
            .into_response()
    };
    if !state.ready.load(Ordering::Acquire) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "unavailable", "reason": "shutting down or starting" }),
        );
    }
    match state.registry.ready().await {
        Ok(()) => json(StatusCode::OK, serde_json::json!({ "status": "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "status": "unavailable", "reason": "dependencies unavailable" }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_are_host_and_port_only() {
        for good in [
            "localhost",
            "localhost:5000",
            "registry.example.com",
            "registry.example.com:443",
            "aerugo_1:8080",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:5000",
            "[2001:db8::7]:443",
        ] {
            assert!(is_host_and_port(good), "{good}");
        }
        for bad in [
            "",
            "evil\",service=\"x",
            "a\"b",
            "host:",
            "host:65536",
            "host:123456",
            "host:12a",
            "host:80:81",
            "a,b",
            "a b",
            "a/b",
            "user@host",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[not-v6]:80",
            "[::1]:5000\",error=\"x",
            ":80",
        ] {
            assert!(!is_host_and_port(bad), "{bad}");
        }
        assert!(!is_host_and_port(&"a".repeat(254)));
    }

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes() {
        assert_eq!(quoted("aerugo"), "\"aerugo\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
