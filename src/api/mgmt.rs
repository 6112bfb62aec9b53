//! The management REST API under `/api/v1` (JSON): users, organizations, members, teams,
//! repositories and their permissions, API keys, the work queue's dead letters (site admins), and
//! the OpenAPI document describing all of it.
//!
//! One table ([`Op`]) names every operation with its method and path; the router and the OpenAPI
//! document are both built from it, so neither can serve or document a route the other lacks.
//! Repository names may contain slashes, so every route with a `{repo}` is served by a wildcard
//! (`{*repo}`) route; [`RepoTarget`] splits a trailing `/permissions…` off the name.
//!
//! Handlers are thin: extract (the [`Caller`]/[`Authed`] extractors authenticate), call one
//! `Registry` method, render an `XxxView`. Every error is an [`ApiError`] (`{"error": {…}}`);
//! a 401 gets a `WWW-Authenticate: Bearer realm="<public URL>/api/v1/auth/token"` challenge.
//! List endpoints paginate with `n`/`last` and a `Link: <…>; rel="next"` header.
//! Must not depend on `meta`, `storage` or `app`: only `service` (and `auth` for its enums).

use std::collections::BTreeSet;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::credentials::{Client, Credentials};
use super::{ApiState, public_base, quoted};
use crate::oci::RepoName;
use crate::service::{Identity, Registry};

mod admin;
pub(crate) mod error;
mod keys;
mod openapi;
mod orgs;
mod refresh_tokens;
mod repos;
mod teams;
mod users;

pub(crate) use error::ApiError;

/// The prefix the management API is mounted at.
pub(crate) const PREFIX: &str = "/api/v1";

macro_rules! operations {
    ($($(#[$doc:meta])* $op:ident => $method:ident $path:literal;)*) => {
        /// Every operation of the management API, with its method and OpenAPI path (relative to
        /// [`PREFIX`]). `{repo}` stands for a full repository name, slashes included.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub(crate) enum Op {
            $($(#[$doc])* $op,)*
        }

        impl Op {
            /// Every operation, in documentation order.
            pub(crate) const ALL: &'static [Op] = &[$(Op::$op,)*];

            /// The HTTP method.
            pub(crate) fn method(self) -> Method {
                match self {
                    $(Op::$op => Method::$method,)*
                }
            }

            /// The OpenAPI path template.
            pub(crate) fn path(self) -> &'static str {
                match self {
                    $(Op::$op => $path,)*
                }
            }
        }
    };
}

operations! {
    /// Exchanges a username and password for an API token.
    CreateToken => POST "/auth/token";
    /// Creates a user.
    CreateUser => POST "/users";
    /// Lists users.
    ListUsers => GET "/users";
    /// Shows a user.
    GetUser => GET "/users/{username}";
    /// Changes a user.
    UpdateUser => PATCH "/users/{username}";
    /// Deletes a user.
    DeleteUser => DELETE "/users/{username}";
    /// Shows the caller.
    GetCurrentUser => GET "/user";
    /// Changes the caller's password.
    ChangePassword => PUT "/user/password";
    /// Creates an API key for the caller.
    CreateApiKey => POST "/user/api-keys";
    /// Lists the caller's API keys.
    ListApiKeys => GET "/user/api-keys";
    /// Revokes one of the caller's API keys.
    RevokeApiKey => DELETE "/user/api-keys/{id}";
    /// Lists the caller's refresh tokens.
    ListRefreshTokens => GET "/user/refresh-tokens";
    /// Revokes one of the caller's refresh tokens.
    RevokeRefreshToken => DELETE "/user/refresh-tokens/{id}";
    /// Creates an organization.
    CreateOrg => POST "/orgs";
    /// Lists organizations.
    ListOrgs => GET "/orgs";
    /// Shows an organization.
    GetOrg => GET "/orgs/{org}";
    /// Deletes an organization.
    DeleteOrg => DELETE "/orgs/{org}";
    /// Lists an organization's members.
    ListOrgMembers => GET "/orgs/{org}/members";
    /// Adds a member to an organization.
    AddOrgMember => POST "/orgs/{org}/members";
    /// Adds a member or changes their role.
    SetOrgMember => PUT "/orgs/{org}/members/{username}";
    /// Removes a member.
    RemoveOrgMember => DELETE "/orgs/{org}/members/{username}";
    /// Creates a team.
    CreateTeam => POST "/orgs/{org}/teams";
    /// Lists teams.
    ListTeams => GET "/orgs/{org}/teams";
    /// Deletes a team.
    DeleteTeam => DELETE "/orgs/{org}/teams/{team}";
    /// Lists a team's members.
    ListTeamMembers => GET "/orgs/{org}/teams/{team}/members";
    /// Adds a member to a team.
    AddTeamMember => PUT "/orgs/{org}/teams/{team}/members/{username}";
    /// Removes a member from a team.
    RemoveTeamMember => DELETE "/orgs/{org}/teams/{team}/members/{username}";
    /// Grants a team a permission on a repository.
    SetTeamPermission => PUT "/orgs/{org}/teams/{team}/repos/{repo}";
    /// Revokes a team's permission on a repository.
    RevokeTeamPermission => DELETE "/orgs/{org}/teams/{team}/repos/{repo}";
    /// Lists repositories.
    ListRepos => GET "/repos";
    /// Shows a repository with its tags.
    GetRepo => GET "/repos/{repo}";
    /// Changes a repository's visibility.
    UpdateRepo => PATCH "/repos/{repo}";
    /// Deletes a repository.
    DeleteRepo => DELETE "/repos/{repo}";
    /// Lists a repository's grants.
    ListRepoPermissions => GET "/repos/{repo}/permissions";
    /// Grants a user or team a permission on a repository.
    GrantRepoPermission => PUT "/repos/{repo}/permissions";
    /// Revokes a user's grant.
    RevokeUserPermission => DELETE "/repos/{repo}/permissions/user/{username}";
    /// Revokes a team's grant.
    RevokeTeamGrant => DELETE "/repos/{repo}/permissions/team/{team}";
    /// Lists dead letters of the work queue.
    ListBuriedWork => GET "/admin/work/buried";
    /// Makes a dead letter due again.
    RequeueWork => POST "/admin/work/requeue";
    /// This API's OpenAPI document.
    GetOpenapi => GET "/openapi.json";
}

impl Op {
    /// The axum route serving this operation: the path itself, or for paths with `{repo}` the
    /// wildcard route ending at the repository name.
    fn route_path(self) -> String {
        let path = self.path();
        match path.find("{repo}") {
            Some(i) => format!("{}{{*repo}}", &path[..i]),
            None => path.to_owned(),
        }
    }

    /// The handler serving this operation. Operations sharing a wildcard route and method share
    /// a handler, which tells them apart with [`RepoTarget`].
    fn handler(self) -> MethodRouter<ApiState> {
        match self {
            Op::CreateToken => post(users::create_token),
            Op::CreateUser => post(users::create_user),
            Op::ListUsers => get(users::list_users),
            Op::GetUser => get(users::get_user),
            Op::UpdateUser => patch(users::update_user),
            Op::DeleteUser => delete(users::delete_user),
            Op::GetCurrentUser => get(users::get_current_user),
            Op::ChangePassword => put(users::change_password),
            Op::CreateApiKey => post(keys::create_api_key),
            Op::ListApiKeys => get(keys::list_api_keys),
            Op::RevokeApiKey => delete(keys::revoke_api_key),
            Op::ListRefreshTokens => get(refresh_tokens::list_refresh_tokens),
            Op::RevokeRefreshToken => delete(refresh_tokens::revoke_refresh_token),
            Op::CreateOrg => post(orgs::create_org),
            Op::ListOrgs => get(orgs::list_orgs),
            Op::GetOrg => get(orgs::get_org),
            Op::DeleteOrg => delete(orgs::delete_org),
            Op::ListOrgMembers => get(orgs::list_org_members),
            Op::AddOrgMember => post(orgs::add_org_member),
            Op::SetOrgMember => put(orgs::set_org_member),
            Op::RemoveOrgMember => delete(orgs::remove_org_member),
            Op::CreateTeam => post(teams::create_team),
            Op::ListTeams => get(teams::list_teams),
            Op::DeleteTeam => delete(teams::delete_team),
            Op::ListTeamMembers => get(teams::list_team_members),
            Op::AddTeamMember => put(teams::add_team_member),
            Op::RemoveTeamMember => delete(teams::remove_team_member),
            Op::SetTeamPermission => put(teams::set_team_permission),
            Op::RevokeTeamPermission => delete(teams::revoke_team_permission),
            Op::ListRepos => get(repos::list_repos),
            Op::GetRepo | Op::ListRepoPermissions => get(repos::get_repo_or_permissions),
            Op::UpdateRepo => patch(repos::update_repo),
            Op::DeleteRepo | Op::RevokeUserPermission | Op::RevokeTeamGrant => {
                delete(repos::delete_repo_or_grant)
            }
            Op::GrantRepoPermission => put(repos::grant_repo_permission),
            Op::ListBuriedWork => get(admin::list_buried_work),
            Op::RequeueWork => post(admin::requeue_work),
            Op::GetOpenapi => get(openapi::get_openapi),
        }
    }
}

/// The routes of [`Op::ALL`], without state-dependent layers.
fn routes() -> Router<ApiState> {
    let mut served = BTreeSet::new();
    let mut router = Router::new();
    for &op in Op::ALL {
        let path = op.route_path();
        // Several operations may share one wildcard route and method (see `RepoTarget`).
        if served.insert((path.clone(), op.method().to_string())) {
            router = router.route(&path, op.handler());
        }
    }
    router
        .fallback(|| async { ApiError::no_endpoint() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}

/// The management API, to be nested at [`PREFIX`].
pub(crate) fn router(state: &ApiState) -> Router<ApiState> {
    routes().layer(middleware::from_fn_with_state(state.clone(), challenge))
}

/// Adds the Bearer challenge to every 401 (the error mapping cannot know the public URL).
async fn challenge(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let client = Client::of(req.extensions(), req.headers(), &state.trusted_proxies);
    let realm = format!(
        "{}{PREFIX}/auth/token",
        public_base(&state, req.headers(), &client)
    );
    let mut res = next.run(req).await;
    if res.status() == StatusCode::UNAUTHORIZED
        && !res.headers().contains_key(header::WWW_AUTHENTICATE)
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer realm={}", quoted(&realm)))
    {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

// ---- repository paths ----------------------------------------------------------------------

/// What a `/repos/{repo…}` path addresses once the trailing `/permissions…` is split off.
///
/// The split happens at the last marker, so a repository whose last component is `permissions`
/// cannot be addressed by these routes (the OCI routes have the same rule for their markers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RepoTarget {
    /// `/repos/{repo}`.
    Repo(String),
    /// `/repos/{repo}/permissions`.
    Permissions(String),
    /// `/repos/{repo}/permissions/user/{username}`.
    UserGrant(String, String),
    /// `/repos/{repo}/permissions/team/{team}` (`team` or `org/team`).
    TeamGrant(String, String),
}

impl RepoTarget {
    /// Splits the wildcard part of a `/repos/…` path.
    pub(crate) fn parse(rest: &str) -> RepoTarget {
        let rest = rest.trim_start_matches('/');
        if let Some(repo) = rest.strip_suffix("/permissions").filter(|r| !r.is_empty()) {
            return RepoTarget::Permissions(repo.to_owned());
        }
        if let Some(i) = rest.rfind("/permissions/user/") {
            let (repo, name) = (&rest[..i], &rest[i + "/permissions/user/".len()..]);
            if !repo.is_empty() && !name.is_empty() && !name.contains('/') {
                return RepoTarget::UserGrant(repo.to_owned(), name.to_owned());
            }
        }
        if let Some(i) = rest.rfind("/permissions/team/") {
            let (repo, team) = (&rest[..i], &rest[i + "/permissions/team/".len()..]);
            let parts: Vec<&str> = team.split('/').collect();
            if !repo.is_empty() && parts.len() <= 2 && parts.iter().all(|p| !p.is_empty()) {
                return RepoTarget::TeamGrant(repo.to_owned(), team.to_owned());
            }
        }
        RepoTarget::Repo(rest.to_owned())
    }

    /// The operation `method` on this target is, if any.
    pub(crate) fn op(&self, method: &Method) -> Option<Op> {
        let op = match (self, method.as_str()) {
            (RepoTarget::Repo(_), "GET" | "HEAD") => Op::GetRepo,
            (RepoTarget::Repo(_), "PATCH") => Op::UpdateRepo,
            (RepoTarget::Repo(_), "DELETE") => Op::DeleteRepo,
            (RepoTarget::Permissions(_), "GET" | "HEAD") => Op::ListRepoPermissions,
            (RepoTarget::Permissions(_), "PUT") => Op::GrantRepoPermission,
            (RepoTarget::UserGrant(..), "DELETE") => Op::RevokeUserPermission,
            (RepoTarget::TeamGrant(..), "DELETE") => Op::RevokeTeamGrant,
            _ => return None,
        };
        Some(op)
    }
}

/// Parses a repository name from a path (400 `invalid` when it breaks the grammar).
pub(crate) fn repo_name(name: &str) -> Result<RepoName, ApiError> {
    name.parse::<RepoName>()
        .map_err(|e| ApiError::invalid(format!("invalid repository name: {e}")))
}

// ---- extractors ------------------------------------------------------------------------------

/// The caller, if they presented credentials: `Authorization: Bearer <API token or API key>` or
/// `Basic <user:password or user:API key>`. Wrong credentials are a 401, never anonymous.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) Option<Identity>);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let registry: &Registry = &state.registry;
        let identity = match Credentials::from_headers(&parts.headers) {
            Credentials::None => None,
            Credentials::Bearer(token) => Some(registry.authenticate_bearer(&token).await?),
            Credentials::Basic { username, password } => {
                let client = Client::of(&parts.extensions, &parts.headers, &state.trusted_proxies);
                Some(registry.login(&username, &password, client.ip).await?)
            }
            Credentials::Malformed => return Err(ApiError::unauthorized()),
        };
        Ok(Caller(identity))
    }
}

/// An authenticated caller; anonymous requests are refused with 401.
#[derive(Clone, Debug)]
pub(crate) struct Authed(pub(crate) Identity);

impl FromRequestParts<ApiState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Caller::from_request_parts(parts, state)
            .await?
            .0
            .map(Authed)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// A JSON request body; malformed JSON, wrong types, unknown or missing fields are 400 `invalid`.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct JsonBody<T>(pub(crate) T);

/// Path parameters; undecodable ones are 400 `invalid`.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct PathParams<T>(pub(crate) T);

/// Query parameters; unparsable ones are 400 `invalid`.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct QueryParams<T>(pub(crate) T);

// ---- pagination ------------------------------------------------------------------------------

/// `?n=&last=` of a list endpoint.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub(crate) struct PageQuery {
    /// Page size.
    pub(crate) n: Option<u32>,
    /// The sort key of the last item of the previous page.
    pub(crate) last: Option<String>,
}

/// A validated page request.
#[derive(Clone, Debug)]
pub(crate) struct Page {
    /// Items to show.
    pub(crate) limit: u32,
    /// Items after this key.
    pub(crate) last: Option<String>,
}

impl Page {
    /// Validates `n` against the registry's page sizes: absent means the default, 0 is refused,
    /// anything above the maximum is capped.
    pub(crate) fn new(registry: &Registry, q: PageQuery) -> Result<Page, ApiError> {
        let settings = registry.settings();
        let limit = match q.n {
            None => settings.default_page_size,
            Some(0) => return Err(ApiError::invalid("n must be at least 1")),
            Some(n) => n.min(settings.max_page_size),
        };
        Ok(Page {
            limit: limit.max(1),
            last: q.last.filter(|l| !l.is_empty()),
        })
    }

    /// How many items to ask the service for: one more than shown, to know whether a next page
    /// exists.
    pub(crate) fn fetch(&self) -> u32 {
        self.limit.saturating_add(1)
    }

    /// The `after` cursor for the service.
    pub(crate) fn after(&self) -> Option<&str> {
        self.last.as_deref()
    }

    /// Pages a complete list the service returned in one piece: sorted by `key`, after `last`,
    /// at most [`Page::fetch`] items.
    pub(crate) fn slice<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
        items.sort_by_key(|i| key(i));
        items
            .into_iter()
            .filter(|i| {
                self.last
                    .as_ref()
                    .is_none_or(|l| key(i).as_str() > l.as_str())
            })
            .take(self.fetch() as usize)
            .collect()
    }

    /// Renders a page of views (fetched with [`Page::fetch`]) as a JSON array, with a
    /// `Link: <…>; rel="next"` header when more items follow. `uri` is the original request URI
    /// (prefix included).
    pub(crate) fn render<T: Serialize>(
        &self,
        uri: &Uri,
        mut items: Vec<T>,
        key: impl Fn(&T) -> String,
    ) -> Response {
        let more = items.len() > self.limit as usize;
        items.truncate(self.limit as usize);
        let next = if more { items.last().map(&key) } else { None };
        let mut res = axum::Json(items).into_response();
        if let Some(last) = next {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
                if k != "n" && k != "last" {
                    query.append_pair(&k, &v);
                }
            }
            query.append_pair("n", &self.limit.to_string());
            query.append_pair("last", &last);
            let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.finish());
            if let Ok(v) = HeaderValue::from_str(&link) {
                res.headers_mut().insert(header::LINK, v);
            }
        }
        res
    }
}

// ---- rendering helpers -----------------------------------------------------------------------

/// Milliseconds since the epoch as RFC 3339.
pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// `201 Created` with a `Location` (under [`PREFIX`]) and a JSON body.
pub(crate) fn created<T: Serialize>(location: &str, body: T) -> Response {
    let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{PREFIX}{location}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Substitutes placeholders the way a client would fill them in.
    fn concrete(path: &str) -> String {
        path.replace("{username}", "bob")
            .replace("{org}", "acme")
            .replace("{team}", "acme/devs")
            .replace("{id}", "k1")
            .replace("{repo}", "acme/sub/app")
    }

    #[test]
    fn operations_are_unique_and_routes_build() {
        let pairs: BTreeSet<(String, &str)> = Op::ALL
            .iter()
            .map(|op| (op.method().to_string(), op.path()))
            .collect();
        assert_eq!(
            pairs.len(),
            Op::ALL.len(),
            "a (method, path) is listed twice"
        );
        // Building panics on a conflicting route; this also runs the dedup of wildcard routes.
        let _ = routes();
    }

    /// Every wildcard operation is what the wildcard handler resolves its own documented path to.
    #[test]
    fn wildcard_paths_resolve_to_their_operation() {
        for &op in Op::ALL {
            let Some(rest) = op.path().strip_prefix("/repos/") else {
                continue;
            };
            let target = RepoTarget::parse(&concrete(rest));
            assert_eq!(target.op(&op.method()), Some(op), "{op:?}: {target:?}");
        }
    }

    #[test]
    fn repo_targets_split_at_the_last_marker() {
        use RepoTarget::*;
        let cases = [
            ("acme/app", Repo("acme/app".into())),
            ("acme/app/permissions", Permissions("acme/app".into())),
            (
                "a/permissions/b/permissions/user/bob",
                UserGrant("a/permissions/b".into(), "bob".into()),
            ),
            (
                "acme/app/permissions/team/acme/devs",
                TeamGrant("acme/app".into(), "acme/devs".into()),
            ),
            (
                "acme/app/permissions/team/devs",
                TeamGrant("acme/app".into(), "devs".into()),
            ),
            ("permissions", Repo("permissions".into())),
            (
                "acme/app/permissions/user/a/b",
                Repo("acme/app/permissions/user/a/b".into()),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(RepoTarget::parse(path), want, "{path}");
        }
        assert_eq!(Repo("x".into()).op(&Method::PUT), None);
        assert_eq!(Permissions("x".into()).op(&Method::DELETE), None);
    }

    #[test]
    fn wildcard_routes_end_at_the_repository() {
        assert_eq!(Op::GetRepo.route_path(), "/repos/{*repo}");
        assert_eq!(Op::RevokeTeamGrant.route_path(), "/repos/{*repo}");
        assert_eq!(
            Op::SetTeamPermission.route_path(),
            "/orgs/{org}/teams/{team}/repos/{*repo}"
        );
        assert_eq!(Op::GetUser.route_path(), "/users/{username}");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
