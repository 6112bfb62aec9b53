//! Teams of an organization, their members and their repository permissions:
//! `/orgs/{org}/teams…`.
//!
//! Team repository routes end in the full repository name (`…/repos/acme/app`), served by a
//! wildcard route.

use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{
    ApiError, Authed, JsonBody, Page, PageQuery, PathParams, QueryParams, created, repo_name,
};
use crate::api::ApiState;
use crate::auth::permission::Permission;
use crate::service::{TeamInfo, TeamMemberInfo};

/// A team as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct TeamView {
    /// The organization.
    org: String,
    /// The team's name, unique in the organization.
    name: String,
}

impl From<TeamInfo> for TeamView {
    fn from(row: TeamInfo) -> Self {
        TeamView {
            org: row.org,
            name: row.name,
        }
    }
}

/// A member of a team.
#[derive(Debug, Serialize)]
pub(crate) struct TeamMemberView {
    /// User name.
    username: String,
}

impl From<TeamMemberInfo> for TeamMemberView {
    fn from(row: TeamMemberInfo) -> Self {
        TeamMemberView {
            username: row.username,
        }
    }
}

/// `POST /orgs/{org}/teams` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTeamBody {
    name: String,
}

/// `POST /api/v1/orgs/{org}/teams`: creates a team (org admins).
pub(super) async fn create_team(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams(org): PathParams<String>,
    JsonBody(body): JsonBody<NewTeamBody>,
) -> Result<Response, ApiError> {
    let row = state
        .registry
        .create_team(&caller, &org, &body.name)
        .await?;
    let location = format!("/orgs/{org}/teams/{}", row.name);
    Ok(created(&location, TeamView::from(row)))
}

/// `GET /api/v1/orgs/{org}/teams?n=&last=`: the organization's teams (members).
pub(super) async fn list_teams(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    OriginalUri(uri): OriginalUri,
    PathParams(org): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(&state.registry, q)?;
    let rows = state.registry.list_teams(&caller, &org).await?;
    let views = page
        .slice(rows, |t| t.name.clone())
        .into_iter()
        .map(TeamView::from)
        .collect();
    Ok(page.render(&uri, views, |t: &TeamView| t.name.clone()))
}

/// `DELETE /api/v1/orgs/{org}/teams/{team}`: deletes a team with its memberships and grants
/// (org admins).
pub(super) async fn delete_team(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams((org, team)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.registry.delete_team(&caller, &org, &team).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/orgs/{org}/teams/{team}/members?n=&last=`: the team's members (org members).
pub(super) async fn list_team_members(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    OriginalUri(uri): OriginalUri,
    PathParams((org, team)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(&state.registry, q)?;
    let rows = state.registry.team_members(&caller, &org, &team).await?;
    let views = page
        .slice(rows, |m| m.username.clone())
        .into_iter()
        .map(TeamMemberView::from)
        .collect();
    Ok(page.render(&uri, views, |m: &TeamMemberView| m.username.clone()))
}

/// `PUT /api/v1/orgs/{org}/teams/{team}/members/{username}`: adds an org member to the team
/// (org admins).
pub(super) async fn add_team_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams((org, team, username)): PathParams<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .add_team_member(&caller, &org, &team, &username)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/orgs/{org}/teams/{team}/members/{username}`: removes a user from the team
/// (org admins).
pub(super) async fn remove_team_member(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams((org, team, username)): PathParams<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .remove_team_member(&caller, &org, &team, &username)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /orgs/{org}/teams/{team}/repos/{repo}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeamPermissionBody {
    permission: Permission,
}

/// `PUT /api/v1/orgs/{org}/teams/{team}/repos/{repo…}`: grants the team a permission on one of
/// the organization's repositories (org admins).
pub(super) async fn set_team_permission(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams((org, team, repo)): PathParams<(String, String, String)>,
    JsonBody(body): JsonBody<TeamPermissionBody>,
) -> Result<StatusCode, ApiError> {
    let repo = repo_name(&repo)?;
    state
        .registry
        .set_team_permission(&caller, &org, &team, &repo, body.permission)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/orgs/{org}/teams/{team}/repos/{repo…}`: revokes the team's permission
/// (org admins).
pub(super) async fn revoke_team_permission(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    PathParams((org, team, repo)): PathParams<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let repo = repo_name(&repo)?;
    state
        .registry
        .revoke_team_permission(&caller, &org, &team, &repo)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
