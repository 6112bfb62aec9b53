//! The caller's refresh tokens (`docker login` identity tokens): `/user/refresh-tokens…`.
//!
//! Invariant: no view carries a refresh token's secret or its hash; revoking one also kills the
//! registry tokens minted from it (the service re-checks them on every use).

use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{ApiError, Authed, Page, PageQuery, PathParams, QueryParams, rfc3339};
use crate::api::ApiState;
use crate::service::RefreshTokenInfo;

/// A refresh token as listed.
#[derive(Debug, Serialize)]
pub(crate) struct RefreshTokenView {
    /// Id (also embedded in the secret).
    id: String,
    /// The service it was issued for.
    service: String,
    /// The `client_id` the client gave when it logged in (may be empty).
    client_id: String,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339, to the minute; absent when never used since it was issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_used_at: Option<String>,
    /// RFC 3339.
    expires_at: String,
}

impl From<RefreshTokenInfo> for RefreshTokenView {
    fn from(t: RefreshTokenInfo) -> Self {
        RefreshTokenView {
            id: t.id,
            service: t.service,
            client_id: t.client_id,
            created_at: rfc3339(t.created_at),
            last_used_at: t.last_used_at.map(rfc3339),
            expires_at: rfc3339(t.expires_at),
        }
    }
}

/// `GET /api/v1/user/refresh-tokens?n=&last=`: the caller's unexpired refresh tokens, by id.
pub(super) async fn list_refresh_tokens(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    OriginalUri(uri): OriginalUri,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(&state.registry, q)?;
    let tokens = state.registry.list_refresh_tokens(&caller).await?;
    let views = page
        .slice(tokens, |t| t.id.clone())
        .into_iter()
        .map(RefreshTokenView::from)
        .collect();
    Ok(page.render(&uri, views, |t: &RefreshTokenView| t.id.clone()))
}

/// `DELETE /api/v1/user/refresh-tokens/{id}`: revokes one of the caller's refresh tokens.
pub(super) async fn revoke_refresh_token(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.revoke_refresh_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
