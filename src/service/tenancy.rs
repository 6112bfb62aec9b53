//! Tenancy management use cases behind `/api/v1`: users, organizations, members, teams,
//! repositories (visibility, grants, deletion) and API keys.
//!
//! Every method takes the caller's [`Identity`] and asks the access policy (`auth::permission`
//! for repositories, `auth::policy` for organizations and accounts, through `service::access`)
//! who may do what; no method decides on its own. Anything the caller may not see answers
//! `NameUnknown`-style "not found", never a hint that it exists. Results are views
//! (`service::views`), never store rows.

use std::future::Future;
use std::sync::Arc;

use crate::auth::effective_permission;
use crate::auth::permission::{OrgRole, Permission};
use crate::auth::policy::{AccountAction, OrgAction};
use crate::meta;
use crate::meta::identity::{
    ApiKeyRow, GrantSubject, IdentityStore, NameConflict, NewUser, OrgRow, RepoListing,
    RepoSummary, TagSummary, TeamRow, UserUpdate, Visibility,
};
use crate::oci::RepoName;

use super::access::{Identity, KeyScope, access_facts_of, account_allows, org_allows};
use super::caching::CachedFacts;
use super::views::{
    ApiKeyInfo, GrantInfo, MemberInfo, OrgInfo, RefreshTokenInfo, TeamInfo, TeamMemberInfo,
    UserInfo,
};
use super::{Error, Registry, Result};

/// A repository with its tags, as the management API shows it.
#[derive(Clone, Debug)]
pub struct RepoDetail {
    /// The repository.
    pub summary: RepoSummary,
    /// Its tags.
    pub tags: Vec<TagSummary>,
}

/// A new API key's settings.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    /// Name, unique per user.
    pub name: String,
    /// Where it applies.
    pub scope: KeyScope,
    /// Permission cap.
    pub permission: Permission,
    /// Expiry in days, if any.
    pub expires_in_days: Option<u32>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

fn name_conflict(name: &str, conflict: NameConflict) -> Error {
    Error::Conflict(match conflict {
        NameConflict::Taken => format!("the name {name} is taken"),
        NameConflict::HoldsRepositories => format!(
            "repositories already live under {name}; only a site admin may take the name, with \"adopt\": true"
        ),
    })
}

/// Checks a user or organization name: the repository-name component grammar, at most 64 bytes.
fn valid_account_name(name: &str) -> Result<()> {
    if name.len() > 64 || name.contains('/') || name.parse::<RepoName>().is_err() {
        return Err(invalid(
            "names must be lowercase letters and digits, optionally separated by '.', '_', '__' or '-', at most 64 characters",
        ));
    }
    Ok(())
}

fn valid_password(pw: &str) -> Result<()> {
    if pw.chars().count() < 8 || pw.len() > 1024 {
        return Err(invalid("passwords must have 8 to 1024 characters"));
    }
    Ok(())
}

impl Registry {
    /// Whether `caller` may perform `action` on the account with id `target`.
    fn account_allows(
        &self,
        caller: Option<&Identity>,
        target: Option<&str>,
        action: AccountAction,
    ) -> bool {
        account_allows(caller, target, self.tokens.self_signup, action)
    }

    /// `Denied` unless `caller` may perform `action` on the account `target`.
    fn require_account(
        &self,
        caller: &Identity,
        target: Option<&str>,
        action: AccountAction,
    ) -> Result<()> {
        if self.account_allows(Some(caller), target, action) {
            Ok(())
        } else {
            Err(Error::Denied)
        }
    }

    /// Runs a change to users, organizations, memberships, teams, grants, visibility or API
    /// keys, then drops the cached Basic-credential checks and authorization facts on this node
    /// and, through the cache bus, on every other node; both in one detached task
    /// ([`Registry::detached`]). The caches are dropped after a failed write too, since a write
    /// can fail after its commit (a lost reply).
    async fn tenancy_write<T, F, Fut>(&self, write: F) -> Result<T>
    where
        F: FnOnce(Arc<dyn IdentityStore>) -> Fut + Send + 'static,
        Fut: Future<Output = meta::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.detached(move |r| async move {
            let result = write(r.identity.clone()).await;
            r.caches.tenancy_changed().await;
            Ok(result?)
        })
        .await
    }

    // ---- users ---------------------------------------------------------------------------

    /// Creates a user: site admins always, anyone when self-signup is on. A name under which
    /// repositories already live is refused (409) unless a site admin adopts it (`adopt`).
    pub async fn create_user(
        &self,
        caller: Option<&Identity>,
        username: &str,
        password: &str,
        email: &str,
        is_admin: bool,
        adopt: bool,
    ) -> Result<UserInfo> {
        if !self.account_allows(caller, None, AccountAction::Create) {
            return Err(if caller.is_some() {
                Error::Denied
            } else {
                Error::Unauthorized
            });
        }
        if (is_admin || adopt)
            && !self.account_allows(caller, None, AccountAction::CreatePrivileged)
        {
            return Err(Error::Denied);
        }
        valid_account_name(username)?;
        valid_password(password)?;
        let hash = self.hash_password(password).await?;
        let user = NewUser {
            username: username.to_owned(),
            email: email.to_owned(),
            password_hash: hash,
            is_admin,
            adopt,
        };
        let row = self
            .tenancy_write(move |id| async move { id.create_user(&user).await })
            .await?
            .map_err(|c| name_conflict(username, c))?;
        // The creator gave the email: the answer shows it back.
        Ok(UserInfo::new(row, true))
    }

    /// A user by name: any authenticated caller may look users up; the email only as the policy
    /// says.
    pub async fn get_user(&self, caller: &Identity, username: &str) -> Result<UserInfo> {
        let row = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        let sees = self.account_allows(Some(caller), Some(&row.id), AccountAction::SeeEmail);
        Ok(UserInfo::new(row, sees))
    }

    /// Lists users (site admins only).
    pub async fn list_users(
        &self,
        caller: &Identity,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserInfo>> {
        self.require_account(caller, None, AccountAction::List)?;
        let rows = self.identity.list_users(after, limit).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let sees =
                    self.account_allows(Some(caller), Some(&row.id), AccountAction::SeeEmail);
                UserInfo::new(row, sees)
            })
            .collect())
    }

    /// Updates a user: themselves (email, password) or a site admin (also the admin flag).
    pub async fn update_user(
        &self,
        caller: &Identity,
        username: &str,
        email: Option<String>,
        password: Option<String>,
        is_admin: Option<bool>,
    ) -> Result<UserInfo> {
        let target = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        self.require_account(caller, Some(&target.id), AccountAction::Update)?;
        if is_admin.is_some() {
            self.require_account(caller, Some(&target.id), AccountAction::SetAdmin)?;
        }
        let password_hash = match password {
            Some(p) => {
                valid_password(&p)?;
                Some(self.hash_password(&p).await?)
            }
            None => None,
        };
        let update = UserUpdate {
            email,
            password_hash,
            is_admin,
        };
        let target_id = target.id.clone();
        self.tenancy_write(move |id| async move { id.update_user(&target_id, &update).await })
            .await?;
        let row = self
            .identity
            .user_by_id(&target.id)
            .await?
            .ok_or(Error::NameUnknown)?;
        let sees = self.account_allows(Some(caller), Some(&row.id), AccountAction::SeeEmail);
        Ok(UserInfo::new(row, sees))
    }

    /// Changes the caller's own password, checking the current one.
    pub async fn change_password(&self, caller: &Identity, current: &str, new: &str) -> Result<()> {
        self.require_account(
            caller,
            Some(&caller.user_id),
            AccountAction::ManageCredentials,
        )?;
        let user = self
            .identity
            .user_by_id(&caller.user_id)
            .await?
            .ok_or(Error::Unauthorized)?;
        if !self
            .check_password(current, Some(&user.password_hash))
            .await?
        {
            return Err(Error::Denied);
        }
        valid_password(new)?;
        let hash = self.hash_password(new).await?;
        let update = UserUpdate {
            password_hash: Some(hash),
            ..UserUpdate::default()
        };
        self.tenancy_write(move |id| async move { id.update_user(&user.id, &update).await })
            .await?;
        Ok(())
    }

    /// Deletes a user (themselves or a site admin) with every credential they hold. Repositories
    /// in their namespace stay, and so does the name (a tombstone), until the repositories are
    /// deleted or a site admin adopts the name; meanwhile only site admins reach them.
    pub async fn delete_user(&self, caller: &Identity, username: &str) -> Result<()> {
        let target = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        self.require_account(caller, Some(&target.id), AccountAction::Delete)?;
        let target_id = target.id;
        match self
            .tenancy_write(move |id| async move { id.delete_user(&target_id).await })
            .await?
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NameUnknown),
            Err(reason) => Err(Error::Conflict(reason)),
        }
    }

    // ---- organizations -------------------------------------------------------------------

    /// The members of `org` this node knows the role of (see [`MemberInfo::of`]), with ids.
    async fn members_of(&self, org: &OrgRow) -> Result<Vec<(String, MemberInfo)>> {
        Ok(self
            .identity
            .org_members(&org.id)
            .await?
            .into_iter()
            .filter_map(|m| {
                let id = m.user_id.clone();
                MemberInfo::of(m).map(|info| (id, info))
            })
            .collect())
    }

    /// The organization `name` and `user`'s role in it.
    async fn org_and_role(&self, name: &str, user: &str) -> Result<(OrgRow, Option<OrgRole>)> {
        let org = self
            .identity
            .org_by_name(name)
            .await?
            .ok_or(Error::NameUnknown)?;
        let role = self
            .members_of(&org)
            .await?
            .into_iter()
            .find(|(id, _)| id == user)
            .map(|(_, m)| m.role);
        Ok((org, role))
    }

    /// The organization if the caller may see it, with the caller's role; `NameUnknown` when the
    /// policy hides it, so it looks exactly like a missing one.
    async fn visible_org(
        &self,
        caller: &Identity,
        name: &str,
    ) -> Result<(OrgRow, Option<OrgRole>)> {
        let (org, role) = self.org_and_role(name, &caller.user_id).await?;
        if !org_allows(caller, &org.name, role, OrgAction::View) {
            return Err(Error::NameUnknown);
        }
        Ok((org, role))
    }

    /// The organization if the caller may perform `action` on it (`Denied` when they may see it
    /// but not do this).
    async fn org_for(
        &self,
        caller: &Identity,
        name: &str,
        action: OrgAction,
    ) -> Result<(OrgRow, Option<OrgRole>)> {
        let (org, role) = self.visible_org(caller, name).await?;
        if !org_allows(caller, &org.name, role, action) {
            return Err(Error::Denied);
        }
        Ok((org, role))
    }

    /// Creates an organization; the caller becomes its owner. A name under which repositories
    /// already live is refused (409) unless a site admin adopts it (`adopt`).
    pub async fn create_org(&self, caller: &Identity, name: &str, adopt: bool) -> Result<OrgInfo> {
        self.require_account(caller, None, AccountAction::CreateOrg)?;
        if adopt {
            self.require_account(caller, None, AccountAction::CreatePrivileged)?;
        }
        valid_account_name(name)?;
        let (org, owner) = (name.to_owned(), caller.user_id.clone());
        Ok(self
            .tenancy_write(move |id| async move { id.create_org(&org, &owner, adopt).await })
            .await?
            .map_err(|c| name_conflict(name, c))?
            .into())
    }

    /// An organization the caller may see (members, site admins; through an API key only when
    /// its scope covers the organization).
    pub async fn get_org(&self, caller: &Identity, name: &str) -> Result<OrgInfo> {
        Ok(self.visible_org(caller, name).await?.0.into())
    }

    /// The organizations the caller may see, after `after`: each row is decided by the same
    /// policy as [`Registry::get_org`].
    pub async fn list_orgs(
        &self,
        caller: &Identity,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OrgInfo>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut cursor = after.map(str::to_owned);
        loop {
            let rows = self
                .identity
                .list_orgs(&caller.user_id, caller.is_admin, cursor.as_deref(), limit)
                .await?;
            let full = rows.len() >= limit as usize;
            for row in rows {
                cursor = Some(row.org.name.clone());
                let role = row.role.as_deref().and_then(|r| r.parse::<OrgRole>().ok());
                if org_allows(caller, &row.org.name, role, OrgAction::View) {
                    out.push(row.org.into());
                    if out.len() >= limit as usize {
                        return Ok(out);
                    }
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// Deletes an organization (owners and site admins). Its repositories stay under a tombstone
    /// like a deleted user's.
    pub async fn delete_org(&self, caller: &Identity, name: &str) -> Result<()> {
        let (org, _) = self.org_for(caller, name, OrgAction::Delete).await?;
        match self
            .tenancy_write(move |id| async move { id.delete_org(&org.id).await })
            .await?
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NameUnknown),
            Err(reason) => Err(Error::Conflict(reason)),
        }
    }

    /// Members of an organization (whoever may see it).
    pub async fn org_members(&self, caller: &Identity, name: &str) -> Result<Vec<MemberInfo>> {
        let (org, _) = self.visible_org(caller, name).await?;
        Ok(self
            .members_of(&org)
            .await?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    /// Adds a member or changes a role. Only owners (and site admins) grant or take `owner`, and
    /// the last owner stays.
    pub async fn set_org_member(
        &self,
        caller: &Identity,
        name: &str,
        username: &str,
        role: OrgRole,
    ) -> Result<()> {
        let (org, _) = self.org_for(caller, name, OrgAction::ManageMembers).await?;
        let user = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        let members = self.members_of(&org).await?;
        let current = members
            .iter()
            .find(|(id, _)| *id == user.id)
            .map(|(_, m)| m.role);
        if role == OrgRole::Owner || current == Some(OrgRole::Owner) {
            self.org_for(caller, name, OrgAction::ManageOwners).await?;
        }
        let owners = members
            .iter()
            .filter(|(_, m)| m.role == OrgRole::Owner)
            .count();
        if current == Some(OrgRole::Owner) && role != OrgRole::Owner && owners <= 1 {
            return Err(Error::Conflict(
                "an organization keeps at least one owner".into(),
            ));
        }
        self.tenancy_write(move |id| async move {
            id.set_org_member(&org.id, &user.id, role.as_str()).await
        })
        .await
    }

    /// Removes a member (administrators; owners only by owners), or a member leaves.
    pub async fn remove_org_member(
        &self,
        caller: &Identity,
        name: &str,
        username: &str,
    ) -> Result<()> {
        let (org, caller_role) = self.visible_org(caller, name).await?;
        let user = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        let members = self.members_of(&org).await?;
        let Some(target) = members
            .iter()
            .find(|(id, _)| *id == user.id)
            .map(|(_, m)| m.role)
        else {
            return Err(Error::NameUnknown);
        };
        let action = if user.id == caller.user_id {
            OrgAction::Leave
        } else if target == OrgRole::Owner {
            OrgAction::ManageOwners
        } else {
            OrgAction::ManageMembers
        };
        if !org_allows(caller, &org.name, caller_role, action) {
            return Err(Error::Denied);
        }
        let owners = members
            .iter()
            .filter(|(_, m)| m.role == OrgRole::Owner)
            .count();
        if target == OrgRole::Owner && owners <= 1 {
            return Err(Error::Conflict(
                "an organization keeps at least one owner".into(),
            ));
        }
        self.tenancy_write(move |id| async move { id.remove_org_member(&org.id, &user.id).await })
            .await?;
        Ok(())
    }

    // ---- teams ---------------------------------------------------------------------------

    /// Creates a team (org administrators).
    pub async fn create_team(&self, caller: &Identity, org: &str, team: &str) -> Result<TeamInfo> {
        let (org, _) = self.org_for(caller, org, OrgAction::ManageTeams).await?;
        valid_account_name(team)?;
        let row = self
            .identity
            .create_team(&org.id, team)
            .await?
            .ok_or_else(|| Error::Conflict(format!("team {team} exists")))?;
        Ok(TeamInfo::new(&org.name, row))
    }

    /// Teams of an organization (whoever may see it).
    pub async fn list_teams(&self, caller: &Identity, org: &str) -> Result<Vec<TeamInfo>> {
        let (org, _) = self.visible_org(caller, org).await?;
        Ok(self
            .identity
            .list_teams(&org.id)
            .await?
            .into_iter()
            .map(|t| TeamInfo::new(&org.name, t))
            .collect())
    }

    async fn team_of(&self, org: &OrgRow, team: &str) -> Result<TeamRow> {
        self.identity
            .team(&org.id, team)
            .await?
            .ok_or(Error::NameUnknown)
    }

    /// Deletes a team (org administrators).
    pub async fn delete_team(&self, caller: &Identity, org: &str, team: &str) -> Result<()> {
        let (org, _) = self.org_for(caller, org, OrgAction::ManageTeams).await?;
        let team = self.team_of(&org, team).await?;
        self.tenancy_write(move |id| async move { id.delete_team(&team.id).await })
            .await?;
        Ok(())
    }

    /// Members of a team (whoever may see the organization).
    pub async fn team_members(
        &self,
        caller: &Identity,
        org: &str,
        team: &str,
    ) -> Result<Vec<TeamMemberInfo>> {
        let (org, _) = self.visible_org(caller, org).await?;
        let team = self.team_of(&org, team).await?;
        Ok(self
            .identity
            .team_members(&team.id)
            .await?
            .into_iter()
            .map(TeamMemberInfo::from)
            .collect())
    }

    /// Adds an org member to a team (org administrators).
    pub async fn add_team_member(
        &self,
        caller: &Identity,
        org: &str,
        team: &str,
        username: &str,
    ) -> Result<()> {
        let (org, _) = self.org_for(caller, org, OrgAction::ManageTeams).await?;
        let team = self.team_of(&org, team).await?;
        let user = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        let members = self.members_of(&org).await?;
        if !members.iter().any(|(id, _)| *id == user.id) {
            return Err(invalid(format!(
                "{username} is not a member of the organization"
            )));
        }
        self.tenancy_write(move |id| async move { id.add_team_member(&team.id, &user.id).await })
            .await
    }

    /// Removes a user from a team (org administrators).
    pub async fn remove_team_member(
        &self,
        caller: &Identity,
        org: &str,
        team: &str,
        username: &str,
    ) -> Result<()> {
        let (org, _) = self.org_for(caller, org, OrgAction::ManageTeams).await?;
        let team = self.team_of(&org, team).await?;
        let user = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        if self
            .tenancy_write(move |id| async move { id.remove_team_member(&team.id, &user.id).await })
            .await?
        {
            Ok(())
        } else {
            Err(Error::NameUnknown)
        }
    }

    /// Grants a team a permission on one of the org's repositories (org administrators).
    pub async fn set_team_permission(
        &self,
        caller: &Identity,
        org: &str,
        team: &str,
        repo: &RepoName,
        permission: Permission,
    ) -> Result<()> {
        let (org_row, _) = self.org_for(caller, org, OrgAction::ManageTeams).await?;
        let team = self.team_of(&org_row, team).await?;
        if repo.as_str().split('/').next() != Some(org) {
            return Err(invalid(
                "teams get permissions on their organization's repositories only",
            ));
        }
        let repo = repo.to_string();
        if !self
            .tenancy_write(move |id| async move {
                id.grant(&repo, &GrantSubject::Team(team.id), permission.as_str())
                    .await
            })
            .await?
        {
            return Err(Error::NameUnknown);
        }
        Ok(())
    }

    /// Revokes a team's permission on a repository (org administrators).
    pub async fn revoke_team_permission(
        &self,
        caller: &Identity,
        org: &str,
        team: &str,
        repo: &RepoName,
    ) -> Result<()> {
        let (org_row, _) = self.org_for(caller, org, OrgAction::ManageTeams).await?;
        let team = self.team_of(&org_row, team).await?;
        let repo = repo.to_string();
        if self
            .tenancy_write(
                move |id| async move { id.revoke(&repo, &GrantSubject::Team(team.id)).await },
            )
            .await?
        {
            Ok(())
        } else {
            Err(Error::NameUnknown)
        }
    }

    // ---- repositories --------------------------------------------------------------------

    /// Requires `needed` on an existing repository; hides it entirely from those who may not read.
    async fn require_repo(
        &self,
        caller: Option<&Identity>,
        repo: &RepoName,
        needed: Permission,
    ) -> Result<RepoSummary> {
        let permission = self.permission_on(caller, repo.as_str()).await?;
        let summary = self.identity.repository(repo.as_str()).await?;
        match (summary, permission) {
            (Some(s), Some(p)) if p >= needed => Ok(s),
            (Some(_), Some(_)) => Err(Error::Denied),
            _ => Err(Error::NameUnknown),
        }
    }

    /// A repository with its tags (read permission).
    pub async fn repository_detail(
        &self,
        caller: Option<&Identity>,
        repo: &RepoName,
    ) -> Result<RepoDetail> {
        let summary = self.require_repo(caller, repo, Permission::Read).await?;
        let tags = self.identity.repository_tags(repo.as_str()).await?;
        Ok(RepoDetail { summary, tags })
    }

    /// Repositories the caller may see, optionally in one namespace, after `after`: the store
    /// reads the candidates with the caller's facts on each, and each is decided by the same
    /// function as a single repository (`auth::effective_permission`, API-key cap included).
    pub async fn list_repositories(
        &self,
        caller: Option<&Identity>,
        namespace: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RepoSummary>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // The key's scope narrows the candidates in the store (an optimisation: the decision
        // below would drop the others anyway).
        let (key_namespace, key_repository) =
            match caller.and_then(|c| c.key.as_ref()).map(|k| &k.scope) {
                Some(KeyScope::Namespace(ns)) => (Some(ns.as_str()), None),
                Some(KeyScope::Repository(r)) => (None, Some(r.as_str())),
                Some(KeyScope::All) | None => (None, None),
            };
        let mut cursor = after.map(str::to_owned);
        loop {
            let rows = self
                .identity
                .visible_repositories(&RepoListing {
                    user: caller.map(|c| c.user_id.as_str()),
                    all: caller.is_some_and(|c| c.is_admin),
                    namespace,
                    key_namespace,
                    key_repository,
                    after: cursor.as_deref(),
                    limit,
                })
                .await?;
            let full = rows.len() >= limit as usize;
            for row in rows {
                cursor = Some(row.summary.name.clone());
                let facts =
                    access_facts_of(caller, &row.summary.name, &CachedFacts::from(row.facts));
                if effective_permission(&facts).is_some() {
                    out.push(row.summary);
                    if out.len() >= limit as usize {
                        return Ok(out);
                    }
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// Changes a repository's visibility (admin permission).
    pub async fn set_visibility(
        &self,
        caller: &Identity,
        repo: &RepoName,
        visibility: Visibility,
    ) -> Result<RepoSummary> {
        self.require_repo(Some(caller), repo, Permission::Admin)
            .await?;
        let name = repo.to_string();
        self.tenancy_write(move |id| async move { id.set_visibility(&name, visibility).await })
            .await?;
        self.identity
            .repository(repo.as_str())
            .await?
            .ok_or(Error::NameUnknown)
    }

    /// Deletes a repository's tags, manifests, grants and open uploads (admin permission); the
    /// uploads' objects are queued for deletion, blobs stay for GC.
    pub async fn delete_repository(&self, caller: &Identity, repo: &RepoName) -> Result<()> {
        self.require_repo(Some(caller), repo, Permission::Admin)
            .await?;
        self.ensure_delete_enabled()?;
        let repo = repo.clone();
        self.detached(move |r| async move {
            let result = r.meta.delete_repository(&repo).await;
            r.work_queued();
            r.caches.tenancy_changed().await;
            r.caches.repository_deleted(&repo).await;
            result?;
            Ok(())
        })
        .await
    }

    /// Grants on a repository (admin permission).
    pub async fn repository_grants(
        &self,
        caller: &Identity,
        repo: &RepoName,
    ) -> Result<Vec<GrantInfo>> {
        self.require_repo(Some(caller), repo, Permission::Admin)
            .await?;
        Ok(self
            .identity
            .grants(repo.as_str())
            .await?
            .into_iter()
            .filter_map(GrantInfo::of)
            .collect())
    }

    async fn grant_subject(
        &self,
        repo: &RepoName,
        user: Option<&str>,
        team: Option<&str>,
    ) -> Result<GrantSubject> {
        match (user, team) {
            (Some(u), None) => {
                let user = self
                    .identity
                    .user_by_name(u)
                    .await?
                    .ok_or_else(|| invalid(format!("no user {u}")))?;
                Ok(GrantSubject::User(user.id))
            }
            (None, Some(t)) => {
                let (org_name, team_name) = t
                    .split_once('/')
                    .unwrap_or((repo.as_str().split('/').next().unwrap_or(""), t));
                let org = self
                    .identity
                    .org_by_name(org_name)
                    .await?
                    .ok_or_else(|| invalid(format!("no team {t}")))?;
                let team = self
                    .identity
                    .team(&org.id, team_name)
                    .await?
                    .ok_or_else(|| invalid(format!("no team {t}")))?;
                Ok(GrantSubject::Team(team.id))
            }
            _ => Err(invalid("give exactly one of user or team")),
        }
    }

    /// Grants a user or team a permission on a repository (admin permission).
    pub async fn grant_permission(
        &self,
        caller: &Identity,
        repo: &RepoName,
        user: Option<&str>,
        team: Option<&str>,
        permission: Permission,
    ) -> Result<()> {
        self.require_repo(Some(caller), repo, Permission::Admin)
            .await?;
        let subject = self.grant_subject(repo, user, team).await?;
        let repo = repo.to_string();
        self.tenancy_write(move |id| async move {
            id.grant(&repo, &subject, permission.as_str()).await
        })
        .await?;
        Ok(())
    }

    /// Revokes a user's or team's grant on a repository (admin permission).
    pub async fn revoke_permission(
        &self,
        caller: &Identity,
        repo: &RepoName,
        user: Option<&str>,
        team: Option<&str>,
    ) -> Result<()> {
        self.require_repo(Some(caller), repo, Permission::Admin)
            .await?;
        let subject = self.grant_subject(repo, user, team).await?;
        let repo = repo.to_string();
        if self
            .tenancy_write(move |id| async move { id.revoke(&repo, &subject).await })
            .await?
        {
            Ok(())
        } else {
            Err(Error::NameUnknown)
        }
    }

    // ---- API keys ------------------------------------------------------------------------

    /// Creates an API key for the caller; returns it with its secret (shown once).
    pub async fn create_api_key(
        &self,
        caller: &Identity,
        new: NewApiKey,
    ) -> Result<(ApiKeyInfo, String)> {
        self.require_account(
            caller,
            Some(&caller.user_id),
            AccountAction::ManageCredentials,
        )?;
        if new.name.is_empty() || new.name.len() > 100 {
            return Err(invalid("an API key needs a name of at most 100 characters"));
        }
        match &new.scope {
            KeyScope::All => {}
            KeyScope::Namespace(ns) => valid_account_name(ns)?,
            KeyScope::Repository(r) => {
                r.parse::<RepoName>().map_err(|e| invalid(e.to_string()))?;
            }
        }
        let expires_at = new.expires_in_days.map(|d| {
            let now = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0),
            )
            .unwrap_or(i64::MAX);
            now.saturating_add(i64::from(d) * 86_400_000)
        });
        let row = ApiKeyRow {
            id: String::new(),
            user_id: caller.user_id.clone(),
            name: new.name.clone(),
            secret_hash: Vec::new(),
            scope_kind: new.scope.kind().to_owned(),
            scope_name: new.scope.name().to_owned(),
            permission: new.permission.as_str().to_owned(),
            expires_at,
            revoked_at: None,
            created_at: 0,
        };
        let (row, secret) = self
            .store_api_key(row)
            .await?
            .ok_or_else(|| Error::Conflict(format!("an API key named {} exists", new.name)))?;
        Ok((row.into(), secret))
    }

    /// The caller's API keys (without secrets).
    pub async fn list_api_keys(&self, caller: &Identity) -> Result<Vec<ApiKeyInfo>> {
        self.require_account(
            caller,
            Some(&caller.user_id),
            AccountAction::ManageCredentials,
        )?;
        Ok(self
            .identity
            .list_api_keys(&caller.user_id)
            .await?
            .into_iter()
            .map(ApiKeyInfo::from)
            .collect())
    }

    /// The caller's unexpired refresh tokens (without secrets).
    pub async fn list_refresh_tokens(&self, caller: &Identity) -> Result<Vec<RefreshTokenInfo>> {
        self.require_account(
            caller,
            Some(&caller.user_id),
            AccountAction::ManageCredentials,
        )?;
        Ok(self
            .identity
            .list_refresh_tokens(&caller.user_id)
            .await?
            .into_iter()
            .map(RefreshTokenInfo::from)
            .collect())
    }

    /// Revokes one of the caller's refresh tokens, and with it every registry token minted from
    /// it (within the facts cache bound).
    pub async fn revoke_refresh_token(&self, caller: &Identity, id: &str) -> Result<()> {
        self.require_account(
            caller,
            Some(&caller.user_id),
            AccountAction::ManageCredentials,
        )?;
        let (user, token) = (caller.user_id.clone(), id.to_owned());
        if self
            .tenancy_write(move |ids| async move { ids.delete_refresh_token(&user, &token).await })
            .await?
        {
            Ok(())
        } else {
            Err(Error::NameUnknown)
        }
    }

    /// Revokes one of the caller's API keys.
    pub async fn revoke_api_key(&self, caller: &Identity, id: &str) -> Result<()> {
        self.require_account(
            caller,
            Some(&caller.user_id),
            AccountAction::ManageCredentials,
        )?;
        let (user, key) = (caller.user_id.clone(), id.to_owned());
        if self
            .tenancy_write(move |id| async move { id.revoke_api_key(&user, &key).await })
            .await?
        {
            Ok(())
        } else {
            Err(Error::NameUnknown)
        }
    }
}
