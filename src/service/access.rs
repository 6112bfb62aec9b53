//! The single access-decision step every request goes through.
//!
//! Handlers never decide access themselves: the API layer resolves the caller into a
//! [`Principal`] and asks [`Registry::authorize`] for each (repository, action) before calling a use
//! case; the token endpoint asks [`Registry::grant_scopes`] what a token may carry. Both read the
//! same facts (visibility, namespace ownership, org role, grants, API key scope) and combine them
//! with the pure `auth::effective_permission`.
//! A registry token's `access` claim is only an upper bound: every use re-checks it against the
//! current facts of the identity it was minted for (through the facts and subject caches, so a hot
//! pull reads no database).
//! Invariant: a private repository looks exactly like a missing one to whoever may not read it.

use crate::auth::permission::{AccessFacts, KeyCap, OrgRole, Permission};
use crate::auth::policy::{AccountAction, AccountFacts, OrgAction, OrgFacts};
use crate::auth::scope::{AccessEntry, REGISTRY, REPOSITORY, Scope, WILDCARD};
use crate::oci::RepoName;

pub use crate::auth::permission::Action;

use super::caching::{CachedFacts, RegistryCaches};
use super::{Error, Registry, Result};

/// What an API key may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyScope {
    /// Every repository the owner may reach.
    All,
    /// Repositories in one namespace.
    Namespace(String),
    /// One repository.
    Repository(String),
}

impl KeyScope {
    /// The scope stored as `kind` and `name`, or `None` for a kind this node does not know
    /// (written by a newer version, or by hand): such a key must fail closed.
    pub fn from_stored(kind: &str, name: &str) -> Option<KeyScope> {
        match kind {
            "all" => Some(KeyScope::All),
            "namespace" => Some(KeyScope::Namespace(name.to_owned())),
            "repository" => Some(KeyScope::Repository(name.to_owned())),
            _ => None,
        }
    }

    /// The stored kind: `all`, `namespace` or `repository`.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyScope::All => "all",
            KeyScope::Namespace(_) => "namespace",
            KeyScope::Repository(_) => "repository",
        }
    }

    /// The namespace or repository it names (empty for `all`).
    pub fn name(&self) -> &str {
        match self {
            KeyScope::All => "",
            KeyScope::Namespace(n) | KeyScope::Repository(n) => n,
        }
    }
}

/// An API key's restriction of its owner's rights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRestriction {
    /// The key's id.
    pub id: String,
    /// Where it applies.
    pub scope: KeyScope,
    /// The most it allows there.
    pub cap: Permission,
}

/// The refresh token a caller authenticated with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshOrigin {
    /// The token's id.
    pub id: String,
    /// Its expiry, milliseconds since the epoch: nothing minted from it lives longer.
    pub expires_at: i64,
}

/// An authenticated user, possibly acting through an API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub user_id: String,
    /// User name.
    pub username: String,
    /// Site administrator.
    pub is_admin: bool,
    /// Set when the caller authenticated with an API key.
    pub key: Option<KeyRestriction>,
    /// The user's credential generation (moved on by password changes and resets); tokens carry
    /// it and die when it moves.
    pub generation: i64,
    /// Set when the caller authenticated with a refresh token.
    pub refresh: Option<RefreshOrigin>,
}

impl Identity {
    /// The API key limit on the organization (namespace) `org`: a key reaches an organization
    /// only when its scope covers the whole namespace.
    fn org_key_cap(&self, org: &str) -> KeyCap {
        match &self.key {
            None => KeyCap::Unrestricted,
            Some(k) => match &k.scope {
                KeyScope::All => KeyCap::AtMost(k.cap),
                KeyScope::Namespace(ns) if ns == org => KeyCap::AtMost(k.cap),
                KeyScope::Namespace(_) | KeyScope::Repository(_) => KeyCap::Nothing,
            },
        }
    }

    /// The API key limit on the repository `repo`.
    fn key_cap(&self, repo: &str) -> KeyCap {
        match &self.key {
            None => KeyCap::Unrestricted,
            Some(k) => {
                let applies = match &k.scope {
                    KeyScope::All => true,
                    KeyScope::Namespace(ns) => repo.split('/').next() == Some(ns.as_str()),
                    KeyScope::Repository(r) => r == repo,
                };
                if applies {
                    KeyCap::AtMost(k.cap)
                } else {
                    KeyCap::Nothing
                }
            }
        }
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
    /// A registry token: it may do what its `access` claim grants, as long as the identity it
    /// was minted for still may (re-checked against current facts on every use).
    Token {
        /// The token's subject as it stands now (re-checked when the token was presented), or
        /// `None` for an anonymous token.
        identity: Option<Identity>,
        /// The granted access.
        access: Vec<AccessEntry>,
    },
    /// An authenticated user (management API).
    User(Identity),
}

/// The access facts of `identity` (or anonymous) on `repo`, from what the store read: roles and
/// permissions are typed here, at the store's boundary, and anything unknown counts as nothing
/// (fail closed). Single-repository decisions and listings both build their facts here.
pub(super) fn access_facts_of(
    identity: Option<&Identity>,
    repo: &str,
    facts: &CachedFacts,
) -> AccessFacts {
    AccessFacts {
        is_site_admin: identity.is_some_and(|i| i.is_admin),
        is_namespace_owner: facts.owns_namespace,
        org_role: facts
            .org_role
            .as_deref()
            .and_then(|r| r.parse::<OrgRole>().ok()),
        user_grant: facts.user_grant.as_deref().and_then(|p| p.parse().ok()),
        team_grants: facts
            .team_grants
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        public: facts.public,
        key_cap: identity.map_or(KeyCap::Unrestricted, |i| i.key_cap(repo)),
    }
}

/// The organization facts of `identity` on the organization `org`, in which it has `role`.
pub(super) fn org_facts_of(identity: &Identity, org: &str, role: Option<OrgRole>) -> OrgFacts {
    OrgFacts {
        is_site_admin: identity.is_admin,
        role,
        key_cap: identity.org_key_cap(org),
    }
}

/// The account facts of `caller` (or anonymous) on the account with id `target` (if any).
pub(super) fn account_facts_of(
    caller: Option<&Identity>,
    target: Option<&str>,
    self_signup: bool,
) -> AccountFacts {
    AccountFacts {
        authenticated: caller.is_some(),
        is_site_admin: caller.is_some_and(|c| c.is_admin),
        through_key: caller.is_some_and(|c| c.key.is_some()),
        is_self: caller.is_some_and(|c| target == Some(c.user_id.as_str())),
        self_signup,
    }
}

/// Whether `caller` may perform `action` on the account `target`.
pub(super) fn account_allows(
    caller: Option<&Identity>,
    target: Option<&str>,
    self_signup: bool,
    action: AccountAction,
) -> bool {
    crate::auth::account_permits(&account_facts_of(caller, target, self_signup), action)
}

/// Whether `caller`, with `role` in the organization `org`, may perform `action` on it.
pub(super) fn org_allows(
    caller: &Identity,
    org: &str,
    role: Option<OrgRole>,
    action: OrgAction,
) -> bool {
    crate::auth::org_permits(&org_facts_of(caller, org, role), action)
}

impl Registry {
    /// Access facts of `identity` (or anonymous) on `repo`.
    async fn access_facts(
        &self,
        identity: Option<&Identity>,
        repo: &str,
    ) -> Result<(AccessFacts, bool)> {
        let user = identity.map(|i| i.user_id.as_str());
        let key = RegistryCaches::facts_key(repo, user);
        let facts = self
            .caches
            .facts
            .get_or_load(&key, || async {
                Ok::<_, Error>(Some(CachedFacts::from(
                    self.identity.repo_facts(repo, user).await?,
                )))
            })
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("repository facts not loaded")))?;
        Ok((access_facts_of(identity, repo, &facts), facts.exists))
    }

    /// The permission `identity` (or anonymous) has on `repo`, if any.
    pub async fn permission_on(
        &self,
        identity: Option<&Identity>,
        repo: &str,
    ) -> Result<Option<Permission>> {
        let (facts, _) = self.access_facts(identity, repo).await?;
        Ok(crate::auth::effective_permission(&facts))
    }

    /// Decides whether `principal` may perform `action` on `repo`.
    ///
    /// Errors: `Unauthorized` when credentials (or a token with more scope) would help;
    /// `NameUnknown` when an authenticated user may not even see the repository; `Denied` when
    /// they may see it but not do this.
    pub async fn authorize(
        &self,
        principal: &Principal,
        repo: &RepoName,
        action: Action,
    ) -> Result<()> {
        let name = repo.as_str();
        let allowed = match principal {
            Principal::Anonymous => {
                action == Action::Pull && self.permission_on(None, name).await?.is_some()
            }
            // The claim is an upper bound; the current facts decide, so a revoked grant, a
            // deleted user or a dead credential stops a token within the caches' bound.
            Principal::Token { identity, access } => {
                access
                    .iter()
                    .any(|e| e.grants(REPOSITORY, name, action.as_str()))
                    && self
                        .permission_on(identity.as_ref(), name)
                        .await?
                        .is_some_and(|p| p.allows(action))
            }
            Principal::User(identity) => {
                let permission = self.permission_on(Some(identity), name).await?;
                match permission {
                    Some(p) if p.allows(action) => true,
                    Some(_) => return Err(Error::Denied),
                    None => return Err(Error::NameUnknown),
                }
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::Unauthorized)
        }
    }

    /// Decides whether `principal` may list the catalog (it sees only what it may read).
    pub async fn authorize_catalog(&self, principal: &Principal) -> Result<()> {
        match principal {
            Principal::Anonymous => Err(Error::Unauthorized),
            Principal::Token { access, .. } => {
                if access
                    .iter()
                    .any(|e| e.grants(REGISTRY, "catalog", WILDCARD))
                {
                    Ok(())
                } else {
                    Err(Error::Unauthorized)
                }
            }
            Principal::User(_) => Ok(()),
        }
    }

    /// What a token for `identity` (or an anonymous one) may carry: for each requested scope, the
    /// intersection of what was asked and what the caller may do. Denied scopes come back with no
    /// actions; a partial grant is not an error.
    pub async fn grant_scopes(
        &self,
        identity: Option<&Identity>,
        scopes: &[Scope],
    ) -> Result<Vec<AccessEntry>> {
        let mut granted = Vec::new();
        for scope in scopes {
            if scope.is_catalog() {
                granted.push(AccessEntry {
                    resource_type: REGISTRY.into(),
                    name: "catalog".into(),
                    actions: vec![WILDCARD.into()],
                });
                continue;
            }
            if !scope.is_repository() || scope.name.parse::<RepoName>().is_err() {
                continue;
            }
            let permission = self.permission_on(identity, &scope.name).await?;
            let wants_all = scope.actions.contains(WILDCARD);
            let actions: Vec<String> = Action::ALL
                .into_iter()
                .filter(|a| wants_all || scope.actions.contains(a.as_str()))
                .filter(|a| permission.is_some_and(|p| p.allows(*a)))
                .map(|a| a.as_str().to_owned())
                .collect();
            granted.push(AccessEntry {
                resource_type: REPOSITORY.into(),
                name: scope.name.clone(),
                actions,
            });
        }
        Ok(granted)
    }

    /// Gives a repository a push just created the configured default visibility.
    pub(crate) async fn init_visibility(&self, repo: &RepoName) -> Result<()> {
        Ok(self
            .identity
            .init_visibility(repo.as_str(), self.settings.default_visibility)
            .await?)
    }
}
