//! The OCI Distribution API (`/v2/`): one dispatcher parses the path into an `OciRoute`, asks the
//! registry's single access-decision step, and calls the handler for the (method, route) pair.
//! Handlers are thin: parse, call one `Registry` method, render.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::credentials::{Client, Credentials};
use super::{ApiState, RouteLabel};
use crate::auth::scope::challenge_scope;
use crate::oci::{Digest, RefError, Reference, RepoName};
use crate::service::{Action, Principal};

mod blobs;
pub mod error;
mod listing;
mod manifests;
pub mod route;
mod uploads;

pub use error::OciError;
use route::{OciRoute, RouteError};

/// The result type of handlers.
type HandlerResult = Result<Response, OciError>;

/// Entry point for every `/v2` request.
pub(crate) async fn dispatch(
    State(state): State<ApiState>,
    client: Client,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = match OciRoute::parse(uri.path()) {
        Ok(r) => r,
        Err(RouteError::NotFound) => return OciError::not_found().into_response(),
        Err(RouteError::Name(e)) => return OciError::name_invalid(e).into_response(),
    };
    let label = route.label();
    let span = tracing::Span::current();
    span.record("route", label);
    if let Some(repo) = route.repo() {
        span.record("repo.name", repo.as_str());
    }
    let query = Query::parse(uri.query());
    let challenge = Challenge::new(&state, &headers, &client, &method, &route, &query);
    let principal = match resolve_principal(&state, &headers, &client).await {
        Ok(p) => p,
        Err(e) => {
            let mut res = challenge.apply(e, Some("invalid_token")).into_response();
            res.extensions_mut().insert(RouteLabel(label));
            return res;
        }
    };
    // Requests carrying a blob body may legitimately run for a long time; they are bounded by an
    // idle timeout on the body instead. Everything else gets an overall deadline.
    let streams_blob = matches!(
        (&method, &route),
        (&Method::POST, OciRoute::UploadStart(_))
            | (&Method::PATCH | &Method::PUT, OciRoute::Upload(..))
    );
    let body = BlobBody::new(body, state.body_idle_timeout);
    let work = handle(&state, &principal, &method, route, &query, &headers, body);
    let result = if streams_blob {
        work.await
    } else {
        match tokio::time::timeout(state.request_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(crate::service::Error::Unavailable(format!(
                "request took longer than {}s",
                state.request_timeout.as_secs()
            ))
            .into()),
        }
    };
    let insufficient = matches!(principal, Principal::Token { .. }).then_some("insufficient_scope");
    let mut res = match result {
        Ok(res) => res,
        Err(e) => challenge.apply(e, insufficient).into_response(),
    };
    res.extensions_mut().insert(RouteLabel(label));
    res
}

/// Resolves the caller: a registry token, Basic credentials (checked like a login), or nobody.
async fn resolve_principal(
    state: &ApiState,
    headers: &HeaderMap,
    client: &Client,
) -> Result<Principal, OciError> {
    match Credentials::from_headers(headers) {
        Credentials::None => Ok(Principal::Anonymous),
        Credentials::Bearer(token) => Ok(state.registry.token_principal(&token).await?),
        Credentials::Basic { username, password } => {
            let identity = state
                .registry
                .login(&username, &password, client.ip)
                .await?;
            Ok(Principal::User(identity))
        }
        Credentials::Malformed => Err(crate::service::Error::Unauthorized.into()),
    }
}

/// The `WWW-Authenticate` challenge for a request: realm, service and the scope it needs.
struct Challenge {
    realm: String,
    service: String,
    scope: Option<String>,
}

impl Challenge {
    fn new(
        state: &ApiState,
        headers: &HeaderMap,
        client: &Client,
        method: &Method,
        route: &OciRoute,
        query: &Query,
    ) -> Self {
        let mut scope = match route {
            OciRoute::Base => None,
            OciRoute::Catalog => Some("registry:catalog:*".to_owned()),
            other => other.repo().map(|repo| {
                let actions: &[Action] = match *method {
                    Method::GET | Method::HEAD => &[Action::Pull],
                    Method::DELETE if !matches!(other, OciRoute::Upload(..)) => &[Action::Delete],
                    _ => &[Action::Pull, Action::Push],
                };
                challenge_scope(repo.as_str(), actions)
            }),
        };
        // A mount also needs pull on the source: name it too, so a token client asks for both and
        // gets a token that can mount (without it the mount silently becomes an upload).
        if let (OciRoute::UploadStart(repo), Some(scope)) = (route, &mut scope)
            && *method == Method::POST
            && query.get("mount").is_some()
            && let Some(from) = query.get("from").and_then(|f| f.parse::<RepoName>().ok())
            && from != *repo
        {
            scope.push(' ');
            scope.push_str(&challenge_scope(from.as_str(), &[Action::Pull]));
        }
        Challenge {
            realm: format!("{}/auth/token", super::public_base(state, headers, client)),
            service: state.registry.service_name().to_owned(),
            scope,
        }
    }

    /// Adds the challenge to a 401 answer; other errors pass through.
    fn apply(&self, err: OciError, error: Option<&str>) -> OciError {
        if err.status != StatusCode::UNAUTHORIZED {
            return err;
        }
        let mut value = format!(
            "Bearer realm={},service={}",
            super::quoted(&self.realm),
            super::quoted(&self.service)
        );
        if let Some(scope) = &self.scope {
            value.push_str(&format!(",scope={}", super::quoted(scope)));
        }
        if let Some(error) = error {
            value.push_str(&format!(",error={}", super::quoted(error)));
        }
        err.header(header::WWW_AUTHENTICATE, value)
    }
}

/// A request body that fails when the client sends nothing for longer than the idle timeout.
pub(crate) struct BlobBody {
    body: Body,
    idle: Duration,
}

impl BlobBody {
    fn new(body: Body, idle: Duration) -> Self {
        Self { body, idle }
    }

    /// The body as a stream of chunks; an idle gap longer than the timeout ends it with an error.
    pub(crate) fn into_stream(
        self,
    ) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static {
        let idle = self.idle;
        Box::pin(futures::stream::unfold(
            Some(self.body.into_data_stream()),
            move |state| async move {
                let mut s = state?;
                match tokio::time::timeout(idle, s.next()).await {
                    Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
                    Ok(Some(Err(e))) => Some((Err(e.to_string()), None)),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(format!("no data received for {}s", idle.as_secs())),
                        None,
                    )),
                }
            },
        ))
    }

    /// The raw body, for requests whose size is limited elsewhere (manifests).
    pub(crate) fn into_inner(self) -> Body {
        self.body
    }
}

async fn handle(
    state: &ApiState,
    principal: &Principal,
    method: &Method,
    route: OciRoute,
    query: &Query,
    headers: &HeaderMap,
    body: BlobBody,
) -> HandlerResult {
    let reg = &state.registry;
    let action = match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE if !matches!(route, OciRoute::Upload(..)) => Action::Delete,
        _ => Action::Push,
    };
    match &route {
        OciRoute::Catalog => reg.authorize_catalog(principal).await?,
        other => {
            if let Some(repo) = other.repo() {
                reg.authorize(principal, repo, action).await?;
            }
        }
    }
    let head = *method == Method::HEAD;
    match (method.clone(), route) {
        (Method::GET | Method::HEAD, OciRoute::Base) => {
            if *principal == Principal::Anonymous {
                // Clients (docker login among them) learn from this 401 where to get tokens.
                return Err(crate::service::Error::Unauthorized.into());
            }
            Ok(base())
        }
        (Method::GET, OciRoute::Catalog) => listing::catalog(reg, principal, query).await,
        (Method::GET, OciRoute::Tags(repo)) => listing::list_tags(reg, &repo, query).await,
        (Method::GET | Method::HEAD, OciRoute::Manifest(repo, r)) => {
            manifests::get_manifest(reg, &repo, &r, headers, head).await
        }
        (Method::PUT, OciRoute::Manifest(repo, r)) => {
            manifests::put_manifest(reg, &repo, &r, headers, body.into_inner()).await
        }
        (Method::DELETE, OciRoute::Manifest(repo, r)) => {
            manifests::delete_manifest(reg, &repo, &r).await
        }
        (Method::GET | Method::HEAD, OciRoute::Blob(repo, d)) => {
            blobs::get_blob(reg, &repo, &d, headers, head).await
        }
        (Method::DELETE, OciRoute::Blob(repo, d)) => blobs::delete_blob(reg, &repo, &d).await,
        (Method::POST, OciRoute::UploadStart(repo)) => {
            uploads::start_upload(reg, principal, &repo, query, headers, body).await
        }
        (Method::GET, OciRoute::Upload(repo, id)) => uploads::get_upload(reg, &repo, &id).await,
        (Method::PATCH, OciRoute::Upload(repo, id)) => {
            uploads::patch_upload(reg, &repo, &id, headers, body).await
        }
        (Method::PUT, OciRoute::Upload(repo, id)) => {
            uploads::complete_upload(reg, &repo, &id, query, headers, body).await
        }
        (Method::DELETE, OciRoute::Upload(repo, id)) => {
            uploads::cancel_upload(reg, &repo, &id).await
        }
        (Method::GET, OciRoute::Referrers(repo, d)) => {
            manifests::get_referrers(reg, &repo, &d, query).await
        }
        _ => Err(OciError::method_not_allowed()),
    }
}

/// end-1: `GET /v2/`
fn base() -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        "{}",
    )
        .into_response()
}

/// Decoded query parameters.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        Query(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// The first value of `key`.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_digest(s: &str) -> Result<Digest, OciError> {
    s.parse::<Digest>().map_err(OciError::digest_invalid)
}

fn parse_reference(s: &str) -> Result<Reference, OciError> {
    Reference::parse(s).map_err(|e| match e {
        RefError::Digest(d) => OciError::digest_invalid(d),
        RefError::Tag(t) => OciError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            format!("invalid tag: {t}"),
        ),
    })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Builds a header value from text we produced ourselves (digests, paths, numbers).
fn hv(s: impl AsRef<str>) -> HeaderValue {
    HeaderValue::from_str(s.as_ref()).unwrap_or_else(|_| HeaderValue::from_static(""))
}
