//! The organization and account halves of the access policy, as pure functions of facts the
//! service gathers: [`org_permits`] decides who may see an organization (its members and teams)
//! and who may change it, [`account_permits`] who may see and change users and their
//! credentials. Repositories are decided by `permission::effective_permission`; together the
//! three are every access decision Aerugo makes.
//!
//! Rules:
//! - A site admin stands in an organization as its owner; owners do everything, admins manage
//!   members below owner and teams, members see the organization and may leave it.
//! - Granting or taking the owner role and deleting the organization take an owner.
//! - Through an API key an organization is at most visible, and only when the key's scope covers
//!   the organization's namespace (scope `all`, or `namespace` naming it): keys are robot
//!   credentials for the registry, never for managing people.
//! - Accounts and credentials are managed interactively only (never through an API key): a user
//!   manages themselves, a site admin manages everyone.
//!
//! Must not depend on any crate module other than `oci` and `config`.

use super::permission::{KeyCap, OrgRole};

/// Something done to or within an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrgAction {
    /// See the organization, list its members, its teams and their members.
    View,
    /// Leave it (remove oneself).
    Leave,
    /// Add, change and remove members below owner.
    ManageMembers,
    /// Create and delete teams, change their members and their repository permissions.
    ManageTeams,
    /// Grant or take the owner role.
    ManageOwners,
    /// Delete the organization.
    Delete,
}

impl OrgAction {
    /// Every organization action.
    pub const ALL: [OrgAction; 6] = [
        OrgAction::View,
        OrgAction::Leave,
        OrgAction::ManageMembers,
        OrgAction::ManageTeams,
        OrgAction::ManageOwners,
        OrgAction::Delete,
    ];

    /// The least role that allows this action.
    pub fn required(self) -> OrgRole {
        match self {
            OrgAction::View | OrgAction::Leave => OrgRole::Member,
            OrgAction::ManageMembers | OrgAction::ManageTeams => OrgRole::Admin,
            OrgAction::ManageOwners | OrgAction::Delete => OrgRole::Owner,
        }
    }
}

/// What the service knows about one subject and one organization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrgFacts {
    /// The subject is a site administrator.
    pub is_site_admin: bool,
    /// The subject's role in the organization, if a member.
    pub role: Option<OrgRole>,
    /// The API key limit for the organization's namespace, when the subject authenticated with
    /// an API key: `AtMost` when the key's scope covers the namespace, `Nothing` otherwise.
    pub key_cap: KeyCap,
}

/// Whether the subject may perform `action` on the organization.
///
/// Callers answer "not found" when even [`OrgAction::View`] is refused, so an organization the
/// subject may not see looks exactly like a missing one.
pub fn org_permits(facts: &OrgFacts, action: OrgAction) -> bool {
    let role = match action {
        // Leaving takes a membership; a site admin who is no member has nothing to leave.
        OrgAction::Leave => facts.role,
        _ if facts.is_site_admin => Some(OrgRole::Owner),
        _ => facts.role,
    };
    let through_key = match facts.key_cap {
        KeyCap::Unrestricted => true,
        KeyCap::AtMost(_) => action == OrgAction::View,
        KeyCap::Nothing => false,
    };
    through_key && role.is_some_and(|r| r >= action.required())
}

/// Something done to a user account or with its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountAction {
    /// List every user.
    List,
    /// See the account's email address.
    SeeEmail,
    /// Change the account's email or password (a user their own, a site admin anyone's).
    Update,
    /// Make the account a site admin or take that away.
    SetAdmin,
    /// Delete the account.
    Delete,
    /// Create, list and revoke the account's API keys and refresh tokens; change its password
    /// knowing the current one.
    ManageCredentials,
    /// Create a user (with self-signup, anyone may).
    Create,
    /// Create a site admin, or adopt a name under which repositories already live (for a user
    /// or an organization).
    CreatePrivileged,
    /// Create an organization (the creator becomes its owner).
    CreateOrg,
}

impl AccountAction {
    /// Every account action.
    pub const ALL: [AccountAction; 9] = [
        AccountAction::List,
        AccountAction::SeeEmail,
        AccountAction::Update,
        AccountAction::SetAdmin,
        AccountAction::Delete,
        AccountAction::ManageCredentials,
        AccountAction::Create,
        AccountAction::CreatePrivileged,
        AccountAction::CreateOrg,
    ];
}

/// What the service knows about one subject and one account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountFacts {
    /// The subject is authenticated at all.
    pub authenticated: bool,
    /// The subject is a site administrator.
    pub is_site_admin: bool,
    /// The subject authenticated with an API key.
    pub through_key: bool,
    /// The account is the subject's own.
    pub is_self: bool,
    /// Self-signup is enabled.
    pub self_signup: bool,
}

/// Whether the subject may perform `action` on the account.
pub fn account_permits(facts: &AccountFacts, action: AccountAction) -> bool {
    let interactive = facts.authenticated && !facts.through_key;
    let admin = interactive && facts.is_site_admin;
    match action {
        AccountAction::List | AccountAction::SetAdmin | AccountAction::CreatePrivileged => admin,
        AccountAction::SeeEmail => (facts.authenticated && facts.is_self) || admin,
        AccountAction::Update | AccountAction::Delete => admin || (interactive && facts.is_self),
        AccountAction::ManageCredentials => interactive && facts.is_self,
        AccountAction::Create => admin || facts.self_signup,
        AccountAction::CreateOrg => interactive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::permission::Permission;

    fn caps() -> [KeyCap; 5] {
        [
            KeyCap::Unrestricted,
            KeyCap::AtMost(Permission::Read),
            KeyCap::AtMost(Permission::Write),
            KeyCap::AtMost(Permission::Admin),
            KeyCap::Nothing,
        ]
    }

    /// Every combination of inputs, checked against the rules stated independently.
    #[test]
    fn org_policy_exhaustive_against_the_rules() {
        let roles = [
            None,
            Some(OrgRole::Member),
            Some(OrgRole::Admin),
            Some(OrgRole::Owner),
        ];
        let mut checked = 0;
        for is_site_admin in [false, true] {
            for role in roles {
                for key_cap in caps() {
                    let f = OrgFacts {
                        is_site_admin,
                        role,
                        key_cap,
                    };
                    for action in OrgAction::ALL {
                        let got = org_permits(&f, action);
                        let member = role.is_some();
                        let admin = is_site_admin || role >= Some(OrgRole::Admin);
                        let owner = is_site_admin || role == Some(OrgRole::Owner);
                        let by_position = match action {
                            OrgAction::View => member || is_site_admin,
                            OrgAction::Leave => member,
                            OrgAction::ManageMembers | OrgAction::ManageTeams => admin,
                            OrgAction::ManageOwners | OrgAction::Delete => owner,
                        };
                        let want = match key_cap {
                            KeyCap::Unrestricted => by_position,
                            KeyCap::AtMost(_) => action == OrgAction::View && by_position,
                            KeyCap::Nothing => false,
                        };
                        assert_eq!(got, want, "{f:?} {action:?}");
                        // Invariants: whatever one may do, one may see; keys never manage.
                        if got {
                            assert!(org_permits(&f, OrgAction::View), "{f:?} {action:?}");
                        }
                        if key_cap != KeyCap::Unrestricted && action != OrgAction::View {
                            assert!(!got, "{f:?} {action:?}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 4 * 5 * 6);
    }

    #[test]
    fn org_table() {
        let member = OrgFacts {
            role: Some(OrgRole::Member),
            ..OrgFacts::default()
        };
        assert!(org_permits(&member, OrgAction::View));
        assert!(org_permits(&member, OrgAction::Leave));
        assert!(!org_permits(&member, OrgAction::ManageTeams));
        let admin = OrgFacts {
            role: Some(OrgRole::Admin),
            ..OrgFacts::default()
        };
        assert!(org_permits(&admin, OrgAction::ManageMembers));
        assert!(!org_permits(&admin, OrgAction::ManageOwners));
        assert!(!org_permits(&admin, OrgAction::Delete));
        let site = OrgFacts {
            is_site_admin: true,
            ..OrgFacts::default()
        };
        assert!(org_permits(&site, OrgAction::Delete));
        assert!(!org_permits(&site, OrgAction::Leave), "nothing to leave");
        let site_key_elsewhere = OrgFacts {
            key_cap: KeyCap::Nothing,
            ..site
        };
        assert!(!org_permits(&site_key_elsewhere, OrgAction::View));
        let outsider = OrgFacts::default();
        for action in OrgAction::ALL {
            assert!(!org_permits(&outsider, action), "{action:?}");
        }
    }

    #[test]
    fn account_policy_exhaustive_against_the_rules() {
        let mut checked = 0;
        for bits in 0..32u8 {
            let f = AccountFacts {
                authenticated: bits & 1 != 0,
                is_site_admin: bits & 2 != 0,
                through_key: bits & 4 != 0,
                is_self: bits & 8 != 0,
                self_signup: bits & 16 != 0,
            };
            let interactive = f.authenticated && !f.through_key;
            for action in AccountAction::ALL {
                let want = match action {
                    AccountAction::List
                    | AccountAction::SetAdmin
                    | AccountAction::CreatePrivileged => interactive && f.is_site_admin,
                    AccountAction::SeeEmail => {
                        f.authenticated && (f.is_self || (f.is_site_admin && !f.through_key))
                    }
                    AccountAction::Update | AccountAction::Delete => {
                        interactive && (f.is_self || f.is_site_admin)
                    }
                    AccountAction::ManageCredentials => interactive && f.is_self,
                    AccountAction::Create => (interactive && f.is_site_admin) || f.self_signup,
                    AccountAction::CreateOrg => interactive,
                };
                assert_eq!(account_permits(&f, action), want, "{f:?} {action:?}");
                // Invariant: an API key never changes an account.
                if f.through_key && action != AccountAction::SeeEmail {
                    assert!(
                        !account_permits(&f, action) || action == AccountAction::Create,
                        "{f:?} {action:?}"
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 32 * 9);
    }
}
