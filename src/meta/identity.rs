//! The identity store: users, organizations, teams, repository visibility and grants, API keys,
//! refresh tokens and login throttling.
//!
//! A separate aggregate from [`MetaStore`](super::MetaStore) so the registry's content tables and the
//! tenancy tables evolve independently; every backend implements both. Secrets are stored hashed:
//! this module never sees a password or token in clear.

use async_trait::async_trait;

use super::Result;

/// Users and organizations share one name space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceKind {
    /// A user's personal namespace.
    User,
    /// An organization.
    Org,
}

/// Repository visibility.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Anyone, anonymous included, may pull.
    Public,
    /// Only those granted access may see it at all.
    Private,
}

impl Visibility {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }

    /// Parses the stored form; anything unknown is private.
    pub fn parse(s: Option<&str>) -> Visibility {
        match s {
            Some("public") => Visibility::Public,
            _ => Visibility::Private,
        }
    }
}

/// A user.
#[derive(Clone, Debug)]
pub struct UserRow {
    /// Id.
    pub id: String,
    /// Login name, also the personal namespace.
    pub username: String,
    /// Email address.
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Site administrator.
    pub is_admin: bool,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Counts password changes and resets; tokens minted at an older generation are dead.
    pub credential_generation: i64,
}

/// A user to create.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// Email address.
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Site administrator.
    pub is_admin: bool,
    /// Take the name even though repositories already live under it (a site admin's decision).
    pub adopt: bool,
}

/// Why a user or organization could not be created under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameConflict {
    /// A user or organization has the name.
    Taken,
    /// Nobody owns the name, but repositories live under it (pushed by a site admin, or left by a
    /// deleted owner, whose tombstone keeps the name): only an explicit adoption may take it.
    HoldsRepositories,
}

/// Changes to a user; `None` leaves a field alone. A new password hash also revokes the user's
/// refresh tokens and moves their credential generation on, in the same transaction.
#[derive(Clone, Debug, Default)]
pub struct UserUpdate {
    /// New email.
    pub email: Option<String>,
    /// New password hash.
    pub password_hash: Option<String>,
    /// New admin flag.
    pub is_admin: Option<bool>,
}

/// An organization.
#[derive(Clone, Debug)]
pub struct OrgRow {
    /// Namespace id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// A member of an organization or a team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRow {
    /// User id.
    pub user_id: String,
    /// User name.
    pub username: String,
    /// Role (`owner`, `admin`, `member`) for org members; `member` for team members.
    pub role: String,
}

/// A team.
#[derive(Clone, Debug)]
pub struct TeamRow {
    /// Id.
    pub id: String,
    /// Owning organization's id.
    pub org_id: String,
    /// Name, unique in the org.
    pub name: String,
}

/// Everything access decisions need about one repository and one user, read together.
#[derive(Clone, Debug, Default)]
pub struct RepoFacts {
    /// Whether the repository exists.
    pub exists: bool,
    /// Its visibility (private when it does not exist).
    pub public: bool,
    /// The namespace named by the repository's first path component, if it exists.
    pub namespace: Option<(String, NamespaceKind)>,
    /// The user's name equals that namespace (their personal namespace).
    pub owns_namespace: bool,
    /// The user's role in that namespace's organization.
    pub org_role: Option<String>,
    /// A direct grant to the user on the repository.
    pub user_grant: Option<String>,
    /// Grants to teams the user belongs to.
    pub team_grants: Vec<String>,
}

/// A repository listing: which repositories, for whom. The store returns the candidates (every
/// repository the user could reach, narrowed by an API key's scope) with the user's facts on
/// each; the service decides on each row with the same function as for a single repository.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepoListing<'a> {
    /// The user asking (`None`: anonymous).
    pub user: Option<&'a str>,
    /// Every repository is a candidate (the user is a site admin).
    pub all: bool,
    /// Only repositories in this namespace.
    pub namespace: Option<&'a str>,
    /// Private repositories only in this namespace (an API key's scope); public ones anywhere.
    pub key_namespace: Option<&'a str>,
    /// Private repositories only this one (an API key's scope); public ones anywhere.
    pub key_repository: Option<&'a str>,
    /// Names after this one.
    pub after: Option<&'a str>,
    /// At most this many rows.
    pub limit: u32,
}

/// A listed repository with the user's facts on it, read by the same query.
#[derive(Clone, Debug)]
pub struct ListedRepo {
    /// The repository.
    pub summary: RepoSummary,
    /// The facts [`IdentityStore::repo_facts`] would give for it and the user, except that
    /// `namespace` is not read (`None`) and `team_grants` holds only the highest team grant.
    pub facts: RepoFacts,
}

/// The rank of a stored permission in SQL (`read` 1, `write` 2, `admin` 3, anything else 0),
/// so a listing can read a user's highest team grant as one `MAX`.
pub(crate) fn permission_rank_sql(column: &str) -> String {
    format!("CASE {column} WHEN 'read' THEN 1 WHEN 'write' THEN 2 WHEN 'admin' THEN 3 ELSE 0 END")
}

/// The stored permission of a rank read through [`permission_rank_sql`] (0 and `NULL`: none).
pub(crate) fn permission_of_rank(rank: Option<i64>) -> Option<String> {
    match rank {
        Some(1) => Some("read".into()),
        Some(2) => Some("write".into()),
        Some(3) => Some("admin".into()),
        _ => None,
    }
}

/// An organization as listed, with the listing user's role in it.
#[derive(Clone, Debug)]
pub struct ListedOrg {
    /// The organization.
    pub org: OrgRow,
    /// The user's role (`owner`, `admin`, `member`), if a member.
    pub role: Option<String>,
}

/// A repository as the management API lists it.
#[derive(Clone, Debug)]
pub struct RepoSummary {
    /// Full name.
    pub name: String,
    /// Visibility.
    pub visibility: Visibility,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// One tag of a repository with its manifest.
#[derive(Clone, Debug)]
pub struct TagSummary {
    /// Tag name.
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// Manifest media type.
    pub media_type: String,
    /// Manifest size plus the sizes of the blobs it references.
    pub size: u64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
}

/// A grant as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRow {
    /// `user` or `team`.
    pub subject_kind: String,
    /// User name, or `org/team` for teams.
    pub subject_name: String,
    /// `read`, `write` or `admin`.
    pub permission: String,
}

/// Who a grant goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantSubject {
    /// A user, by id.
    User(String),
    /// A team, by id.
    Team(String),
}

/// An API key.
#[derive(Clone, Debug)]
pub struct ApiKeyRow {
    /// Id (also embedded in the secret).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Name, unique per user.
    pub name: String,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    /// `all`, `namespace` or `repository`.
    pub scope_kind: String,
    /// The namespace or repository name (empty for `all`).
    pub scope_name: String,
    /// Permission cap.
    pub permission: String,
    /// Expiry, milliseconds since the epoch.
    pub expires_at: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// A refresh token.
#[derive(Clone, Debug)]
pub struct RefreshTokenRow {
    /// Id (embedded in the secret).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// The service (audience) it was issued for.
    pub service: String,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    /// Expiry, milliseconds since the epoch.
    pub expires_at: i64,
    /// The `client_id` the client gave when it asked for the token (may be empty).
    pub client_id: String,
    /// Milliseconds since the epoch (set by the store on insert).
    pub created_at: i64,
    /// When it last minted an access token (recorded at most once a minute).
    pub last_used_at: Option<i64>,
}

/// A login throttle counter and the failures it may hold in a window before attempts are refused.
#[derive(Clone, Copy, Debug)]
pub struct LoginLimit<'a> {
    /// The counter's key.
    pub key: &'a str,
    /// Failures allowed in one window.
    pub max: u32,
}

/// What [`IdentityStore::begin_login_attempt`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginAdmission {
    /// Counted; the credentials may be checked.
    Admitted {
        /// Failures of the `soft` key in its window before this attempt.
        soft_failures: u32,
    },
    /// Not counted: a hard limit is reached.
    Refused {
        /// When the refusing counter's window ends, milliseconds since the epoch.
        until_ms: i64,
    },
}

/// The identity store contract.
#[async_trait]
pub trait IdentityStore: Send + Sync + std::fmt::Debug + 'static {
    /// Number of users.
    async fn count_users(&self) -> Result<u64>;
    /// Creates a user and its namespace. Refused when a user or an org has the name, or, unless
    /// `user.adopt`, when repositories live under it (checked in the same transaction as the
    /// insert; an adoption replaces a tombstone).
    async fn create_user(
        &self,
        user: &NewUser,
    ) -> Result<std::result::Result<UserRow, NameConflict>>;
    /// A user by name.
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>>;
    /// A user by id.
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>>;
    /// Users after `after`, by name.
    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserRow>>;
    /// Updates a user; `false` when unknown. A new password hash revokes the user's refresh
    /// tokens and moves their credential generation on, in the same transaction.
    async fn update_user(&self, id: &str, update: &UserUpdate) -> Result<bool>;
    /// Deletes a user with their memberships, grants, keys and tokens; `Ok(false)` when the user
    /// is unknown. Refused (`Err(reason)`) while they are the last owner of an organization. When
    /// their namespace still holds repositories, its row stays as a tombstone that keeps the name.
    async fn delete_user(&self, id: &str) -> Result<std::result::Result<bool, String>>;

    /// Creates an organization owned by `owner`, refused like [`IdentityStore::create_user`].
    async fn create_org(
        &self,
        name: &str,
        owner: &str,
        adopt: bool,
    ) -> Result<std::result::Result<OrgRow, NameConflict>>;
    /// An organization by name.
    async fn org_by_name(&self, name: &str) -> Result<Option<OrgRow>>;
    /// Organizations after `after` with `user`'s role in each: only those `user` belongs to,
    /// or all of them when `all`.
    async fn list_orgs(
        &self,
        user: &str,
        all: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ListedOrg>>;
    /// Deletes an organization with its teams and memberships (`Ok(false)` when unknown). When it
    /// still holds repositories, its namespace row stays as a tombstone that keeps the name.
    async fn delete_org(&self, id: &str) -> Result<std::result::Result<bool, String>>;
    /// Adds a member or changes their role.
    async fn set_org_member(&self, org: &str, user: &str, role: &str) -> Result<()>;
    /// Removes a member (and their team memberships in the org); `false` when not a member.
    async fn remove_org_member(&self, org: &str, user: &str) -> Result<bool>;
    /// Members of an organization.
    async fn org_members(&self, org: &str) -> Result<Vec<MemberRow>>;

    /// Creates a team; `None` when the name is taken in the org.
    async fn create_team(&self, org: &str, name: &str) -> Result<Option<TeamRow>>;
    /// A team by org id and name.
    async fn team(&self, org: &str, name: &str) -> Result<Option<TeamRow>>;
    /// Teams of an organization.
    async fn list_teams(&self, org: &str) -> Result<Vec<TeamRow>>;
    /// Deletes a team with its memberships and grants.
    async fn delete_team(&self, team: &str) -> Result<bool>;
    /// Adds a user to a team.
    async fn add_team_member(&self, team: &str, user: &str) -> Result<()>;
    /// Removes a user from a team.
    async fn remove_team_member(&self, team: &str, user: &str) -> Result<bool>;
    /// Members of a team.
    async fn team_members(&self, team: &str) -> Result<Vec<MemberRow>>;

    /// Facts about `repo` (and its namespace) for `user`, in one read.
    async fn repo_facts(&self, repo: &str, user: Option<&str>) -> Result<RepoFacts>;
    /// Gives a repository that has no visibility yet (just created by a push) `visibility`.
    async fn init_visibility(&self, repo: &str, visibility: Visibility) -> Result<()>;
    /// Sets a repository's visibility; `false` when unknown.
    async fn set_visibility(&self, repo: &str, visibility: Visibility) -> Result<bool>;
    /// A repository's summary.
    async fn repository(&self, repo: &str) -> Result<Option<RepoSummary>>;
    /// Tags of a repository with sizes, by name.
    async fn repository_tags(&self, repo: &str) -> Result<Vec<TagSummary>>;
    /// The candidates of a repository listing, by name, with the user's facts on each: public
    /// repositories, and those the user could reach (all of them when `all`) within the key's
    /// scope. A superset of what the user may see; the service decides on each row.
    async fn visible_repositories(&self, q: &RepoListing<'_>) -> Result<Vec<ListedRepo>>;
    /// Grants `permission` on `repo` to `subject` (replacing an earlier grant).
    async fn grant(&self, repo: &str, subject: &GrantSubject, permission: &str) -> Result<bool>;
    /// Revokes a grant; `false` when there was none.
    async fn revoke(&self, repo: &str, subject: &GrantSubject) -> Result<bool>;
    /// Grants on a repository.
    async fn grants(&self, repo: &str) -> Result<Vec<GrantRow>>;

    /// Stores an API key.
    async fn create_api_key(&self, key: &ApiKeyRow) -> Result<bool>;
    /// An API key by id.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>>;
    /// A user's API keys.
    async fn list_api_keys(&self, user: &str) -> Result<Vec<ApiKeyRow>>;
    /// Revokes one of a user's API keys; `false` when unknown or already revoked.
    async fn revoke_api_key(&self, user: &str, id: &str) -> Result<bool>;

    /// Stores a refresh token.
    async fn create_refresh_token(&self, token: &RefreshTokenRow) -> Result<()>;
    /// A refresh token by id.
    async fn refresh_token(&self, id: &str) -> Result<Option<RefreshTokenRow>>;
    /// A user's unexpired refresh tokens, by id.
    async fn list_refresh_tokens(&self, user: &str) -> Result<Vec<RefreshTokenRow>>;
    /// Deletes one of a user's refresh tokens; `false` when unknown.
    async fn delete_refresh_token(&self, user: &str, id: &str) -> Result<bool>;
    /// Records that a refresh token was used at `now` (skipped when it was within a minute).
    async fn touch_refresh_token(&self, id: &str, now: i64) -> Result<()>;

    /// Failed logins for `key` in its current window (`window_ms` long).
    async fn login_failures(&self, key: &str, window_ms: i64) -> Result<u32>;
    /// Counts a login attempt as a failure *before* its credentials are checked, so concurrent
    /// attempts cannot all pass a limit they would exceed together. In one transaction: when one
    /// of `hard` already holds its `max` failures in its current window the attempt is refused
    /// and nothing is counted; otherwise one failure is added to every `hard` key and to `soft`.
    /// A key's window starts at its first failure and lasts `window_ms`.
    async fn begin_login_attempt(
        &self,
        hard: &[LoginLimit<'_>],
        soft: &str,
        window_ms: i64,
    ) -> Result<LoginAdmission>;
    /// Takes back an attempt that turned out right: forgets `clear`'s failures and takes one
    /// failure off each of `refund` (never below zero).
    async fn forgive_login_attempt(&self, clear: &str, refund: &[&str]) -> Result<()>;
    /// Deletes at most `limit` throttle counters whose window (`window_ms` long) has ended, oldest
    /// first; returns how many went. Bounded, so it can run on the login path.
    async fn prune_login_failures(&self, window_ms: i64, limit: u32) -> Result<u64>;
}
