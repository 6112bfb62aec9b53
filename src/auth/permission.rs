//! The repository permission model: who may pull, push or delete, as a pure function of facts
//! the service layer gathers from the metadata store.
//!
//! Rules, in the words of issue 5:
//! - `read` allows pull; `write` allows pull and push; `admin` also allows delete (and managing
//!   permissions, which the service checks as "admin").
//! - A site admin has admin on everything; a user has admin on their own namespace.
//! - Org owners and org admins have admin on every repository of the org; a plain member gets
//!   nothing from membership alone.
//! - Direct user grants and team grants add up: the highest one wins.
//! - An API key's cap limits what its user could do (the lower of the two wins).
//! - A public repository is readable by anyone, anonymous included, whatever the cap: capping
//!   below what an anonymous client gets would protect nothing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A permission on a repository. Ordered: `Read < Write < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Pull.
    Read,
    /// Pull and push.
    Write,
    /// Pull, push, delete, and manage the repository's permissions and visibility.
    Admin,
}

impl Permission {
    /// Every permission, lowest first.
    pub const ALL: [Permission; 3] = [Permission::Read, Permission::Write, Permission::Admin];

    /// Whether this permission allows `action`.
    pub fn allows(self, action: Action) -> bool {
        self >= action.required()
    }

    /// The lowercase name used in the API and the database: `read`, `write`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = ();

    /// Parses `read`, `write` or `admin` (exactly, lowercase).
    fn from_str(s: &str) -> Result<Permission, ()> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(())
    }
}

/// An action on a repository, as named in Docker scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags, referrers.
    Pull,
    /// Upload blobs and manifests (also creates the repository on first push).
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The least permission that allows this action.
    pub fn required(self) -> Permission {
        match self {
            Action::Pull => Permission::Read,
            Action::Push => Permission::Write,
            Action::Delete => Permission::Admin,
        }
    }

    /// The scope name: `pull`, `push`, `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = ();

    /// Parses `pull`, `push` or `delete` (not `*`: callers expand the wildcard themselves).
    fn from_str(s: &str) -> Result<Action, ()> {
        Action::ALL.into_iter().find(|a| a.as_str() == s).ok_or(())
    }
}

/// A user's role in an organization. Ordered: `Member < Admin < Owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrgRole {
    /// Belongs to the org; gets repository access only through grants and teams.
    Member,
    /// Admin on every org repository; manages members and teams.
    Admin,
    /// Like admin, and may delete the org and manage owners.
    Owner,
}

impl OrgRole {
    /// Every role, lowest first.
    pub const ALL: [OrgRole; 3] = [OrgRole::Member, OrgRole::Admin, OrgRole::Owner];

    /// The lowercase name: `member`, `admin`, `owner`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgRole::Member => "member",
            OrgRole::Admin => "admin",
            OrgRole::Owner => "owner",
        }
    }
}

impl fmt::Display for OrgRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrgRole {
    type Err = ();

    /// Parses `member`, `admin` or `owner`.
    fn from_str(s: &str) -> Result<OrgRole, ()> {
        OrgRole::ALL.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

/// How an API key limits its user's rights on one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyCap {
    /// Not an API key (a password, a session or a token for the user): no limit.
    #[default]
    Unrestricted,
    /// An API key whose scope covers this repository with this permission.
    AtMost(Permission),
    /// An API key whose scope does not cover this repository.
    Nothing,
}

/// What the service knows about one subject and one repository.
///
/// Anonymous callers are `AccessFacts { public, ..Default::default() }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFacts {
    /// The subject is a site administrator.
    pub is_site_admin: bool,
    /// The repository lives in the subject's own personal namespace.
    pub is_namespace_owner: bool,
    /// The subject's role in the org owning the repository's namespace, if any.
    pub org_role: Option<OrgRole>,
    /// A permission granted to the subject directly on this repository.
    pub user_grant: Option<Permission>,
    /// Permissions granted on this repository to teams the subject belongs to.
    pub team_grants: Vec<Permission>,
    /// The repository is public.
    pub public: bool,
    /// The API key limit, when the subject authenticated with an API key.
    pub key_cap: KeyCap,
}

impl AccessFacts {
    /// Whether the subject may perform `action`.
    pub fn allows(&self, action: Action) -> bool {
        effective_permission(self).is_some_and(|p| p.allows(action))
    }
}

/// The subject's permission on the repository, or `None` when it has none at all (then the
/// service answers as if the repository did not exist).
pub fn effective_permission(facts: &AccessFacts) -> Option<Permission> {
    let admin_by_position = facts.is_site_admin
        || facts.is_namespace_owner
        || facts.org_role.is_some_and(|r| r >= OrgRole::Admin);
    let own = [
        admin_by_position.then_some(Permission::Admin),
        facts.user_grant,
        facts.team_grants.iter().copied().max(),
    ]
    .into_iter()
    .flatten()
    .max();
    let capped = match facts.key_cap {
        KeyCap::Unrestricted => own,
        KeyCap::AtMost(cap) => own.map(|p| p.min(cap)),
        KeyCap::Nothing => None,
    };
    let anyone = facts.public.then_some(Permission::Read);
    capped.max(anyone)
}

#[cfg(test)]
mod tests {
    use super::Permission::{Admin, Read, Write};
    use super::*;

    #[test]
    fn permissions_allow_actions() {
        // (permission, pull, push, delete)
        let table = [
            (Read, true, false, false),
            (Write, true, true, false),
            (Admin, true, true, true),
        ];
        for (p, pull, push, delete) in table {
            assert_eq!(p.allows(Action::Pull), pull, "{p} pull");
            assert_eq!(p.allows(Action::Push), push, "{p} push");
            assert_eq!(p.allows(Action::Delete), delete, "{p} delete");
        }
        assert!(Read < Write && Write < Admin);
        assert!(OrgRole::Member < OrgRole::Admin && OrgRole::Admin < OrgRole::Owner);
    }

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        for r in OrgRole::ALL {
            assert_eq!(r.as_str().parse::<OrgRole>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        for bad in ["", "Read", "READ", "*", "owner "] {
            assert!(bad.parse::<Permission>().is_err());
            assert!(bad.parse::<Action>().is_err());
        }
        assert!("*".parse::<Action>().is_err());
    }

    fn facts() -> AccessFacts {
        AccessFacts::default()
    }

    #[test]
    fn table_of_roles() {
        let public = AccessFacts {
            public: true,
            ..facts()
        };
        let cases: Vec<(&str, AccessFacts, Option<Permission>)> = vec![
            ("anonymous, private", facts(), None),
            ("anonymous, public", public.clone(), Some(Read)),
            (
                "site admin",
                AccessFacts {
                    is_site_admin: true,
                    ..facts()
                },
                Some(Admin),
            ),
            (
                "namespace owner",
                AccessFacts {
                    is_namespace_owner: true,
                    ..facts()
                },
                Some(Admin),
            ),
            (
                "org owner",
                AccessFacts {
                    org_role: Some(OrgRole::Owner),
                    ..facts()
                },
                Some(Admin),
            ),
            (
                "org admin",
                AccessFacts {
                    org_role: Some(OrgRole::Admin),
                    ..facts()
                },
                Some(Admin),
            ),
            (
                "org member alone, private",
                AccessFacts {
                    org_role: Some(OrgRole::Member),
                    ..facts()
                },
                None,
            ),
            (
                "org member alone, public",
                AccessFacts {
                    org_role: Some(OrgRole::Member),
                    ..public.clone()
                },
                Some(Read),
            ),
            (
                "org member with team write",
                AccessFacts {
                    org_role: Some(OrgRole::Member),
                    team_grants: vec![Write],
                    ..facts()
                },
                Some(Write),
            ),
            (
                "teams: highest wins",
                AccessFacts {
                    team_grants: vec![Read, Admin, Write],
                    ..facts()
                },
                Some(Admin),
            ),
            (
                "user grant read + team write",
                AccessFacts {
                    user_grant: Some(Read),
                    team_grants: vec![Write],
                    ..facts()
                },
                Some(Write),
            ),
            (
                "user grant admin + team read",
                AccessFacts {
                    user_grant: Some(Admin),
                    team_grants: vec![Read],
                    ..facts()
                },
                Some(Admin),
            ),
            (
                "direct read grant",
                AccessFacts {
                    user_grant: Some(Read),
                    ..facts()
                },
                Some(Read),
            ),
            ("outsider, private", AccessFacts { ..facts() }, None),
            (
                "read key on own namespace",
                AccessFacts {
                    is_namespace_owner: true,
                    key_cap: KeyCap::AtMost(Read),
                    ..facts()
                },
                Some(Read),
            ),
            (
                "admin key cannot exceed a write grant",
                AccessFacts {
                    user_grant: Some(Write),
                    key_cap: KeyCap::AtMost(Admin),
                    ..facts()
                },
                Some(Write),
            ),
            (
                "write key of a site admin",
                AccessFacts {
                    is_site_admin: true,
                    key_cap: KeyCap::AtMost(Write),
                    ..facts()
                },
                Some(Write),
            ),
            (
                "key out of scope, private",
                AccessFacts {
                    is_site_admin: true,
                    key_cap: KeyCap::Nothing,
                    ..facts()
                },
                None,
            ),
            (
                "key out of scope, public: still anonymous read",
                AccessFacts {
                    is_site_admin: true,
                    key_cap: KeyCap::Nothing,
                    ..public.clone()
                },
                Some(Read),
            ),
            (
                "key for a user with no rights, private",
                AccessFacts {
                    key_cap: KeyCap::AtMost(Admin),
                    ..facts()
                },
                None,
            ),
            (
                "write grant on a public repo",
                AccessFacts {
                    user_grant: Some(Write),
                    ..public.clone()
                },
                Some(Write),
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(effective_permission(&f), want, "{name}");
            for action in Action::ALL {
                assert_eq!(
                    f.allows(action),
                    want.is_some_and(|p| p.allows(action)),
                    "{name} {action}"
                );
            }
        }
    }

    /// Every combination of inputs, checked against the rules stated independently.
    #[test]
    fn exhaustive_against_the_rules() {
        let opt_perms: Vec<Option<Permission>> = std::iter::once(None)
            .chain(Permission::ALL.map(Some))
            .collect();
        let roles: Vec<Option<OrgRole>> = std::iter::once(None)
            .chain(OrgRole::ALL.map(Some))
            .collect();
        let team_sets: Vec<Vec<Permission>> = vec![
            vec![],
            vec![Read],
            vec![Write],
            vec![Admin],
            vec![Read, Write],
            vec![Write, Read, Read],
            vec![Read, Admin],
        ];
        let caps: Vec<KeyCap> = std::iter::once(KeyCap::Unrestricted)
            .chain(Permission::ALL.map(KeyCap::AtMost))
            .chain([KeyCap::Nothing])
            .collect();
        let mut checked = 0;
        for is_site_admin in [false, true] {
            for is_namespace_owner in [false, true] {
                for &org_role in &roles {
                    for &user_grant in &opt_perms {
                        for team_grants in &team_sets {
                            for public in [false, true] {
                                for &key_cap in &caps {
                                    let f = AccessFacts {
                                        is_site_admin,
                                        is_namespace_owner,
                                        org_role,
                                        user_grant,
                                        team_grants: team_grants.clone(),
                                        public,
                                        key_cap,
                                    };
                                    let got = effective_permission(&f);
                                    // The user's own rights, rule by rule.
                                    let mut own: Option<Permission> = None;
                                    if is_site_admin
                                        || is_namespace_owner
                                        || matches!(org_role, Some(OrgRole::Admin | OrgRole::Owner))
                                    {
                                        own = Some(Admin);
                                    }
                                    for p in user_grant.iter().chain(team_grants) {
                                        if own.is_none_or(|o| *p > o) {
                                            own = Some(*p);
                                        }
                                    }
                                    let through_key = match key_cap {
                                        KeyCap::Unrestricted => own,
                                        KeyCap::AtMost(cap) => {
                                            own.map(|o| if o > cap { cap } else { o })
                                        }
                                        KeyCap::Nothing => None,
                                    };
                                    let want = match (through_key, public) {
                                        (None, true) => Some(Read),
                                        (p, _) => p,
                                    };
                                    assert_eq!(got, want, "{f:?}");
                                    // Invariants.
                                    if public {
                                        assert!(f.allows(Action::Pull), "{f:?}");
                                    }
                                    if let KeyCap::AtMost(cap) = key_cap {
                                        assert!(got.is_none_or(|g| g <= cap || g == Read), "{f:?}");
                                    }
                                    if org_role == Some(OrgRole::Member)
                                        && !is_site_admin
                                        && !is_namespace_owner
                                        && user_grant.is_none()
                                        && team_grants.is_empty()
                                    {
                                        assert_eq!(got, public.then_some(Read), "{f:?}");
                                    }
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 2 * 4 * 4 * 7 * 2 * 5);
    }

    #[test]
    fn adding_a_grant_never_lowers_permission() {
        for base in Permission::ALL {
            for extra in Permission::ALL {
                let before = AccessFacts {
                    user_grant: Some(base),
                    ..facts()
                };
                let after = AccessFacts {
                    team_grants: vec![extra],
                    ..before.clone()
                };
                assert!(effective_permission(&after) >= effective_permission(&before));
            }
        }
    }
}
