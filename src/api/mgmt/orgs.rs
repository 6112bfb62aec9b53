//! Organizations and their members: `/orgs`, `/orgs/{org}`, `/orgs/{org}/members…`.
//!
//! Who may see or change what is decided by the service; an organization the caller does not
//! belong to answers 404 exactly like a missing one.

use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{
    ApiError, Authed, JsonBody, Page, PageQuery, PathParams, QueryParams, created, rfc3339,
};
use crate::api::ApiState;
use crate::auth::permission::OrgRole;
use crate::service::{MemberInfo, OrgInfo};

/// An organization as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct OrgView {
    /// Name (also its namespace).
    name: String,
    /// RFC 3339.
    created_at: String,
}

impl From<OrgInfo> for OrgView {
    fn from(row: OrgInfo) -> Self {
        OrgView {
            name: row.name,
            created_at: rfc3339(row.created_at),
        }
    }
}

/// A member of an organization.
#[derive(Debug, Serialize)]
pub(crate) struct MemberView {
    /// User name.
    username: String,
    /// `owner`, `admin` or `member`.
    role: OrgRole,
}

impl From<MemberInfo> for MemberView {
    fn from(row: MemberInfo) -> Self {
        MemberView {
            username: row.username,
            role: row.role,
        }
    }
}

/// `POST /orgs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewOrgBody {
    name: String,
    /// Take a name under which repositories already live (site admins only).
    #[serde(default)]
    adopt: bool,
}

/// `POST /api/v1/orgs`: creates an organization owned by the caller.
pub(super) async fn create_org(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    JsonBody(body): JsonBody<NewOrgBody>,
) -> Result<Response, ApiError> {
    let row = state
        .registry
        .create_org(&caller, &body.name, body.adopt)
        .await?;
    let location = format!("/orgs/{}", row.name);
    Ok(created(&location, OrgView::from(row)))
}

/// `GET /api/v1/orgs?n=&last=`: the caller's organizations (all of them for site admins).
pub(super) async fn list_orgs(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    OriginalUri(uri): OriginalUri,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(&state.registry, q)?;
    let rows = state
        .registry
        .list_orgs(&caller, page.after(), page.fetch())
        .await?;
    let views = rows.into_iter().map(OrgView::from).collect();
    Ok(page.render(&uri, views, |o: &OrgView| o.name.clone()))
}

/// `GET /api/v1/orgs/{org}`: shows an organization (members and site admins).
pub(super) async fn get_org(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(org): PathParams<String>,
) -> Result<Json<OrgView>, ApiError> {
    let row = state.registry.get_org(&caller, &org).await?;
    Ok(Json(row.into()))
}

/// `DELETE /api/v1/orgs/{org}`: deletes an organization that holds no repositories (owners).
pub(super) async fn delete_org(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(org): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_org(&caller, &org).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/orgs/{org}/members?n=&last=`: members with their roles (members see them).
pub(super) async fn list_org_members(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    OriginalUri(uri): OriginalUri,
    PathParams(org): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(&state.registry, q)?;
    let rows = state.registry.org_members(&caller, &org).await?;
    let views = page
        .slice(rows, |m| m.username.clone())
        .into_iter()
        .map(MemberView::from)
        .collect();
    Ok(page.render(&uri, views, |m: &MemberView| m.username.clone()))
}

/// `POST /orgs/{org}/members` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMemberBody {
    username: String,
    role: OrgRole,
}

/// `POST /api/v1/orgs/{org}/members`: adds a member (or changes their role) (org admins).
pub(super) async fn add_org_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(org): PathParams<String>,
    JsonBody(body): JsonBody<NewMemberBody>,
) -> Result<Response, ApiError> {
    state
        .registry
        .set_org_member(&caller, &org, &body.username, body.role)
        .await?;
    let location = format!("/orgs/{org}/members/{}", body.username);
    let view = MemberView {
        username: body.username,
        role: body.role,
    };
    Ok(created(&location, view))
}

/// `PUT /orgs/{org}/members/{username}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberRoleBody {
    role: OrgRole,
}

/// `PUT /api/v1/orgs/{org}/members/{username}`: adds a member or changes their role (org admins;
/// only owners grant or take `owner`).
pub(super) async fn set_org_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams((org, username)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<MemberRoleBody>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .set_org_member(&caller, &org, &username, body.role)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/orgs/{org}/members/{username}`: removes a member (org admins, or members
/// leaving).
pub(super) async fn remove_org_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams((org, username)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .remove_org_member(&caller, &org, &username)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
