//! Tenancy management use cases behind `/api/v1`: users, organizations, members, teams,
//! repositories (visibility, grants, deletion) and API keys.
//!
//! Every method takes the caller's [`Identity`] and enforces who may do what; anything the caller
//! may not see answers `NameUnknown`/`ManifestUnknown`-style "not found", never a hint that it
//! exists.

use std::future::Future;
use std::sync::Arc;

use crate::auth::permission::{OrgRole, Permission};
use crate::meta;
use crate::meta::identity::{
    ApiKeyRow, GrantRow, GrantSubject, IdentityStore, MemberRow, NameConflict, NewUser, OrgRow,
    RefreshTokenRow, RepoSummary, TagSummary, TeamRow, UserRow, UserUpdate, Visibility,
};
use crate::oci::RepoName;

use super::access::Identity;
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
    /// `all`, `namespace` or `repository`.
    pub scope_kind: String,
    /// The namespace or repository.
    pub scope_name: String,
    /// Permission cap.
    pub permission: Permission,
    /// Expiry in days, if any.
    pub expires_in_days: Option<u32>,
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
    fn require_admin(&self, caller: &Identity) -> Result<()> {
        if caller.is_admin && caller.key.is_none() {
            Ok(())
        } else {
            Err(Error::Denied)
        }
    }

    /// Management calls through an API key are limited to its scope; account management is not
    /// for API keys at all.
    fn require_interactive(&self, caller: &Identity) -> Result<()> {
        if caller.key.is_none() {
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
    ) -> Result<UserRow> {
        let caller_is_admin = caller.is_some_and(|c| c.is_admin && c.key.is_none());
        if !caller_is_admin && !self.tokens.self_signup {
            return Err(if caller.is_some() {
                Error::Denied
            } else {
                Error::Unauthorized
            });
        }
        if (is_admin || adopt) && !caller_is_admin {
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
        self.tenancy_write(move |id| async move { id.create_user(&user).await })
            .await?
            .map_err(|c| name_conflict(username, c))
    }

    /// A user by name: any authenticated caller may look users up.
    pub async fn get_user(&self, _caller: &Identity, username: &str) -> Result<UserRow> {
        self.identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)
    }

    /// Lists users (site admins only).
    pub async fn list_users(
        &self,
        caller: &Identity,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRow>> {
        self.require_admin(caller)?;
        Ok(self.identity.list_users(after, limit).await?)
    }

    /// Updates a user: themselves (email, password) or a site admin (also the admin flag).
    pub async fn update_user(
        &self,
        caller: &Identity,
        username: &str,
        email: Option<String>,
        password: Option<String>,
        is_admin: Option<bool>,
    ) -> Result<UserRow> {
        self.require_interactive(caller)?;
        let target = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        let allowed = caller.is_admin || (caller.user_id == target.id && is_admin.is_none());
        if !allowed {
            return Err(Error::Denied);
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
        self.identity
            .user_by_id(&target.id)
            .await?
            .ok_or(Error::NameUnknown)
    }

    /// Changes the caller's own password, checking the current one.
    pub async fn change_password(&self, caller: &Identity, current: &str, new: &str) -> Result<()> {
        self.require_interactive(caller)?;
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
        self.require_interactive(caller)?;
        let target = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        if !(caller.is_admin || caller.user_id == target.id) {
            return Err(Error::Denied);
        }
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

    async fn org_role(&self, caller: &Identity, org: &OrgRow) -> Result<Option<OrgRole>> {
        let members = self.identity.org_members(&org.id).await?;
        Ok(members
            .iter()
            .find(|m| m.user_id == caller.user_id)
            .and_then(|m| m.role.parse().ok()))
    }

    /// The organization if the caller may see it (members and site admins), with the caller's role.
    async fn visible_org(
        &self,
        caller: &Identity,
        name: &str,
    ) -> Result<(OrgRow, Option<OrgRole>)> {
        let org = self
            .identity
            .org_by_name(name)
            .await?
            .ok_or(Error::NameUnknown)?;
        let role = self.org_role(caller, &org).await?;
        if role.is_none() && !caller.is_admin {
            return Err(Error::NameUnknown);
        }
        Ok((org, role))
    }

    /// The organization if the caller administers it (owner, admin, site admin).
    async fn managed_org(
        &self,
        caller: &Identity,
        name: &str,
    ) -> Result<(OrgRow, Option<OrgRole>)> {
        self.require_interactive(caller)?;
        let (org, role) = self.visible_org(caller, name).await?;
        if !(caller.is_admin || role.is_some_and(|r| r >= OrgRole::Admin)) {
            return Err(Error::Denied);
        }
        Ok((org, role))
    }

    /// Creates an organization; the caller becomes its owner. A name under which repositories
    /// already live is refused (409) unless a site admin adopts it (`adopt`).
    pub async fn create_org(&self, caller: &Identity, name: &str, adopt: bool) -> Result<OrgRow> {
        self.require_interactive(caller)?;
        if adopt {
            self.require_admin(caller)?;
        }
        valid_account_name(name)?;
        let (org, owner) = (name.to_owned(), caller.user_id.clone());
        self.tenancy_write(move |id| async move { id.create_org(&org, &owner, adopt).await })
            .await?
            .map_err(|c| name_conflict(name, c))
    }

    /// An organization the caller belongs to (or any, for site admins).
    pub async fn get_org(&self, caller: &Identity, name: &str) -> Result<OrgRow> {
        Ok(self.visible_org(caller, name).await?.0)
    }

    /// Organizations the caller belongs to (all of them for site admins).
    pub async fn list_orgs(
        &self,
        caller: &Identity,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OrgRow>> {
        let member = (!caller.is_admin).then_some(caller.user_id.as_str());
        Ok(self.identity.list_orgs(member, after, limit).await?)
    }

    /// Deletes an organization (owners and site admins). Its repositories stay under a tombstone
    /// like a deleted user's.
    pub async fn delete_org(&self, caller: &Identity, name: &str) -> Result<()> {
        let (org, role) = self.managed_org(caller, name).await?;
        if !(caller.is_admin || role == Some(OrgRole::Owner)) {
            return Err(Error::Denied);
        }
        match self
            .tenancy_write(move |id| async move { id.delete_org(&org.id).await })
            .await?
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NameUnknown),
            Err(reason) => Err(Error::Conflict(reason)),
        }
    }

    /// Members of an organization (visible to its members).
    pub async fn org_members(&self, caller: &Identity, name: &str) -> Result<Vec<MemberRow>> {
        let (org, _) = self.visible_org(caller, name).await?;
        Ok(self.identity.org_members(&org.id).await?)
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
        let (org, caller_role) = self.managed_org(caller, name).await?;
        let user = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        let members = self.identity.org_members(&org.id).await?;
        let current: Option<OrgRole> = members
            .iter()
            .find(|m| m.user_id == user.id)
            .and_then(|m| m.role.parse().ok());
        let touches_owner = role == OrgRole::Owner || current == Some(OrgRole::Owner);
        if touches_owner && !(caller.is_admin || caller_role == Some(OrgRole::Owner)) {
            return Err(Error::Denied);
        }
        let owners = members.iter().filter(|m| m.role == "owner").count();
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

    /// Removes a member (administrators, or members leaving themselves).
    pub async fn remove_org_member(
        &self,
        caller: &Identity,
        name: &str,
        username: &str,
    ) -> Result<()> {
        self.require_interactive(caller)?;
        let (org, caller_role) = self.visible_org(caller, name).await?;
        let user = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        let members = self.identity.org_members(&org.id).await?;
        let target: Option<OrgRole> = members
            .iter()
            .find(|m| m.user_id == user.id)
            .and_then(|m| m.role.parse().ok());
        let Some(target) = target else {
            return Err(Error::NameUnknown);
        };
        let leaving = user.id == caller.user_id;
        let manages = caller.is_admin || caller_role.is_some_and(|r| r >= OrgRole::Admin);
        if !(leaving || manages)
            || (target == OrgRole::Owner
                && !(leaving || caller.is_admin || caller_role == Some(OrgRole::Owner)))
        {
            return Err(Error::Denied);
        }
        if target == OrgRole::Owner && members.iter().filter(|m| m.role == "owner").count() <= 1 {
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
    pub async fn create_team(&self, caller: &Identity, org: &str, team: &str) -> Result<TeamRow> {
        let (org, _) = self.managed_org(caller, org).await?;
        valid_account_name(team)?;
        self.identity
            .create_team(&org.id, team)
            .await?
            .ok_or_else(|| Error::Conflict(format!("team {team} exists")))
    }

    /// Teams of an organization (members).
    pub async fn list_teams(&self, caller: &Identity, org: &str) -> Result<Vec<TeamRow>> {
        let (org, _) = self.visible_org(caller, org).await?;
        Ok(self.identity.list_teams(&org.id).await?)
    }

    async fn team_of(&self, org: &OrgRow, team: &str) -> Result<TeamRow> {
        self.identity
            .team(&org.id, team)
            .await?
            .ok_or(Error::NameUnknown)
    }

    /// Deletes a team (org administrators).
    pub async fn delete_team(&self, caller: &Identity, org: &str, team: &str) -> Result<()> {
        let (org, _) = self.managed_org(caller, org).await?;
        let team = self.team_of(&org, team).await?;
        self.tenancy_write(move |id| async move { id.delete_team(&team.id).await })
            .await?;
        Ok(())
    }

    /// Members of a team (org members).
    pub async fn team_members(
        &self,
        caller: &Identity,
        org: &str,
        team: &str,
    ) -> Result<Vec<MemberRow>> {
        let (org, _) = self.visible_org(caller, org).await?;
        let team = self.team_of(&org, team).await?;
        Ok(self.identity.team_members(&team.id).await?)
    }

    /// Adds an org member to a team (org administrators).
    pub async fn add_team_member(
        &self,
        caller: &Identity,
        org: &str,
        team: &str,
        username: &str,
    ) -> Result<()> {
        let (org, _) = self.managed_org(caller, org).await?;
        let team = self.team_of(&org, team).await?;
        let user = self
            .identity
            .user_by_name(username)
            .await?
            .ok_or(Error::NameUnknown)?;
        let members = self.identity.org_members(&org.id).await?;
        if !members.iter().any(|m| m.user_id == user.id) {
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
        let (org, _) = self.managed_org(caller, org).await?;
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
        let (org_row, _) = self.managed_org(caller, org).await?;
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
        let (org_row, _) = self.managed_org(caller, org).await?;
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

    /// Repositories the caller may see, optionally in one namespace.
    pub async fn list_repositories(
        &self,
        caller: Option<&Identity>,
        namespace: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RepoSummary>> {
        let all = caller.is_some_and(|c| c.is_admin && c.key.is_none());
        Ok(self
            .identity
            .visible_repositories(
                caller.map(|c| c.user_id.as_str()),
                all,
                namespace,
                after,
                limit,
            )
            .await?)
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
    ) -> Result<Vec<GrantRow>> {
        self.require_repo(Some(caller), repo, Permission::Admin)
            .await?;
        Ok(self.identity.grants(repo.as_str()).await?)
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
    ) -> Result<(ApiKeyRow, String)> {
        self.require_interactive(caller)?;
        if new.name.is_empty() || new.name.len() > 100 {
            return Err(invalid("an API key needs a name of at most 100 characters"));
        }
        match new.scope_kind.as_str() {
            "all" => {}
            "namespace" => valid_account_name(&new.scope_name)?,
            "repository" => {
                new.scope_name
                    .parse::<RepoName>()
                    .map_err(|e| invalid(e.to_string()))?;
            }
            _ => return Err(invalid("scope kind must be all, namespace or repository")),
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
            scope_kind: new.scope_kind,
            scope_name: new.scope_name,
            permission: new.permission.as_str().to_owned(),
            expires_at,
            revoked_at: None,
            created_at: 0,
        };
        self.store_api_key(row)
            .await?
            .ok_or_else(|| Error::Conflict(format!("an API key named {} exists", new.name)))
    }

    /// The caller's API keys (without secrets).
    pub async fn list_api_keys(&self, caller: &Identity) -> Result<Vec<ApiKeyRow>> {
        self.require_interactive(caller)?;
        Ok(self.identity.list_api_keys(&caller.user_id).await?)
    }

    /// The caller's unexpired refresh tokens (without secrets).
    pub async fn list_refresh_tokens(&self, caller: &Identity) -> Result<Vec<RefreshTokenInfo>> {
        self.require_interactive(caller)?;
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
        self.require_interactive(caller)?;
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
        self.require_interactive(caller)?;
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
