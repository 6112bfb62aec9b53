//! The caller's API keys: `/user/api-keys…`.
//!
//! Invariant: the secret appears in exactly one response, the one that creates the key; no view
//! carries the secret's hash.

use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{
    ApiError, Authed, JsonBody, Page, PageQuery, PathParams, QueryParams, created, rfc3339,
};
use crate::api::ApiState;
use crate::auth::permission::Permission;
use crate::service::{ApiKeyInfo, KeyScope, NewApiKey};

/// Where an API key applies.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyScopeView {
    /// `all`, `namespace` or `repository`.
    kind: String,
    /// The namespace or repository (empty for `all`).
    #[serde(default)]
    name: String,
}

/// An API key as listed (never its secret).
#[derive(Debug, Serialize)]
pub(crate) struct ApiKeyView {
    /// Id (also embedded in the secret).
    id: String,
    /// Name, unique per user.
    name: String,
    /// Where it applies.
    scope: KeyScopeView,
    /// The most it allows there: `read`, `write` or `admin`.
    permission: String,
    /// RFC 3339, if it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    /// RFC 3339, if revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    /// RFC 3339.
    created_at: String,
}

impl From<ApiKeyInfo> for ApiKeyView {
    fn from(row: ApiKeyInfo) -> Self {
        // A stored scope or permission this node does not know shows as `unknown` (the key
        // authenticates nothing; its owner may still revoke it).
        let scope = match &row.scope {
            Some(s) => KeyScopeView {
                kind: s.kind().to_owned(),
                name: s.name().to_owned(),
            },
            None => KeyScopeView {
                kind: "unknown".to_owned(),
                name: String::new(),
            },
        };
        ApiKeyView {
            id: row.id,
            name: row.name,
            scope,
            permission: row
                .permission
                .map_or_else(|| "unknown".to_owned(), |p| p.as_str().to_owned()),
            expires_at: row.expires_at.map(rfc3339),
            revoked_at: row.revoked_at.map(rfc3339),
            created_at: rfc3339(row.created_at),
        }
    }
}

/// A key just created: the listing view plus its secret, shown this once.
#[derive(Debug, Serialize)]
pub(crate) struct CreatedApiKeyView {
    #[serde(flatten)]
    key: ApiKeyView,
    /// The secret (`aerugo_ak_…`): a Bearer credential, or the password for `docker login`.
    secret: String,
}

/// `POST /user/api-keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApiKeyBody {
    name: String,
    scope: KeyScopeView,
    permission: Permission,
    expires_in_days: Option<u32>,
}

/// `POST /api/v1/user/api-keys`: creates an API key for the caller (not through an API key).
pub(super) async fn create_api_key(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<NewApiKeyBody>,
) -> Result<Response, ApiError> {
    let scope = KeyScope::from_stored(&body.scope.kind, &body.scope.name)
        .ok_or_else(|| ApiError::invalid("scope kind must be all, namespace or repository"))?;
    let new = NewApiKey {
        name: body.name,
        scope,
        permission: body.permission,
        expires_in_days: body.expires_in_days,
    };
    let (row, secret) = state.registry.create_api_key(&caller, new).await?;
    let location = format!("/user/api-keys/{}", row.id);
    let view = CreatedApiKeyView {
        key: row.into(),
        secret,
    };
    Ok(created(&location, view))
}

/// `GET /api/v1/user/api-keys?n=&last=`: the caller's API keys, by id, without secrets.
pub(super) async fn list_api_keys(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    OriginalUri(uri): OriginalUri,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(&state.registry, q)?;
    let rows = state.registry.list_api_keys(&caller).await?;
    let views = page
        .slice(rows, |k| k.id.clone())
        .into_iter()
        .map(ApiKeyView::from)
        .collect();
    Ok(page.render(&uri, views, |k: &ApiKeyView| k.id.clone()))
}

/// `DELETE /api/v1/user/api-keys/{id}`: revokes one of the caller's API keys.
pub(super) async fn revoke_api_key(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.revoke_api_key(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
