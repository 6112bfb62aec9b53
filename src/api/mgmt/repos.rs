//! Repositories: `/repos` (list), and under `/repos/{repo…}` (a wildcard, since names contain
//! slashes) the detail, visibility, deletion and permission grants.
//!
//! Invariant: a private repository answers 404 to whoever may not read it, whatever the
//! operation; the service decides, these handlers only render.

use axum::Json;
use axum::extract::{OriginalUri, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, Authed, Caller, JsonBody, Op, Page, PageQuery, PathParams, QueryParams, RepoTarget,
    repo_name, rfc3339,
};
use crate::api::ApiState;
use crate::auth::permission::Permission;
use crate::service::{GrantInfo, GrantTo, RepoDetail, RepoSummary, TagSummary, Visibility};

/// A repository in a list.
#[derive(Debug, Serialize)]
pub(crate) struct RepoView {
    /// Full name.
    name: String,
    /// `public` or `private`.
    visibility: &'static str,
    /// RFC 3339.
    created_at: String,
}

impl From<RepoSummary> for RepoView {
    fn from(s: RepoSummary) -> Self {
        RepoView {
            name: s.name,
            visibility: s.visibility.as_str(),
            created_at: rfc3339(s.created_at),
        }
    }
}

/// A tag of a repository.
#[derive(Debug, Serialize)]
pub(crate) struct TagView {
    /// Tag name.
    name: String,
    /// Manifest digest.
    digest: String,
    /// Manifest media type.
    media_type: String,
    /// Manifest size plus the sizes of the blobs it references, in bytes.
    size: u64,
    /// RFC 3339.
    updated_at: String,
}

impl From<TagSummary> for TagView {
    fn from(t: TagSummary) -> Self {
        TagView {
            name: t.name,
            digest: t.digest,
            media_type: t.media_type,
            size: t.size,
            updated_at: rfc3339(t.updated_at),
        }
    }
}

/// A repository with its tags.
#[derive(Debug, Serialize)]
pub(crate) struct RepoDetailView {
    /// Full name.
    name: String,
    /// `public` or `private`.
    visibility: &'static str,
    /// RFC 3339.
    created_at: String,
    /// The latest tag update (or the creation), RFC 3339.
    updated_at: String,
    /// Tags by name.
    tags: Vec<TagView>,
}

impl From<RepoDetail> for RepoDetailView {
    fn from(d: RepoDetail) -> Self {
        let updated = d
            .tags
            .iter()
            .map(|t| t.updated_at)
            .fold(d.summary.created_at, i64::max);
        RepoDetailView {
            name: d.summary.name,
            visibility: d.summary.visibility.as_str(),
            created_at: rfc3339(d.summary.created_at),
            updated_at: rfc3339(updated),
            tags: d.tags.into_iter().map(TagView::from).collect(),
        }
    }
}

/// A grant on a repository: exactly one of `user` and `team` (as `org/team`).
#[derive(Debug, Serialize)]
pub(crate) struct GrantView {
    /// The user, for a user grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// The team as `org/team`, for a team grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    team: Option<String>,
    /// `read`, `write` or `admin`.
    permission: Permission,
}

impl GrantView {
    fn key(&self) -> String {
        match (&self.user, &self.team) {
            (Some(u), _) => format!("user:{u}"),
            (_, Some(t)) => format!("team:{t}"),
            _ => String::new(),
        }
    }
}

impl From<GrantInfo> for GrantView {
    fn from(g: GrantInfo) -> Self {
        let (user, team) = match g.subject {
            GrantTo::User(u) => (Some(u), None),
            GrantTo::Team(t) => (None, Some(t)),
        };
        GrantView {
            user,
            team,
            permission: g.permission,
        }
    }
}

/// `GET /repos` query.
#[derive(Debug, Deserialize)]
pub(crate) struct RepoQuery {
    namespace: Option<String>,
    n: Option<u32>,
    last: Option<String>,
}

/// `GET /api/v1/repos?namespace=&n=&last=`: repositories the caller may see (anonymous callers
/// see public ones).
pub(super) async fn list_repos(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    OriginalUri(uri): OriginalUri,
    QueryParams(q): QueryParams<RepoQuery>,
) -> Result<Response, ApiError> {
    let page = Page::new(
        &state.registry,
        PageQuery {
            n: q.n,
            last: q.last,
        },
    )?;
    let namespace = q.namespace.filter(|n| !n.is_empty());
    let rows = state
        .registry
        .list_repositories(
            caller.as_ref(),
            namespace.as_deref(),
            page.after(),
            page.fetch(),
        )
        .await?;
    let views = rows.into_iter().map(RepoView::from).collect();
    Ok(page.render(&uri, views, |r: &RepoView| r.name.clone()))
}

/// `GET /api/v1/repos/{repo…}` (the repository with its tags; readers) and
/// `GET /api/v1/repos/{repo…}/permissions?n=&last=` (its grants; repository admins).
pub(super) async fn get_repo_or_permissions(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    method: Method,
    OriginalUri(uri): OriginalUri,
    PathParams(rest): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let target = RepoTarget::parse(&rest);
    match (target.op(&method), target) {
        (Some(Op::GetRepo), RepoTarget::Repo(name)) => {
            let repo = repo_name(&name)?;
            let detail = state
                .registry
                .repository_detail(caller.as_ref(), &repo)
                .await?;
            Ok(Json(RepoDetailView::from(detail)).into_response())
        }
        (Some(Op::ListRepoPermissions), RepoTarget::Permissions(name)) => {
            let caller = caller.ok_or_else(ApiError::unauthorized)?;
            let repo = repo_name(&name)?;
            let page = Page::new(&state.registry, q)?;
            let grants = state.registry.repository_grants(&caller, &repo).await?;
            let views: Vec<GrantView> = grants.into_iter().map(GrantView::from).collect();
            let views = page.slice(views, GrantView::key);
            Ok(page.render(&uri, views, GrantView::key))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// Repository visibility in requests.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum VisibilityBody {
    /// Anyone may pull.
    Public,
    /// Only those granted access see it.
    Private,
}

/// `PATCH /repos/{repo}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepoUpdateBody {
    visibility: VisibilityBody,
}

/// `PATCH /api/v1/repos/{repo…}`: changes the visibility (repository admins).
pub(super) async fn update_repo(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    method: Method,
    PathParams(rest): PathParams<String>,
    JsonBody(body): JsonBody<RepoUpdateBody>,
) -> Result<Json<RepoView>, ApiError> {
    let target = RepoTarget::parse(&rest);
    let (Some(Op::UpdateRepo), RepoTarget::Repo(name)) = (target.op(&method), target) else {
        return Err(ApiError::method_not_allowed());
    };
    let repo = repo_name(&name)?;
    let visibility = match body.visibility {
        VisibilityBody::Public => Visibility::Public,
        VisibilityBody::Private => Visibility::Private,
    };
    let summary = state
        .registry
        .set_visibility(&caller, &repo, visibility)
        .await?;
    Ok(Json(summary.into()))
}

/// `DELETE /api/v1/repos/{repo…}` (tags and manifests go, blobs stay for garbage collection),
/// `…/permissions/user/{username}` and `…/permissions/team/{team}` (revoke a grant); repository
/// admins.
pub(super) async fn delete_repo_or_grant(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    method: Method,
    PathParams(rest): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let reg = &state.registry;
    let target = RepoTarget::parse(&rest);
    match (target.op(&method), target) {
        (Some(Op::DeleteRepo), RepoTarget::Repo(name)) => {
            reg.delete_repository(&caller, &repo_name(&name)?).await?;
        }
        (Some(Op::RevokeUserPermission), RepoTarget::UserGrant(name, user)) => {
            let repo = repo_name(&name)?;
            reg.revoke_permission(&caller, &repo, Some(&user), None)
                .await?;
        }
        (Some(Op::RevokeTeamGrant), RepoTarget::TeamGrant(name, team)) => {
            let repo = repo_name(&name)?;
            reg.revoke_permission(&caller, &repo, None, Some(&team))
                .await?;
        }
        _ => return Err(ApiError::method_not_allowed()),
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /repos/{repo}/permissions` body: exactly one of `user` and `team` (`team` or
/// `org/team`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantBody {
    user: Option<String>,
    team: Option<String>,
    permission: Permission,
}

/// `PUT /api/v1/repos/{repo…}/permissions`: grants a user or team a permission, replacing an
/// earlier grant (repository admins).
pub(super) async fn grant_repo_permission(
    State(state): State<ApiState>,
    Authed(caller): Authed,
    method: Method,
    PathParams(rest): PathParams<String>,
    JsonBody(body): JsonBody<GrantBody>,
) -> Result<StatusCode, ApiError> {
    let target = RepoTarget::parse(&rest);
    let (Some(Op::GrantRepoPermission), RepoTarget::Permissions(name)) =
        (target.op(&method), target)
    else {
        return Err(ApiError::method_not_allowed());
    };
    let repo = repo_name(&name)?;
    state
        .registry
        .grant_permission(
            &caller,
            &repo,
            body.user.as_deref(),
            body.team.as_deref(),
            body.permission,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
