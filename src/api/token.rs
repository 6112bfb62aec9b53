//! The Docker token endpoint (`/auth/token`, GET with Basic credentials or anonymous, and POST with
//! an OAuth2 form) and the JWKS document of the token keys (`/auth/jwks`).
//!
//! Answers follow the distribution token spec: `{token, access_token, expires_in, issued_at,
//! refresh_token?}`. The granted access is the intersection of what was asked and what the caller
//! may do; a partial (or empty) grant is not an error.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ApiState;
use super::credentials::{Client, Credentials};
use super::oci::OciError;
use crate::auth::scope::{Scope, parse_requested_scopes};
use crate::service::{Error, Identity, IssuedToken};

fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw).into_owned().collect()
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn token_response(
    issued: &IssuedToken,
    scope: Option<String>,
    refresh: Option<String>,
) -> Response {
    let issued_at =
        OffsetDateTime::from_unix_timestamp(i64::try_from(issued.issued_at).unwrap_or(0))
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
    let mut body = json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued_at,
        "token_type": "Bearer",
    });
    if let Some(scope) = scope {
        body["scope"] = json!(scope);
    }
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    (
        StatusCode::OK,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

/// The scopes a token request asks for, within the limits on their number and size (checked
/// before any credential, so an oversized request costs no password check); 400 beyond them.
fn requested_scopes(pairs: &[(String, String)]) -> Result<Vec<Scope>, Response> {
    parse_requested_scopes(
        pairs
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    )
    .map_err(|message| bad_request(&message))
}

/// The `service` a token request names, else this registry's. A refresh token is redeemed only
/// for the service it was issued for, so a request naming another one is refused like a bad token.
fn requested_service<'a>(state: &'a ApiState, pairs: &'a [(String, String)]) -> &'a str {
    first(pairs, "service").unwrap_or_else(|| state.registry.service_name())
}

/// A failed token request: 401 (with a Basic challenge so clients prompt for credentials), 429, 400.
fn token_error(err: Error) -> Response {
    let mut e: OciError = err.into();
    if e.status == StatusCode::UNAUTHORIZED {
        e.message = "authentication required: invalid username, password or token".into();
        e = e.header(header::WWW_AUTHENTICATE, "Basic realm=\"aerugo\"".into());
    }
    e.into_response()
}

fn bad_request(message: &str) -> Response {
    OciError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", message).into_response()
}

/// `GET /auth/token?service=&scope=&offline_token=&client_id=&account=` with optional Basic auth.
pub(super) async fn get_token(
    State(state): State<ApiState>,
    client: Client,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let q = pairs(uri.query().unwrap_or("").as_bytes());
    let scopes = match requested_scopes(&q) {
        Ok(scopes) => scopes,
        Err(res) => return res,
    };
    let reg = &state.registry;
    let mut presented_refresh = None;
    let identity = match Credentials::from_headers(&headers) {
        Credentials::None => None,
        Credentials::Basic { username, password } => {
            match reg.login(&username, &password, client.ip).await {
                Ok(identity) => Some(identity),
                Err(e) => return token_error(e),
            }
        }
        // A refresh token presented as a Bearer credential (some clients do this on GET).
        Credentials::Bearer(t) => match reg
            .redeem_refresh_token(&t, requested_service(&state, &q))
            .await
        {
            Ok(identity) => {
                presented_refresh = Some(t);
                Some(identity)
            }
            Err(e) => return token_error(e),
        },
        Credentials::Malformed => return token_error(Error::Unauthorized),
    };
    let offline = first(&q, "offline_token").is_some_and(|v| v == "true" || v == "1");
    let client_id = first(&q, "client_id").unwrap_or_default();
    // A refresh token never buys a fresh one: asked for offline access, the client gets the same
    // token back, with its original expiry.
    let (offline, existing) = match presented_refresh {
        Some(t) => (false, offline.then_some(t)),
        None => (offline, None),
    };
    respond(
        &state,
        identity.as_ref(),
        &scopes,
        offline,
        existing,
        client_id,
    )
    .await
}

/// `POST /auth/token` with an OAuth2 form: `grant_type=password|refresh_token`.
pub(super) async fn post_token(
    State(state): State<ApiState>,
    client: Client,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return bad_request("the token endpoint takes an application/x-www-form-urlencoded form");
    }
    let form = pairs(&body);
    let scopes = match requested_scopes(&form) {
        Ok(scopes) => scopes,
        Err(res) => return res,
    };
    let reg = &state.registry;
    let (identity, reuse_refresh) = match first(&form, "grant_type") {
        Some("password") => {
            let (Some(user), Some(pw)) = (first(&form, "username"), first(&form, "password"))
            else {
                return bad_request("grant_type=password needs username and password");
            };
            match reg.login(user, pw, client.ip).await {
                Ok(identity) => (identity, None),
                Err(e) => return token_error(e),
            }
        }
        Some("refresh_token") => {
            let Some(rt) = first(&form, "refresh_token") else {
                return bad_request("grant_type=refresh_token needs refresh_token");
            };
            match reg
                .redeem_refresh_token(rt, requested_service(&state, &form))
                .await
            {
                Ok(identity) => (identity, Some(rt.to_owned())),
                Err(e) => return token_error(e),
            }
        }
        _ => return bad_request("grant_type must be password or refresh_token"),
    };
    let offline = first(&form, "access_type") == Some("offline");
    let client_id = first(&form, "client_id").unwrap_or_default();
    respond(
        &state,
        Some(&identity),
        &scopes,
        offline && reuse_refresh.is_none(),
        reuse_refresh,
        client_id,
    )
    .await
}

async fn respond(
    state: &ApiState,
    identity: Option<&Identity>,
    scopes: &[Scope],
    offline: bool,
    existing_refresh: Option<String>,
    client_id: &str,
) -> Response {
    let reg = &state.registry;
    let issued = match reg.registry_token(identity, scopes).await {
        Ok(t) => t,
        Err(e) => return token_error(e),
    };
    let refresh = match (identity, offline) {
        (Some(identity), true) => match reg
            .issue_refresh_token(identity, reg.service_name(), client_id)
            .await
        {
            Ok(t) => t,
            Err(e) => return token_error(e),
        },
        _ => existing_refresh,
    };
    let scope_text = (!scopes.is_empty()).then(|| {
        scopes
            .iter()
            .map(|s| {
                format!(
                    "{}:{}:{}",
                    s.resource_type,
                    s.name,
                    s.actions.iter().cloned().collect::<Vec<_>>().join(",")
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    });
    token_response(&issued, scope_text, refresh)
}

/// `GET /auth/jwks`: the public keys that verify this registry's tokens.
pub(super) async fn jwks(State(state): State<ApiState>) -> Response {
    Json(state.registry.jwks()).into_response()
}
