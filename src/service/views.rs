//! What the service hands the management API: typed views of the identity store's rows.
//!
//! Invariants: no view carries a password hash, a secret's hash or a storage key; roles,
//! permissions, grant subjects and key scopes are enums, parsed here at the store's boundary
//! (a stored value this node does not know is never widened into something it does).
//! Must not depend on `api`.

use crate::auth::permission::{OrgRole, Permission};
use crate::meta::identity::{
    ApiKeyRow, GrantRow, MemberRow, OrgRow, RefreshTokenRow, TeamRow, UserRow,
};

use super::access::KeyScope;

/// A user, as shown to one caller: the email only when the policy lets the caller see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// Login name, also the personal namespace.
    pub username: String,
    /// Email address, when the caller may see it.
    pub email: Option<String>,
    /// Site administrator.
    pub is_admin: bool,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

impl UserInfo {
    /// The view of `row`, with its email when `sees_email`.
    pub(super) fn new(row: UserRow, sees_email: bool) -> Self {
        UserInfo {
            username: row.username,
            email: sees_email.then_some(row.email),
            is_admin: row.is_admin,
            created_at: row.created_at,
        }
    }
}

/// An organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgInfo {
    /// Name.
    pub name: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

impl From<OrgRow> for OrgInfo {
    fn from(row: OrgRow) -> Self {
        OrgInfo {
            name: row.name,
            created_at: row.created_at,
        }
    }
}

/// A member of an organization with their role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// User name.
    pub username: String,
    /// Role in the organization.
    pub role: OrgRole,
}

impl MemberInfo {
    /// The view of `row`, or `None` when its role is unknown to this node (such a member
    /// counts as no member at all in every decision, so it is not shown as one either).
    pub(super) fn of(row: MemberRow) -> Option<Self> {
        Some(MemberInfo {
            role: row.role.parse().ok()?,
            username: row.username,
        })
    }
}

/// A team of an organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamInfo {
    /// The organization's name.
    pub org: String,
    /// The team's name, unique in the organization.
    pub name: String,
}

impl TeamInfo {
    /// The view of `row`, a team of `org`.
    pub(super) fn new(org: &str, row: TeamRow) -> Self {
        TeamInfo {
            org: org.to_owned(),
            name: row.name,
        }
    }
}

/// A member of a team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamMemberInfo {
    /// User name.
    pub username: String,
}

impl From<MemberRow> for TeamMemberInfo {
    fn from(row: MemberRow) -> Self {
        TeamMemberInfo {
            username: row.username,
        }
    }
}

/// Who a grant goes to, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantTo {
    /// A user.
    User(String),
    /// A team, as `org/team`.
    Team(String),
}

impl GrantTo {
    /// A sort and page key: `user:<name>` or `team:<org/team>`.
    pub fn key(&self) -> String {
        match self {
            GrantTo::User(u) => format!("user:{u}"),
            GrantTo::Team(t) => format!("team:{t}"),
        }
    }
}

/// A grant on a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantInfo {
    /// Who holds it.
    pub subject: GrantTo,
    /// What it grants.
    pub permission: Permission,
}

impl GrantInfo {
    /// The view of `row`, or `None` when its subject kind or permission is unknown to this node
    /// (such a grant grants nothing, so it is not shown as granting something).
    pub(super) fn of(row: GrantRow) -> Option<Self> {
        let subject = match row.subject_kind.as_str() {
            "user" => GrantTo::User(row.subject_name),
            "team" => GrantTo::Team(row.subject_name),
            _ => return None,
        };
        Some(GrantInfo {
            subject,
            permission: row.permission.parse().ok()?,
        })
    }
}

/// One of the caller's API keys (never its secret or the secret's hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// Id (also embedded in the secret).
    pub id: String,
    /// Name, unique per user.
    pub name: String,
    /// Where it applies; `None` for a stored scope this node does not know (the key then
    /// authenticates nothing, but its owner still sees and may revoke it).
    pub scope: Option<KeyScope>,
    /// Its cap; `None` for a stored permission this node does not know (likewise dead).
    pub permission: Option<Permission>,
    /// Expiry, milliseconds since the epoch.
    pub expires_at: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

impl From<ApiKeyRow> for ApiKeyInfo {
    fn from(row: ApiKeyRow) -> Self {
        ApiKeyInfo {
            scope: KeyScope::from_stored(&row.scope_kind, &row.scope_name),
            permission: row.permission.parse().ok(),
            id: row.id,
            name: row.name,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            created_at: row.created_at,
        }
    }
}

/// One of the caller's refresh tokens, as listed (never its secret or hash).
#[derive(Clone, Debug)]
pub struct RefreshTokenInfo {
    /// Id (embedded in the secret).
    pub id: String,
    /// The service it was issued for.
    pub service: String,
    /// The `client_id` the client gave (may be empty).
    pub client_id: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it last minted an access token (to the minute).
    pub last_used_at: Option<i64>,
    /// Expiry, milliseconds since the epoch.
    pub expires_at: i64,
}

impl From<RefreshTokenRow> for RefreshTokenInfo {
    fn from(r: RefreshTokenRow) -> Self {
        Self {
            id: r.id,
            service: r.service,
            client_id: r.client_id,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
        }
    }
}
