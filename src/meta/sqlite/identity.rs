//! [`IdentityStore`] on SQLite.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{CachedSql as _, SqliteStore};
use crate::meta::changes::Change;
use crate::meta::identity::{
    ApiKeyRow, GrantRow, GrantSubject, IdentityStore, ListedOrg, ListedRepo, LoginAdmission,
    LoginLimit, MemberRow, NameConflict, NamespaceKind, NewUser, OrgRow, RefreshTokenRow,
    RepoFacts, RepoListing, RepoSummary, TagSummary, TeamRow, UserRow, UserUpdate, Visibility,
    permission_of_rank, permission_rank_sql,
};
use crate::meta::{Result, now_millis};

/// The repository's namespace: its first path component.
const NS_OF_R: &str = "CASE WHEN instr(r.name, '/') > 0 THEN substr(r.name, 1, instr(r.name, '/') - 1) ELSE r.name END";

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(0)?,
        username: r.get(1)?,
        email: r.get(2)?,
        password_hash: r.get(3)?,
        is_admin: r.get::<_, i64>(4)? != 0,
        created_at: r.get(5)?,
        credential_generation: r.get(6)?,
    })
}

const USER_COLS: &str =
    "id, username, email, password_hash, is_admin, created_at, credential_generation";

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        user_id: r.get(1)?,
        name: r.get(2)?,
        secret_hash: r.get(3)?,
        scope_kind: r.get(4)?,
        scope_name: r.get(5)?,
        permission: r.get(6)?,
        expires_at: r.get(7)?,
        revoked_at: r.get(8)?,
        created_at: r.get(9)?,
    })
}

const KEY_COLS: &str = "id, user_id, name, secret_hash, scope_kind, scope_name, permission, expires_at, revoked_at, created_at";

const REFRESH_COLS: &str =
    "id, user_id, service, secret_hash, expires_at, client_id, created_at, last_used_at";

fn refresh_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RefreshTokenRow> {
    Ok(RefreshTokenRow {
        id: r.get(0)?,
        user_id: r.get(1)?,
        service: r.get(2)?,
        secret_hash: r.get(3)?,
        expires_at: r.get(4)?,
        client_id: r.get(5)?,
        created_at: r.get(6)?,
        last_used_at: r.get(7)?,
    })
}

fn repo_summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<RepoSummary> {
    Ok(RepoSummary {
        name: r.get(0)?,
        visibility: Visibility::parse(r.get::<_, Option<String>>(1)?.as_deref()),
        created_at: r.get(2)?,
    })
}

/// Whether `name` may be claimed by a new user or organization; on success a tombstone under the
/// name is removed (its repositories are gone, or the caller adopts them).
fn claim_name(
    c: &Connection,
    name: &str,
    adopt: bool,
) -> rusqlite::Result<std::result::Result<(), NameConflict>> {
    let row: Option<(String, Option<i64>)> = c
        .qrow(
            "SELECT id, deleted_at FROM namespaces WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((_, None)) = row {
        return Ok(Err(NameConflict::Taken));
    }
    if !adopt && namespace_has_repos(c, name)? {
        return Ok(Err(NameConflict::HoldsRepositories));
    }
    if let Some((tombstone, Some(_))) = row {
        c.exec("DELETE FROM namespaces WHERE id = ?1", [tombstone])?;
    }
    Ok(Ok(()))
}

/// Deletes a namespace row, or keeps it as a tombstone while repositories live under it.
fn retire_namespace(c: &Connection, id: &str, name: &str) -> rusqlite::Result<()> {
    if namespace_has_repos(c, name)? {
        c.exec(
            "UPDATE namespaces SET deleted_at = ?2 WHERE id = ?1",
            params![id, now_millis()],
        )?;
    } else {
        c.exec("DELETE FROM namespaces WHERE id = ?1", [id])?;
    }
    Ok(())
}

fn namespace_has_repos(c: &Connection, ns: &str) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT 1 FROM repositories WHERE name = ?1 OR name LIKE ?2 ESCAPE '\\' LIMIT 1",
    )?
    .exists(params![
        ns,
        format!(
            "{}/%",
            ns.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    ])
}

fn subject_cols(subject: &GrantSubject) -> (&'static str, &str) {
    match subject {
        GrantSubject::User(id) => ("user", id.as_str()),
        GrantSubject::Team(id) => ("team", id.as_str()),
    }
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn count_users(&self) -> Result<u64> {
        self.read(|c| c.qrow("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| u64::try_from(n).unwrap_or(0))
    }

    async fn create_user(
        &self,
        user: &NewUser,
    ) -> Result<std::result::Result<UserRow, NameConflict>> {
        let user = user.clone();
        self.write_changed(
            Change::UserChanged {
                user: user.username.to_string(),
                what: "created".to_owned(),
            },
            std::result::Result::is_ok,
            move |tx| {
                if let Err(conflict) = claim_name(tx, &user.username, user.adopt)? {
                    return Ok(Err(conflict));
                }
                let (ns_id, user_id, now) = (new_id(), new_id(), now_millis());
                tx.exec(
                "INSERT INTO namespaces (id, name, kind, created_at) VALUES (?1, ?2, 'user', ?3)",
                params![ns_id, user.username, now],
            )?;
                tx.exec(
                    "INSERT INTO users (id, namespace_id, username, email, password_hash, is_admin,
                    created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                    params![
                        user_id,
                        ns_id,
                        user.username,
                        user.email,
                        user.password_hash,
                        i64::from(user.is_admin),
                        now
                    ],
                )?;
                Ok(Ok(UserRow {
                    id: user_id,
                    username: user.username,
                    email: user.email,
                    password_hash: user.password_hash,
                    is_admin: user.is_admin,
                    created_at: now,
                    credential_generation: 0,
                }))
            },
        )
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>> {
        let username = username.to_owned();
        self.read(move |c| {
            c.qrow(
                &format!("SELECT {USER_COLS} FROM users WHERE username = ?1"),
                [username],
                user_row,
            )
            .optional()
        })
        .await
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>> {
        let id = id.to_owned();
        self.read(move |c| {
            c.qrow(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                [id],
                user_row,
            )
            .optional()
        })
        .await
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserRow>> {
        let after = after.unwrap_or("").to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {USER_COLS} FROM users WHERE username > ?1 ORDER BY username LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after, limit], user_row)?;
            rows.collect()
        })
        .await
    }

    async fn update_user(&self, id: &str, update: &UserUpdate) -> Result<bool> {
        let (id, u) = (id.to_owned(), update.clone());
        self.write_changed(
            Change::UserChanged { user: id.to_string(), what: "updated".to_owned() },
            |n| *n,
            move |tx| {
            let n = tx.exec(
                "UPDATE users SET email = coalesce(?2, email), password_hash = coalesce(?3, password_hash),
                    is_admin = coalesce(?4, is_admin), updated_at = ?5,
                    credential_generation = credential_generation + CASE WHEN ?3 IS NULL THEN 0 ELSE 1 END
                 WHERE id = ?1",
                params![id, u.email, u.password_hash, u.is_admin.map(i64::from), now_millis()],
            )?;
            if n > 0 && u.password_hash.is_some() {
                tx.exec("DELETE FROM refresh_tokens WHERE user_id = ?1", [&id])?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn delete_user(&self, id: &str) -> Result<std::result::Result<bool, String>> {
        let id = id.to_owned();
        self.write_changed(
            Change::UserChanged { user: id.to_string(), what: "deleted".to_owned() },
            |r| matches!(r, Ok(true)),
            move |tx| {
            let Some((ns_id, name)): Option<(String, String)> = tx
                .qrow("SELECT namespace_id, username FROM users WHERE id = ?1", [&id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?
            else {
                return Ok(Ok(false));
            };
            let last_owner: Option<String> = tx
                .qrow(
                    "SELECT n.name FROM org_members m JOIN namespaces n ON n.id = m.org_id
                     WHERE m.user_id = ?1 AND m.role = 'owner'
                       AND (SELECT count(*) FROM org_members o WHERE o.org_id = m.org_id AND o.role = 'owner') = 1
                     LIMIT 1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(org) = last_owner {
                return Ok(Err(format!("user is the last owner of organization {org}")));
            }
            tx.exec("DELETE FROM org_members WHERE user_id = ?1", [&id])?;
            tx.exec("DELETE FROM team_members WHERE user_id = ?1", [&id])?;
            tx.exec("DELETE FROM repo_permissions WHERE subject_kind = 'user' AND subject_id = ?1", [&id])?;
            tx.exec("DELETE FROM api_keys WHERE user_id = ?1", [&id])?;
            tx.exec("DELETE FROM refresh_tokens WHERE user_id = ?1", [&id])?;
            tx.exec("DELETE FROM users WHERE id = ?1", [&id])?;
            retire_namespace(tx, &ns_id, &name)?;
            Ok(Ok(true))
        })
        .await
    }

    async fn create_org(
        &self,
        name: &str,
        owner: &str,
        adopt: bool,
    ) -> Result<std::result::Result<OrgRow, NameConflict>> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.write_changed(
            Change::OrgChanged { org: name.to_string(), what: "created".to_owned() },
            std::result::Result::is_ok,
            move |tx| {
            if let Err(conflict) = claim_name(tx, &name, adopt)? {
                return Ok(Err(conflict));
            }
            let (id, now) = (new_id(), now_millis());
            tx.exec(
                "INSERT INTO namespaces (id, name, kind, created_at) VALUES (?1, ?2, 'org', ?3)",
                params![id, name, now],
            )?;
            tx.exec(
                "INSERT INTO org_members (org_id, user_id, role, created_at) VALUES (?1, ?2, 'owner', ?3)",
                params![id, owner, now],
            )?;
            Ok(Ok(OrgRow { id, name, created_at: now }))
        })
        .await
    }

    async fn org_by_name(&self, name: &str) -> Result<Option<OrgRow>> {
        let name = name.to_owned();
        self.read(move |c| {
            c.qrow(
                "SELECT id, name, created_at FROM namespaces WHERE name = ?1 AND kind = 'org' AND deleted_at IS NULL",
                [name],
                |r| {
                    Ok(OrgRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn list_orgs(
        &self,
        user: &str,
        all: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ListedOrg>> {
        let (user, after) = (user.to_owned(), after.unwrap_or("").to_owned());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT n.id, n.name, n.created_at,
                        (SELECT m.role FROM org_members m WHERE m.org_id = n.id AND m.user_id = ?2)
                 FROM namespaces n
                 WHERE n.kind = 'org' AND n.deleted_at IS NULL AND n.name > ?1
                   AND (?3 = 1 OR EXISTS (SELECT 1 FROM org_members m WHERE m.org_id = n.id AND m.user_id = ?2))
                 ORDER BY n.name LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![after, user, i64::from(all), limit], |r| {
                Ok(ListedOrg {
                    org: OrgRow { id: r.get(0)?, name: r.get(1)?, created_at: r.get(2)? },
                    role: r.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn delete_org(&self, id: &str) -> Result<std::result::Result<bool, String>> {
        let id = id.to_owned();
        self.write_changed(
            Change::OrgChanged { org: id.to_string(), what: "deleted".to_owned() },
            |r| matches!(r, Ok(true)),
            move |tx| {
            let Some(name): Option<String> = tx
                .qrow("SELECT name FROM namespaces WHERE id = ?1 AND kind = 'org' AND deleted_at IS NULL", [&id], |r| r.get(0))
                .optional()?
            else {
                return Ok(Ok(false));
            };
            tx.exec(
                "DELETE FROM repo_permissions WHERE subject_kind = 'team'
                   AND subject_id IN (SELECT id FROM teams WHERE org_id = ?1)",
                [&id],
            )?;
            tx.exec("DELETE FROM team_members WHERE team_id IN (SELECT id FROM teams WHERE org_id = ?1)", [&id])?;
            tx.exec("DELETE FROM teams WHERE org_id = ?1", [&id])?;
            tx.exec("DELETE FROM org_members WHERE org_id = ?1", [&id])?;
            retire_namespace(tx, &id, &name)?;
            Ok(Ok(true))
        })
        .await
    }

    async fn set_org_member(&self, org: &str, user: &str, role: &str) -> Result<()> {
        let (org, user, role) = (org.to_owned(), user.to_owned(), role.to_owned());
        self.write_changed(
            Change::MembershipChanged {
                group: org.to_string(),
            },
            |()| true,
            move |tx| {
                tx.exec(
                "INSERT INTO org_members (org_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
                params![org, user, role, now_millis()],
            )?;
                Ok(())
            },
        )
        .await
    }

    async fn remove_org_member(&self, org: &str, user: &str) -> Result<bool> {
        let (org, user) = (org.to_owned(), user.to_owned());
        self.write_changed(
            Change::MembershipChanged { group: org.to_string() },
            |n| *n,
            move |tx| {
            tx.exec(
                "DELETE FROM team_members WHERE user_id = ?2 AND team_id IN (SELECT id FROM teams WHERE org_id = ?1)",
                [&org, &user],
            )?;
            Ok(tx.exec("DELETE FROM org_members WHERE org_id = ?1 AND user_id = ?2", [&org, &user])? > 0)
        })
        .await
    }

    async fn org_members(&self, org: &str) -> Result<Vec<MemberRow>> {
        let org = org.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT u.id, u.username, m.role FROM org_members m JOIN users u ON u.id = m.user_id
                 WHERE m.org_id = ?1 ORDER BY u.username",
            )?;
            let rows = stmt.query_map([org], |r| {
                Ok(MemberRow {
                    user_id: r.get(0)?,
                    username: r.get(1)?,
                    role: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn create_team(&self, org: &str, name: &str) -> Result<Option<TeamRow>> {
        let (org, name) = (org.to_owned(), name.to_owned());
        self.write_changed(
            Change::MembershipChanged {
                group: org.to_string(),
            },
            Option::is_some,
            move |tx| {
                let id = new_id();
                let n = tx.exec(
                    "INSERT INTO teams (id, org_id, name, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (org_id, name) DO NOTHING",
                    params![id, org, name, now_millis()],
                )?;
                Ok((n > 0).then_some(TeamRow {
                    id,
                    org_id: org,
                    name,
                }))
            },
        )
        .await
    }

    async fn team(&self, org: &str, name: &str) -> Result<Option<TeamRow>> {
        let (org, name) = (org.to_owned(), name.to_owned());
        self.read(move |c| {
            c.qrow(
                "SELECT id, org_id, name FROM teams WHERE org_id = ?1 AND name = ?2",
                [org, name],
                |r| {
                    Ok(TeamRow {
                        id: r.get(0)?,
                        org_id: r.get(1)?,
                        name: r.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn list_teams(&self, org: &str) -> Result<Vec<TeamRow>> {
        let org = org.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, org_id, name FROM teams WHERE org_id = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([org], |r| {
                Ok(TeamRow {
                    id: r.get(0)?,
                    org_id: r.get(1)?,
                    name: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn delete_team(&self, team: &str) -> Result<bool> {
        let team = team.to_owned();
        self.write_changed(
            Change::MembershipChanged {
                group: team.to_string(),
            },
            |n| *n,
            move |tx| {
                tx.exec(
                    "DELETE FROM repo_permissions WHERE subject_kind = 'team' AND subject_id = ?1",
                    [&team],
                )?;
                tx.exec("DELETE FROM team_members WHERE team_id = ?1", [&team])?;
                Ok(tx.exec("DELETE FROM teams WHERE id = ?1", [&team])? > 0)
            },
        )
        .await
    }

    async fn add_team_member(&self, team: &str, user: &str) -> Result<()> {
        let (team, user) = (team.to_owned(), user.to_owned());
        self.write_changed(
            Change::MembershipChanged {
                group: team.to_string(),
            },
            |()| true,
            move |tx| {
                tx.exec(
                    "INSERT INTO team_members (team_id, user_id, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (team_id, user_id) DO NOTHING",
                    params![team, user, now_millis()],
                )?;
                Ok(())
            },
        )
        .await
    }

    async fn remove_team_member(&self, team: &str, user: &str) -> Result<bool> {
        let (team, user) = (team.to_owned(), user.to_owned());
        self.write_changed(
            Change::MembershipChanged {
                group: team.to_string(),
            },
            |n| *n,
            move |tx| {
                Ok(tx.exec(
                    "DELETE FROM team_members WHERE team_id = ?1 AND user_id = ?2",
                    [team, user],
                )? > 0)
            },
        )
        .await
    }

    async fn team_members(&self, team: &str) -> Result<Vec<MemberRow>> {
        let team = team.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT u.id, u.username, 'member' FROM team_members t JOIN users u ON u.id = t.user_id
                 WHERE t.team_id = ?1 ORDER BY u.username",
            )?;
            let rows = stmt.query_map([team], |r| Ok(MemberRow { user_id: r.get(0)?, username: r.get(1)?, role: r.get(2)? }))?;
            rows.collect()
        })
        .await
    }

    async fn repo_facts(&self, repo: &str, user: Option<&str>) -> Result<RepoFacts> {
        let (repo, user) = (repo.to_owned(), user.map(str::to_owned));
        self.read(move |c| {
            let ns_name = repo.split('/').next().unwrap_or("").to_owned();
            let mut facts = RepoFacts::default();
            let row: Option<(String, Option<String>)> = c
                .qrow("SELECT id, visibility FROM repositories WHERE name = ?1", [&repo], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let repo_id = row.as_ref().map(|(id, _)| id.clone());
            if let Some((_, vis)) = &row {
                facts.exists = true;
                facts.public = Visibility::parse(vis.as_deref()) == Visibility::Public;
            }
            let ns: Option<(String, String)> = c
                .qrow(
                    "SELECT id, kind FROM namespaces WHERE name = ?1 AND deleted_at IS NULL",
                    [&ns_name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let ns_id = ns.as_ref().map(|(id, _)| id.clone());
            facts.namespace = ns.map(|(_, kind)| {
                (ns_name.clone(), if kind == "org" { NamespaceKind::Org } else { NamespaceKind::User })
            });
            let Some(user) = user else {
                return Ok(facts);
            };
            if let Some((_, NamespaceKind::User)) = &facts.namespace {
                facts.owns_namespace = c
                    .prepare_cached("SELECT 1 FROM users WHERE id = ?1 AND username = ?2")?
                    .exists([&user, &ns_name])?;
            }
            if let (Some((_, NamespaceKind::Org)), Some(ns_id)) = (&facts.namespace, &ns_id) {
                facts.org_role = c
                    .qrow("SELECT role FROM org_members WHERE org_id = ?1 AND user_id = ?2", [ns_id, &user], |r| r.get(0))
                    .optional()?;
            }
            if let Some(repo_id) = repo_id {
                facts.user_grant = c
                    .qrow(
                        "SELECT permission FROM repo_permissions WHERE repo_id = ?1 AND subject_kind = 'user' AND subject_id = ?2",
                        [&repo_id, &user],
                        |r| r.get(0),
                    )
                    .optional()?;
                let mut stmt = c.prepare_cached(
                    "SELECT p.permission FROM repo_permissions p JOIN team_members t ON t.team_id = p.subject_id
                     WHERE p.repo_id = ?1 AND p.subject_kind = 'team' AND t.user_id = ?2",
                )?;
                facts.team_grants = stmt.query_map([&repo_id, &user], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            }
            Ok(facts)
        })
        .await
    }

    async fn init_visibility(&self, repo: &str, visibility: Visibility) -> Result<()> {
        let repo = repo.to_owned();
        self.write_changed(
            Change::VisibilityChanged {
                repo: repo.to_string(),
                visibility: visibility.as_str().to_string(),
            },
            |()| true,
            move |tx| {
                tx.exec(
                "UPDATE repositories SET visibility = ?2 WHERE name = ?1 AND visibility IS NULL",
                params![repo, visibility.as_str()],
            )?;
                Ok(())
            },
        )
        .await
    }

    async fn set_visibility(&self, repo: &str, visibility: Visibility) -> Result<bool> {
        let repo = repo.to_owned();
        self.write_changed(
            Change::VisibilityChanged {
                repo: repo.to_string(),
                visibility: visibility.as_str().to_string(),
            },
            |n| *n,
            move |tx| {
                Ok(tx.exec(
                    "UPDATE repositories SET visibility = ?2 WHERE name = ?1",
                    params![repo, visibility.as_str()],
                )? > 0)
            },
        )
        .await
    }

    async fn repository(&self, repo: &str) -> Result<Option<RepoSummary>> {
        let repo = repo.to_owned();
        self.read(move |c| {
            c.qrow(
                "SELECT name, visibility, created_at FROM repositories WHERE name = ?1",
                [repo],
                repo_summary,
            )
            .optional()
        })
        .await
    }

    async fn repository_tags(&self, repo: &str) -> Result<Vec<TagSummary>> {
        let repo = repo.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT t.name, t.manifest_digest, m.media_type,
                        m.size + coalesce((SELECT sum(b.size) FROM manifest_blobs mb JOIN blobs b ON b.digest = mb.blob_digest
                                           WHERE mb.repo_id = m.repo_id AND mb.manifest_digest = m.digest), 0),
                        t.updated_at
                 FROM tags t JOIN repositories r ON r.id = t.repo_id
                 JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest
                 WHERE r.name = ?1 ORDER BY t.name",
            )?;
            let rows = stmt.query_map([repo], |r| {
                Ok(TagSummary {
                    name: r.get(0)?,
                    digest: r.get(1)?,
                    media_type: r.get(2)?,
                    size: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                    updated_at: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn visible_repositories(&self, q: &RepoListing<'_>) -> Result<Vec<ListedRepo>> {
        let (user, namespace, key_ns, key_repo, after, all, limit) = (
            q.user.map(str::to_owned),
            q.namespace.map(str::to_owned),
            q.key_namespace.map(str::to_owned),
            q.key_repository.map(str::to_owned),
            q.after.unwrap_or("").to_owned(),
            i64::from(q.all),
            q.limit,
        );
        self.read(move |c| {
            let team_rank = permission_rank_sql("p.permission");
            // The facts columns read exactly what `repo_facts` reads for one repository.
            let sql = format!(
                "SELECT r.name, r.visibility, r.created_at,
                    EXISTS (SELECT 1 FROM users u WHERE u.id = ?4 AND u.username = {NS_OF_R}),
                    (SELECT m.role FROM org_members m JOIN namespaces n ON n.id = m.org_id
                     WHERE m.user_id = ?4 AND n.name = {NS_OF_R} AND n.kind = 'org' AND n.deleted_at IS NULL),
                    (SELECT p.permission FROM repo_permissions p
                     WHERE p.repo_id = r.id AND p.subject_kind = 'user' AND p.subject_id = ?4),
                    (SELECT MAX({team_rank}) FROM repo_permissions p JOIN team_members t ON t.team_id = p.subject_id
                     WHERE p.repo_id = r.id AND p.subject_kind = 'team' AND t.user_id = ?4)
                 FROM repositories r
                 WHERE r.name > ?1 AND (?2 IS NULL OR {NS_OF_R} = ?2) AND (
                    r.visibility = 'public'
                    OR ((?6 IS NULL OR {NS_OF_R} = ?6) AND (?7 IS NULL OR r.name = ?7) AND (
                       ?3 = 1
                       OR EXISTS (SELECT 1 FROM users u WHERE u.id = ?4 AND u.username = {NS_OF_R})
                       OR EXISTS (SELECT 1 FROM org_members m JOIN namespaces n ON n.id = m.org_id
                                  WHERE m.user_id = ?4 AND n.name = {NS_OF_R} AND m.role IN ('owner', 'admin'))
                       OR EXISTS (SELECT 1 FROM repo_permissions p WHERE p.repo_id = r.id
                                  AND p.subject_kind = 'user' AND p.subject_id = ?4)
                       OR EXISTS (SELECT 1 FROM repo_permissions p JOIN team_members t ON t.team_id = p.subject_id
                                  WHERE p.repo_id = r.id AND p.subject_kind = 'team' AND t.user_id = ?4))))
                 ORDER BY r.name LIMIT ?5"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![after, namespace, all, user, limit, key_ns, key_repo], |r| {
                let summary = repo_summary(r)?;
                let facts = RepoFacts {
                    exists: true,
                    public: summary.visibility == Visibility::Public,
                    namespace: None,
                    owns_namespace: r.get(3)?,
                    org_role: r.get(4)?,
                    user_grant: r.get(5)?,
                    team_grants: permission_of_rank(r.get(6)?).into_iter().collect(),
                };
                Ok(ListedRepo { summary, facts })
            })?;
            rows.collect()
        })
        .await
    }

    async fn grant(&self, repo: &str, subject: &GrantSubject, permission: &str) -> Result<bool> {
        let (repo, permission) = (repo.to_owned(), permission.to_owned());
        let (kind, sid) = subject_cols(subject);
        let sid = sid.to_owned();
        self.write_changed(
            Change::GrantChanged { repo: repo.to_string(), subject_kind: kind.to_string(), subject: sid.to_string() },
            |n| *n,
            move |tx| {
            let Some(id): Option<String> =
                tx.qrow("SELECT id FROM repositories WHERE name = ?1", [&repo], |r| r.get(0)).optional()?
            else {
                return Ok(false);
            };
            tx.exec(
                "INSERT INTO repo_permissions (repo_id, subject_kind, subject_id, permission, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (repo_id, subject_kind, subject_id) DO UPDATE SET permission = excluded.permission",
                params![id, kind, sid, permission, now_millis()],
            )?;
            Ok(true)
        })
        .await
    }

    async fn revoke(&self, repo: &str, subject: &GrantSubject) -> Result<bool> {
        let repo = repo.to_owned();
        let (kind, sid) = subject_cols(subject);
        let sid = sid.to_owned();
        self.write_changed(
            Change::GrantChanged {
                repo: repo.to_string(),
                subject_kind: kind.to_string(),
                subject: sid.to_string(),
            },
            |n| *n,
            move |tx| {
                Ok(tx.exec(
                    "DELETE FROM repo_permissions WHERE subject_kind = ?2 AND subject_id = ?3
                   AND repo_id = (SELECT id FROM repositories WHERE name = ?1)",
                    params![repo, kind, sid],
                )? > 0)
            },
        )
        .await
    }

    async fn grants(&self, repo: &str) -> Result<Vec<GrantRow>> {
        let repo = repo.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT p.subject_kind,
                        CASE p.subject_kind WHEN 'user' THEN (SELECT username FROM users WHERE id = p.subject_id)
                             ELSE (SELECT n.name || '/' || t.name FROM teams t JOIN namespaces n ON n.id = t.org_id
                                   WHERE t.id = p.subject_id) END,
                        p.permission
                 FROM repo_permissions p JOIN repositories r ON r.id = p.repo_id
                 WHERE r.name = ?1 ORDER BY 1, 2",
            )?;
            let rows = stmt.query_map([repo], |r| {
                Ok(GrantRow {
                    subject_kind: r.get(0)?,
                    subject_name: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    permission: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn create_api_key(&self, key: &ApiKeyRow) -> Result<bool> {
        let k = key.clone();
        self.write_changed(
            Change::CredentialChanged { user: key.user_id.to_string(), credential: "api_key".to_owned() },
            |n| *n,
            move |tx| {
            let n = tx.exec(
                &format!(
                    "INSERT INTO api_keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (user_id, name) DO NOTHING"
                ),
                params![k.id, k.user_id, k.name, k.secret_hash, k.scope_kind, k.scope_name, k.permission, k.expires_at, k.revoked_at, k.created_at],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>> {
        let id = id.to_owned();
        self.read(move |c| {
            c.qrow(
                &format!("SELECT {KEY_COLS} FROM api_keys WHERE id = ?1"),
                [id],
                key_row,
            )
            .optional()
        })
        .await
    }

    async fn list_api_keys(&self, user: &str) -> Result<Vec<ApiKeyRow>> {
        let user = user.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {KEY_COLS} FROM api_keys WHERE user_id = ?1 ORDER BY name"
            ))?;
            let rows = stmt.query_map([user], key_row)?;
            rows.collect()
        })
        .await
    }

    async fn revoke_api_key(&self, user: &str, id: &str) -> Result<bool> {
        let (user, id) = (user.to_owned(), id.to_owned());
        self.write_changed(
            Change::CredentialChanged { user: user.to_string(), credential: "api_key".to_owned() },
            |n| *n,
            move |tx| {
            Ok(tx.exec(
                "UPDATE api_keys SET revoked_at = ?3 WHERE user_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![user, id, now_millis()],
            )? > 0)
        })
        .await
    }

    async fn create_refresh_token(&self, token: &RefreshTokenRow) -> Result<()> {
        let t = token.clone();
        self.write_changed(
            Change::CredentialChanged { user: token.user_id.to_string(), credential: "refresh_token".to_owned() },
            |()| true,
            move |tx| {
            tx.exec(
                "INSERT INTO refresh_tokens (id, user_id, service, secret_hash, expires_at, created_at, client_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.id, t.user_id, t.service, t.secret_hash, t.expires_at, now_millis(), t.client_id],
            )?;
            Ok(())
        })
        .await
    }

    async fn refresh_token(&self, id: &str) -> Result<Option<RefreshTokenRow>> {
        let id = id.to_owned();
        self.read(move |c| {
            c.qrow(
                &format!("SELECT {REFRESH_COLS} FROM refresh_tokens WHERE id = ?1"),
                [id],
                refresh_row,
            )
            .optional()
        })
        .await
    }

    async fn list_refresh_tokens(&self, user: &str) -> Result<Vec<RefreshTokenRow>> {
        let user = user.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {REFRESH_COLS} FROM refresh_tokens WHERE user_id = ?1 AND expires_at > ?2 ORDER BY id"
            ))?;
            let rows = stmt.query_map(params![user, now_millis()], refresh_row)?;
            rows.collect()
        })
        .await
    }

    async fn delete_refresh_token(&self, user: &str, id: &str) -> Result<bool> {
        let (user, id) = (user.to_owned(), id.to_owned());
        self.write_changed(
            Change::CredentialChanged {
                user: user.to_string(),
                credential: "refresh_token".to_owned(),
            },
            |n| *n,
            move |tx| {
                Ok(tx.exec(
                    "DELETE FROM refresh_tokens WHERE user_id = ?1 AND id = ?2",
                    [&user, &id],
                )? > 0)
            },
        )
        .await
    }

    async fn touch_refresh_token(&self, id: &str, now: i64) -> Result<()> {
        let id = id.to_owned();
        self.write(move |tx| {
            tx.exec(
                "UPDATE refresh_tokens SET last_used_at = ?2
                 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2 - 60000)",
                params![id, now],
            )?;
            Ok(())
        })
        .await
    }

    async fn login_failures(&self, key: &str, window_ms: i64) -> Result<u32> {
        let key = key.to_owned();
        self.read(move |c| {
            let row: Option<(i64, i64)> = c
                .qrow(
                    "SELECT failures, window_start FROM login_failures WHERE key = ?1",
                    [key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(match row {
                Some((n, start)) if now_millis() - start < window_ms => {
                    u32::try_from(n).unwrap_or(u32::MAX)
                }
                _ => 0,
            })
        })
        .await
    }

    async fn begin_login_attempt(
        &self,
        hard: &[LoginLimit<'_>],
        soft: &str,
        window_ms: i64,
    ) -> Result<LoginAdmission> {
        let hard: Vec<(String, u32)> = hard.iter().map(|l| (l.key.to_owned(), l.max)).collect();
        let soft = soft.to_owned();
        // The writer transaction is `BEGIN IMMEDIATE`: reading the counters and adding to them
        // is one step for every node sharing the file.
        self.write(move |tx| {
            let now = now_millis();
            let current = |key: &str| -> rusqlite::Result<(u32, i64)> {
                let row: Option<(i64, i64)> = tx
                    .qrow(
                        "SELECT failures, window_start FROM login_failures WHERE key = ?1",
                        [key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                Ok(match row {
                    Some((n, start)) if now - start < window_ms => {
                        (u32::try_from(n).unwrap_or(u32::MAX), start)
                    }
                    _ => (0, now),
                })
            };
            for (key, max) in &hard {
                let (n, start) = current(key)?;
                if n >= *max {
                    return Ok(LoginAdmission::Refused {
                        until_ms: start.saturating_add(window_ms),
                    });
                }
            }
            let (soft_failures, _) = current(&soft)?;
            for key in hard.iter().map(|(k, _)| k.as_str()).chain([soft.as_str()]) {
                tx.exec(
                    "INSERT INTO login_failures (key, failures, window_start) VALUES (?1, 1, ?2)
                     ON CONFLICT (key) DO UPDATE SET
                        failures = CASE WHEN ?2 - login_failures.window_start < ?3
                                        THEN login_failures.failures + 1 ELSE 1 END,
                        window_start = CASE WHEN ?2 - login_failures.window_start < ?3
                                            THEN login_failures.window_start ELSE ?2 END",
                    params![key, now, window_ms],
                )?;
            }
            Ok(LoginAdmission::Admitted { soft_failures })
        })
        .await
    }

    async fn forgive_login_attempt(&self, clear: &str, refund: &[&str]) -> Result<()> {
        let clear = clear.to_owned();
        let refund: Vec<String> = refund.iter().map(|k| (*k).to_owned()).collect();
        self.write(move |tx| {
            tx.exec("DELETE FROM login_failures WHERE key = ?1", [&clear])?;
            for key in &refund {
                tx.exec(
                    "UPDATE login_failures SET failures = failures - 1
                     WHERE key = ?1 AND failures > 0",
                    [key],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn prune_login_failures(&self, window_ms: i64, limit: u32) -> Result<u64> {
        self.write(move |tx| {
            let n = tx.exec(
                "DELETE FROM login_failures WHERE key IN (
                    SELECT key FROM login_failures WHERE window_start <= ?1
                    ORDER BY window_start LIMIT ?2)",
                params![now_millis().saturating_sub(window_ms), limit],
            )?;
            Ok(u64::try_from(n).unwrap_or(u64::MAX))
        })
        .await
    }
}
