//! Users and API tokens: `POST /auth/token`, `/users…`, `/user` (the caller) and
//! `/user/password`.
//!
//! Invariant: no view here carries a password hash; a user's email is shown only to that user and
//! to site administrators.

use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, Authed, Caller, JsonBody, Page, PageQuery, PathParams, QueryParams, created, rfc3339,
};
use crate::api::ApiState;
use crate::api::credentials::Client;
use crate::service::UserInfo;

/// A user as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct UserView {
    /// Login name (also the personal namespace).
    username: String,
    /// Email; only for the user themselves and site administrators.
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    /// Site administrator.
    is_admin: bool,
    /// RFC 3339.
    created_at: String,
}

impl From<UserInfo> for UserView {
    fn from(user: UserInfo) -> Self {
        UserView {
            username: user.username,
            email: user.email,
            is_admin: user.is_admin,
            created_at: rfc3339(user.created_at),
        }
    }
}

/// `POST /auth/token` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    username: String,
    password: String,
}

/// A management API token.
#[derive(Debug, Serialize)]
pub(crate) struct TokenView {
    /// The bearer token.
    token: String,
    /// Seconds until it expires.
    expires_in: u64,
}

/// `POST /api/v1/auth/token`: exchanges a username and password for an API token.
pub(super) async fn create_token(
    State(state): State<ApiState>,
    client: Client,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<Json<TokenView>, ApiError> {
    let reg = &state.registry;
    let identity = reg.login(&body.username, &body.password, client.ip).await?;
    let issued = reg.api_token(&identity)?;
    Ok(Json(TokenView {
        token: issued.token,
        expires_in: issued.expires_in,
    }))
}

/// `POST /users` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewUserBody {
    username: String,
    password: String,
    email: String,
    #[serde(default)]
    is_admin: bool,
    /// Take a name under which repositories already live (site admins only).
    #[serde(default)]
    adopt: bool,
}

/// `POST /api/v1/users`: creates a user (site admins; anyone when self-signup is on).
pub(super) async fn create_user(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<NewUserBody>,
) -> Result<Response, ApiError> {
    let row = state
        .registry
        .create_user(
            caller.as_ref(),
            &body.username,
            &body.password,
            &body.email,
            body.is_admin,
            body.adopt,
        )
        .await?;
    let location = format!("/users/{}", row.username);
    Ok(created(&location, UserView::from(row)))
}

/// `GET /api/v1/users?n=&last=`: lists users (site admins).
pub(super) async fn list_users(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    OriginalUri(uri): OriginalUri,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(&state.registry, q)?;
    let rows = state
        .registry
        .list_users(&caller, page.after(), page.fetch())
        .await?;
    let views = rows.into_iter().map(UserView::from).collect();
    Ok(page.render(&uri, views, |u: &UserView| u.username.clone()))
}

/// `GET /api/v1/users/{username}`: shows a user.
pub(super) async fn get_user(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(username): PathParams<String>,
) -> Result<Json<UserView>, ApiError> {
    let row = state.registry.get_user(&caller, &username).await?;
    Ok(Json(row.into()))
}

/// `GET /api/v1/user`: shows the caller.
pub(super) async fn get_current_user(
    State(state): State<ApiState>,
    Authed(caller): Authed,
) -> Result<Json<UserView>, ApiError> {
    let row = state.registry.get_user(&caller, &caller.username).await?;
    Ok(Json(row.into()))
}

/// `PATCH /users/{username}` body; absent fields stay as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserUpdateBody {
    email: Option<String>,
    password: Option<String>,
    is_admin: Option<bool>,
}

/// `PATCH /api/v1/users/{username}`: changes email or password (the user or a site admin) or the
/// admin flag (site admins).
pub(super) async fn update_user(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(username): PathParams<String>,
    JsonBody(body): JsonBody<UserUpdateBody>,
) -> Result<Json<UserView>, ApiError> {
    let row = state
        .registry
        .update_user(&caller, &username, body.email, body.password, body.is_admin)
        .await?;
    Ok(Json(row.into()))
}

/// `DELETE /api/v1/users/{username}`: deletes a user (the user or a site admin).
pub(super) async fn delete_user(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(username): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_user(&caller, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /user/password` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChangeBody {
    current_password: String,
    new_password: String,
}

/// `PUT /api/v1/user/password`: changes the caller's password, checking the current one.
pub(super) async fn change_password(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<PasswordChangeBody>,
) -> Result<Response, ApiError> {
    state
        .registry
        .change_password(&caller, &body.current_password, &body.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
