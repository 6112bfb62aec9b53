//! [`IdentityStore`] on PostgreSQL and CockroachDB.
//!
//! The same queries, in the same transactions, with the same answers as the SQLite store
//! (`meta::sqlite::identity`). Namespace, user, team and API key names are BYTEA (see
//! `schema/postgres/0002_create_identity.sql`), so listings page in byte order; a repository's
//! namespace (its first path component) is matched by a byte range (`ns`, or from `ns/` up to
//! `ns0`, `'0'` being the byte after `'/'`) rather than by string functions, which the two
//! databases spell differently for BYTEA and which would defeat the name index.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PostgresStore, Tx, all, exec, name_of, opt, repo_id};
use crate::meta::changes::Change;
use crate::meta::identity::{
    ApiKeyRow, GrantRow, GrantSubject, IdentityStore, ListedOrg, ListedRepo, LoginAdmission,
    LoginLimit, MemberRow, NameConflict, NamespaceKind, NewUser, OrgRow, RefreshTokenRow,
    RepoFacts, RepoListing, RepoSummary, TagSummary, TeamRow, UserRow, UserUpdate, Visibility,
    permission_of_rank, permission_rank_sql,
};
use crate::meta::{Result, now_millis};

type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

/// Whether `r.name` lies in the namespace `ns` (a BYTEA expression without `/`): the
/// repository is `ns` itself or starts with `ns/`.
fn in_namespace(ns: &str) -> String {
    format!("(r.name = {ns} OR (r.name >= {ns} || '/'::BYTEA AND r.name < {ns} || '0'::BYTEA))")
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The bounds of the repository names under `ns/`: from `ns/` (inclusive) to `ns0` (exclusive).
fn namespace_range(ns: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut low, mut high) = (ns.to_vec(), ns.to_vec());
    low.push(b'/');
    high.push(b'0');
    (low, high)
}

/// A stored BYTEA name as text.
fn name_at(r: &Row, i: usize) -> Result<String> {
    name_of(r.get(i))
}

const USER_COLS: &str =
    "id, username, email, password_hash, is_admin, created_at, credential_generation";

fn user_row(r: &Row) -> Result<UserRow> {
    Ok(UserRow {
        id: r.get(0),
        username: name_at(r, 1)?,
        email: r.get(2),
        password_hash: r.get(3),
        is_admin: r.get(4),
        created_at: r.get(5),
        credential_generation: r.get(6),
    })
}

const KEY_COLS: &str = "id, user_id, name, secret_hash, scope_kind, scope_name, permission, expires_at, revoked_at, created_at";

fn key_row(r: &Row) -> Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0),
        user_id: r.get(1),
        name: name_at(r, 2)?,
        secret_hash: r.get(3),
        scope_kind: r.get(4),
        scope_name: r.get(5),
        permission: r.get(6),
        expires_at: r.get(7),
        revoked_at: r.get(8),
        created_at: r.get(9),
    })
}

const REFRESH_COLS: &str =
    "id, user_id, service, secret_hash, expires_at, client_id, created_at, last_used_at";

fn refresh_row(r: &Row) -> RefreshTokenRow {
    RefreshTokenRow {
        id: r.get(0),
        user_id: r.get(1),
        service: r.get(2),
        secret_hash: r.get(3),
        expires_at: r.get(4),
        client_id: r.get(5),
        created_at: r.get(6),
        last_used_at: r.get(7),
    }
}

fn org_row(r: &Row) -> Result<OrgRow> {
    Ok(OrgRow {
        id: r.get(0),
        name: name_at(r, 1)?,
        created_at: r.get(2),
    })
}

fn team_row(r: &Row) -> Result<TeamRow> {
    Ok(TeamRow {
        id: r.get(0),
        org_id: r.get(1),
        name: name_at(r, 2)?,
    })
}

fn member_row(r: &Row) -> Result<MemberRow> {
    Ok(MemberRow {
        user_id: r.get(0),
        username: name_at(r, 1)?,
        role: r.get(2),
    })
}

fn repo_summary(r: &Row) -> Result<RepoSummary> {
    Ok(RepoSummary {
        name: name_at(r, 0)?,
        visibility: Visibility::parse(r.get::<_, Option<String>>(1).as_deref()),
        created_at: r.get(2),
    })
}

/// Whether `name` may be claimed by a new user or organization; on success a tombstone under the
/// name is removed (its repositories are gone, or the caller adopts them).
async fn claim_name(
    tx: &Tx<'_>,
    name: &str,
    adopt: bool,
) -> PgResult<std::result::Result<(), NameConflict>> {
    let row = opt(
        tx,
        "SELECT id, deleted_at FROM namespaces WHERE name = $1",
        &[&name.as_bytes()],
    )
    .await?;
    let existing = row.map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1)));
    if let Some((_, None)) = existing {
        return Ok(Err(NameConflict::Taken));
    }
    if !adopt && namespace_has_repos(tx, name.as_bytes()).await? {
        return Ok(Err(NameConflict::HoldsRepositories));
    }
    if let Some((tombstone, Some(_))) = existing {
        exec(tx, "DELETE FROM namespaces WHERE id = $1", &[&tombstone]).await?;
    }
    Ok(Ok(()))
}

/// Deletes a namespace row, or keeps it as a tombstone while repositories live under it.
async fn retire_namespace(tx: &Tx<'_>, id: &str, name: &[u8]) -> PgResult<()> {
    if namespace_has_repos(tx, name).await? {
        exec(
            tx,
            "UPDATE namespaces SET deleted_at = $2 WHERE id = $1",
            &[&id, &now_millis()],
        )
        .await?;
    } else {
        exec(tx, "DELETE FROM namespaces WHERE id = $1", &[&id]).await?;
    }
    Ok(())
}

async fn namespace_has_repos(tx: &Tx<'_>, ns: &[u8]) -> PgResult<bool> {
    let (low, high) = namespace_range(ns);
    Ok(opt(
        tx,
        "SELECT 1 FROM repositories WHERE name = $1 OR (name >= $2 AND name < $3) LIMIT 1",
        &[&ns, &low, &high],
    )
    .await?
    .is_some())
}

fn subject_cols(subject: &GrantSubject) -> (&'static str, &str) {
    match subject {
        GrantSubject::User(id) => ("user", id.as_str()),
        GrantSubject::Team(id) => ("team", id.as_str()),
    }
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[async_trait]
impl IdentityStore for PostgresStore {
    async fn count_users(&self) -> Result<u64> {
        self.read("count_users", (), |tx, _| {
            Box::pin(async move {
                let row = opt(tx, "SELECT count(*) FROM users", &[]).await?;
                Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
            })
        })
        .await
    }

    async fn create_user(
        &self,
        user: &NewUser,
    ) -> Result<std::result::Result<UserRow, NameConflict>> {
        self.write_changed(
            Change::UserChanged { user: user.username.to_string(), what: "created".to_owned() },
            std::result::Result::is_ok,
            "create_user", user, |tx, &user| {
            Box::pin(async move {
                if let Err(conflict) = claim_name(tx, &user.username, user.adopt).await? {
                    return Ok(Err(conflict));
                }
                let (ns_id, user_id, now) = (new_id(), new_id(), now_millis());
                let name = user.username.as_bytes();
                exec(
                    tx,
                    "INSERT INTO namespaces (id, name, kind, created_at) VALUES ($1, $2, 'user', $3)",
                    &[&ns_id, &name, &now],
                )
                .await?;
                exec(
                    tx,
                    "INSERT INTO users (id, namespace_id, username, email, password_hash, is_admin,
                        created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                    &[
                        &user_id,
                        &ns_id,
                        &name,
                        &user.email,
                        &user.password_hash,
                        &user.is_admin,
                        &now,
                    ],
                )
                .await?;
                Ok(Ok(UserRow {
                    id: user_id,
                    username: user.username.clone(),
                    email: user.email.clone(),
                    password_hash: user.password_hash.clone(),
                    is_admin: user.is_admin,
                    created_at: now,
                    credential_generation: 0,
                }))
            })
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRow>> {
        let row = self
            .read("user_by_name", username, |tx, &name| {
                Box::pin(async move {
                    let sql = format!("SELECT {USER_COLS} FROM users WHERE username = $1");
                    opt(tx, &sql, &[&name.as_bytes()]).await
                })
            })
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>> {
        let row = self
            .read("user_by_id", id, |tx, &id| {
                Box::pin(async move {
                    let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
                    opt(tx, &sql, &[&id]).await
                })
            })
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserRow>> {
        let after = after.unwrap_or("").as_bytes();
        let rows = self
            .read("list_users", (after, limit), |tx, &(after, limit)| {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {USER_COLS} FROM users WHERE username > $1 ORDER BY username LIMIT $2"
                    );
                    all(tx, &sql, &[&after, &i64::from(limit)]).await
                })
            })
            .await?;
        rows.iter().map(user_row).collect()
    }

    async fn update_user(&self, id: &str, update: &UserUpdate) -> Result<bool> {
        self.write_changed(
            Change::UserChanged {
                user: id.to_string(),
                what: "updated".to_owned(),
            },
            |n| *n,
            "update_user",
            (id, update),
            |tx, &(id, u)| {
                Box::pin(async move {
                    let n = exec(
                        tx,
                        "UPDATE users SET email = coalesce($2, email),
                        password_hash = coalesce($3, password_hash),
                        is_admin = coalesce($4, is_admin), updated_at = $5,
                        credential_generation = credential_generation
                            + CASE WHEN $3::TEXT IS NULL THEN 0 ELSE 1 END
                     WHERE id = $1",
                        &[&id, &u.email, &u.password_hash, &u.is_admin, &now_millis()],
                    )
                    .await?;
                    if n > 0 && u.password_hash.is_some() {
                        exec(tx, "DELETE FROM refresh_tokens WHERE user_id = $1", &[&id]).await?;
                    }
                    Ok(n > 0)
                })
            },
        )
        .await
    }

    async fn delete_user(&self, id: &str) -> Result<std::result::Result<bool, String>> {
        self.write_changed(
            Change::UserChanged { user: id.to_string(), what: "deleted".to_owned() },
            |r| matches!(r, Ok(true)),
            "delete_user", id, |tx, &id| {
            Box::pin(async move {
                let Some(row) = opt(
                    tx,
                    "SELECT namespace_id, username FROM users WHERE id = $1",
                    &[&id],
                )
                .await?
                else {
                    return Ok(Ok(false));
                };
                let (ns_id, name): (String, Vec<u8>) = (row.get(0), row.get(1));
                let last_owner = opt(
                    tx,
                    "SELECT n.name FROM org_members m JOIN namespaces n ON n.id = m.org_id
                     WHERE m.user_id = $1 AND m.role = 'owner'
                       AND (SELECT count(*) FROM org_members o
                            WHERE o.org_id = m.org_id AND o.role = 'owner') = 1
                     LIMIT 1",
                    &[&id],
                )
                .await?;
                if let Some(row) = last_owner {
                    let org = String::from_utf8_lossy(row.get::<_, &[u8]>(0)).into_owned();
                    return Ok(Err(format!("user is the last owner of organization {org}")));
                }
                for sql in [
                    "DELETE FROM org_members WHERE user_id = $1",
                    "DELETE FROM team_members WHERE user_id = $1",
                    "DELETE FROM repo_permissions WHERE subject_kind = 'user' AND subject_id = $1",
                    "DELETE FROM api_keys WHERE user_id = $1",
                    "DELETE FROM refresh_tokens WHERE user_id = $1",
                    "DELETE FROM users WHERE id = $1",
                ] {
                    exec(tx, sql, &[&id]).await?;
                }
                retire_namespace(tx, &ns_id, &name).await?;
                Ok(Ok(true))
            })
        })
        .await
    }

    async fn create_org(
        &self,
        name: &str,
        owner: &str,
        adopt: bool,
    ) -> Result<std::result::Result<OrgRow, NameConflict>> {
        self.write_changed(
            Change::OrgChanged { org: name.to_string(), what: "created".to_owned() },
            std::result::Result::is_ok,
            "create_org", (name, owner, adopt), |tx, &(name, owner, adopt)| {
            Box::pin(async move {
                if let Err(conflict) = claim_name(tx, name, adopt).await? {
                    return Ok(Err(conflict));
                }
                let (id, now) = (new_id(), now_millis());
                exec(
                    tx,
                    "INSERT INTO namespaces (id, name, kind, created_at) VALUES ($1, $2, 'org', $3)",
                    &[&id, &name.as_bytes(), &now],
                )
                .await?;
                exec(
                    tx,
                    "INSERT INTO org_members (org_id, user_id, role, created_at)
                     VALUES ($1, $2, 'owner', $3)",
                    &[&id, &owner, &now],
                )
                .await?;
                Ok(Ok(OrgRow {
                    id,
                    name: name.to_owned(),
                    created_at: now,
                }))
            })
        })
        .await
    }

    async fn org_by_name(&self, name: &str) -> Result<Option<OrgRow>> {
        let row = self
            .read("org_by_name", name, |tx, &name| {
                Box::pin(async move {
                    opt(
                        tx,
                        "SELECT id, name, created_at FROM namespaces
                         WHERE name = $1 AND kind = 'org' AND deleted_at IS NULL",
                        &[&name.as_bytes()],
                    )
                    .await
                })
            })
            .await?;
        row.as_ref().map(org_row).transpose()
    }

    async fn list_orgs(
        &self,
        user: &str,
        all_orgs: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ListedOrg>> {
        let after = after.unwrap_or("").as_bytes();
        let rows = self
            .read(
                "list_orgs",
                (user, all_orgs, after, limit),
                |tx, &(user, all_orgs, after, limit)| {
                    Box::pin(async move {
                        all(
                            tx,
                            "SELECT n.id, n.name, n.created_at,
                                    (SELECT m.role FROM org_members m
                                     WHERE m.org_id = n.id AND m.user_id = $2::TEXT)
                             FROM namespaces n
                             WHERE n.kind = 'org' AND n.deleted_at IS NULL AND n.name > $1
                               AND ($3::BOOL OR EXISTS (SELECT 1 FROM org_members m
                                    WHERE m.org_id = n.id AND m.user_id = $2::TEXT))
                             ORDER BY n.name LIMIT $4",
                            &[&after, &user, &all_orgs, &i64::from(limit)],
                        )
                        .await
                    })
                },
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ListedOrg {
                    org: org_row(r)?,
                    role: r.get(3),
                })
            })
            .collect()
    }

    async fn delete_org(&self, id: &str) -> Result<std::result::Result<bool, String>> {
        self.write_changed(
            Change::OrgChanged { org: id.to_string(), what: "deleted".to_owned() },
            |r| matches!(r, Ok(true)),
            "delete_org", id, |tx, &id| {
            Box::pin(async move {
                let Some(row) = opt(
                    tx,
                    "SELECT name FROM namespaces WHERE id = $1 AND kind = 'org' AND deleted_at IS NULL",
                    &[&id],
                )
                .await?
                else {
                    return Ok(Ok(false));
                };
                let name: Vec<u8> = row.get(0);
                for sql in [
                    "DELETE FROM repo_permissions WHERE subject_kind = 'team'
                       AND subject_id IN (SELECT id FROM teams WHERE org_id = $1)",
                    "DELETE FROM team_members WHERE team_id IN (SELECT id FROM teams WHERE org_id = $1)",
                    "DELETE FROM teams WHERE org_id = $1",
                    "DELETE FROM org_members WHERE org_id = $1",
                ] {
                    exec(tx, sql, &[&id]).await?;
                }
                retire_namespace(tx, id, &name).await?;
                Ok(Ok(true))
            })
        })
        .await
    }

    async fn set_org_member(&self, org: &str, user: &str, role: &str) -> Result<()> {
        self.write_changed(
            Change::MembershipChanged {
                group: org.to_string(),
            },
            |()| true,
            "set_org_member",
            (org, user, role),
            |tx, &(org, user, role)| {
                Box::pin(async move {
                    exec(
                        tx,
                        "INSERT INTO org_members (org_id, user_id, role, created_at)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
                        &[&org, &user, &role, &now_millis()],
                    )
                    .await?;
                    Ok(())
                })
            },
        )
        .await
    }

    async fn remove_org_member(&self, org: &str, user: &str) -> Result<bool> {
        self.write_changed(
            Change::MembershipChanged {
                group: org.to_string(),
            },
            |n| *n,
            "remove_org_member",
            (org, user),
            |tx, &(org, user)| {
                Box::pin(async move {
                    exec(
                        tx,
                        "DELETE FROM team_members WHERE user_id = $2
                       AND team_id IN (SELECT id FROM teams WHERE org_id = $1)",
                        &[&org, &user],
                    )
                    .await?;
                    let n = exec(
                        tx,
                        "DELETE FROM org_members WHERE org_id = $1 AND user_id = $2",
                        &[&org, &user],
                    )
                    .await?;
                    Ok(n > 0)
                })
            },
        )
        .await
    }

    async fn org_members(&self, org: &str) -> Result<Vec<MemberRow>> {
        let rows = self
            .read("org_members", org, |tx, &org| {
                Box::pin(async move {
                    all(
                        tx,
                        "SELECT u.id, u.username, m.role FROM org_members m
                         JOIN users u ON u.id = m.user_id
                         WHERE m.org_id = $1 ORDER BY u.username",
                        &[&org],
                    )
                    .await
                })
            })
            .await?;
        rows.iter().map(member_row).collect()
    }

    async fn create_team(&self, org: &str, name: &str) -> Result<Option<TeamRow>> {
        self.write_changed(
            Change::MembershipChanged {
                group: org.to_string(),
            },
            Option::is_some,
            "create_team",
            (org, name),
            |tx, &(org, name)| {
                Box::pin(async move {
                    let id = new_id();
                    let n = exec(
                        tx,
                        "INSERT INTO teams (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (org_id, name) DO NOTHING",
                        &[&id, &org, &name.as_bytes(), &now_millis()],
                    )
                    .await?;
                    Ok((n > 0).then(|| TeamRow {
                        id,
                        org_id: org.to_owned(),
                        name: name.to_owned(),
                    }))
                })
            },
        )
        .await
    }

    async fn team(&self, org: &str, name: &str) -> Result<Option<TeamRow>> {
        let row = self
            .read("team", (org, name), |tx, &(org, name)| {
                Box::pin(async move {
                    opt(
                        tx,
                        "SELECT id, org_id, name FROM teams WHERE org_id = $1 AND name = $2",
                        &[&org, &name.as_bytes()],
                    )
                    .await
                })
            })
            .await?;
        row.as_ref().map(team_row).transpose()
    }

    async fn list_teams(&self, org: &str) -> Result<Vec<TeamRow>> {
        let rows = self
            .read("list_teams", org, |tx, &org| {
                Box::pin(async move {
                    all(
                        tx,
                        "SELECT id, org_id, name FROM teams WHERE org_id = $1 ORDER BY name",
                        &[&org],
                    )
                    .await
                })
            })
            .await?;
        rows.iter().map(team_row).collect()
    }

    async fn delete_team(&self, team: &str) -> Result<bool> {
        self.write_changed(
            Change::MembershipChanged {
                group: team.to_string(),
            },
            |n| *n,
            "delete_team",
            team,
            |tx, &team| {
                Box::pin(async move {
                    exec(
                    tx,
                    "DELETE FROM repo_permissions WHERE subject_kind = 'team' AND subject_id = $1",
                    &[&team],
                )
                .await?;
                    exec(tx, "DELETE FROM team_members WHERE team_id = $1", &[&team]).await?;
                    Ok(exec(tx, "DELETE FROM teams WHERE id = $1", &[&team]).await? > 0)
                })
            },
        )
        .await
    }

    async fn add_team_member(&self, team: &str, user: &str) -> Result<()> {
        self.write_changed(
            Change::MembershipChanged {
                group: team.to_string(),
            },
            |()| true,
            "add_team_member",
            (team, user),
            |tx, &(team, user)| {
                Box::pin(async move {
                    exec(
                    tx,
                    "INSERT INTO team_members (team_id, user_id, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (team_id, user_id) DO NOTHING",
                    &[&team, &user, &now_millis()],
                )
                .await?;
                    Ok(())
                })
            },
        )
        .await
    }

    async fn remove_team_member(&self, team: &str, user: &str) -> Result<bool> {
        self.write_changed(
            Change::MembershipChanged {
                group: team.to_string(),
            },
            |n| *n,
            "remove_team_member",
            (team, user),
            |tx, &(team, user)| {
                Box::pin(async move {
                    let n = exec(
                        tx,
                        "DELETE FROM team_members WHERE team_id = $1 AND user_id = $2",
                        &[&team, &user],
                    )
                    .await?;
                    Ok(n > 0)
                })
            },
        )
        .await
    }

    async fn team_members(&self, team: &str) -> Result<Vec<MemberRow>> {
        let rows = self
            .read("team_members", team, |tx, &team| {
                Box::pin(async move {
                    all(
                        tx,
                        "SELECT u.id, u.username, 'member'::TEXT FROM team_members t
                         JOIN users u ON u.id = t.user_id
                         WHERE t.team_id = $1 ORDER BY u.username",
                        &[&team],
                    )
                    .await
                })
            })
            .await?;
        rows.iter().map(member_row).collect()
    }

    async fn repo_facts(&self, repo: &str, user: Option<&str>) -> Result<RepoFacts> {
        self.read("repo_facts", (repo, user), |tx, &(repo, user)| {
            Box::pin(async move {
                let ns_name = repo.split('/').next().unwrap_or("");
                let mut facts = RepoFacts::default();
                let row = opt(
                    tx,
                    "SELECT id, visibility FROM repositories WHERE name = $1",
                    &[&repo.as_bytes()],
                )
                .await?;
                let repo_id = row.as_ref().map(|r| r.get::<_, String>(0));
                if let Some(row) = &row {
                    facts.exists = true;
                    let vis: Option<&str> = row.get(1);
                    facts.public = Visibility::parse(vis) == Visibility::Public;
                }
                let ns = opt(
                    tx,
                    "SELECT id, kind FROM namespaces WHERE name = $1 AND deleted_at IS NULL",
                    &[&ns_name.as_bytes()],
                )
                .await?;
                let ns_id = ns.as_ref().map(|r| r.get::<_, String>(0));
                facts.namespace = ns.map(|r| {
                    let kind = if r.get::<_, &str>(1) == "org" {
                        NamespaceKind::Org
                    } else {
                        NamespaceKind::User
                    };
                    (ns_name.to_owned(), kind)
                });
                let Some(user) = user else {
                    return Ok(facts);
                };
                if let Some((_, NamespaceKind::User)) = &facts.namespace {
                    facts.owns_namespace = opt(
                        tx,
                        "SELECT 1 FROM users WHERE id = $1 AND username = $2",
                        &[&user, &ns_name.as_bytes()],
                    )
                    .await?
                    .is_some();
                }
                if let (Some((_, NamespaceKind::Org)), Some(ns_id)) = (&facts.namespace, &ns_id) {
                    facts.org_role = opt(
                        tx,
                        "SELECT role FROM org_members WHERE org_id = $1 AND user_id = $2",
                        &[ns_id, &user],
                    )
                    .await?
                    .map(|r| r.get(0));
                }
                if let Some(repo_id) = repo_id {
                    facts.user_grant = opt(
                        tx,
                        "SELECT permission FROM repo_permissions
                         WHERE repo_id = $1 AND subject_kind = 'user' AND subject_id = $2",
                        &[&repo_id, &user],
                    )
                    .await?
                    .map(|r| r.get(0));
                    facts.team_grants = all(
                        tx,
                        "SELECT p.permission FROM repo_permissions p
                         JOIN team_members t ON t.team_id = p.subject_id
                         WHERE p.repo_id = $1 AND p.subject_kind = 'team' AND t.user_id = $2",
                        &[&repo_id, &user],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                }
                Ok(facts)
            })
        })
        .await
    }

    async fn init_visibility(&self, repo: &str, visibility: Visibility) -> Result<()> {
        let (repo, visibility) = (repo.as_bytes(), visibility.as_str());
        self.write_changed(
            Change::VisibilityChanged { repo: String::from_utf8_lossy(repo).into_owned(), visibility: visibility.to_owned() },
            |()| true,
            "init_visibility", (repo, visibility), |tx, &(repo, vis)| {
            Box::pin(async move {
                exec(
                    tx,
                    "UPDATE repositories SET visibility = $2 WHERE name = $1 AND visibility IS NULL",
                    &[&repo, &vis],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn set_visibility(&self, repo: &str, visibility: Visibility) -> Result<bool> {
        let (repo, visibility) = (repo.as_bytes(), visibility.as_str());
        self.write_changed(
            Change::VisibilityChanged {
                repo: String::from_utf8_lossy(repo).into_owned(),
                visibility: visibility.to_owned(),
            },
            |n| *n,
            "set_visibility",
            (repo, visibility),
            |tx, &(repo, vis)| {
                Box::pin(async move {
                    let n = exec(
                        tx,
                        "UPDATE repositories SET visibility = $2 WHERE name = $1",
                        &[&repo, &vis],
                    )
                    .await?;
                    Ok(n > 0)
                })
            },
        )
        .await
    }

    async fn repository(&self, repo: &str) -> Result<Option<RepoSummary>> {
        let row = self
            .read("repository", repo.as_bytes(), |tx, &repo| {
                Box::pin(async move {
                    opt(
                        tx,
                        "SELECT name, visibility, created_at FROM repositories WHERE name = $1",
                        &[&repo],
                    )
                    .await
                })
            })
            .await?;
        row.as_ref().map(repo_summary).transpose()
    }

    async fn repository_tags(&self, repo: &str) -> Result<Vec<TagSummary>> {
        let rows = self
            .read("repository_tags", repo.as_bytes(), |tx, &repo| {
                Box::pin(async move {
                    // sum() of INT8 is NUMERIC (DECIMAL on CockroachDB): cast back.
                    all(
                        tx,
                        "SELECT t.name, t.manifest_digest, m.media_type,
                                (m.size + coalesce((SELECT sum(b.size) FROM manifest_blobs mb
                                                    JOIN blobs b ON b.digest = mb.blob_digest
                                                    WHERE mb.repo_id = m.repo_id
                                                      AND mb.manifest_digest = m.digest), 0))::INT8,
                                t.updated_at
                         FROM tags t JOIN repositories r ON r.id = t.repo_id
                         JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest
                         WHERE r.name = $1 ORDER BY t.name",
                        &[&repo],
                    )
                    .await
                })
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TagSummary {
                    name: name_at(r, 0)?,
                    digest: r.get(1),
                    media_type: r.get(2),
                    size: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                    updated_at: r.get(4),
                })
            })
            .collect()
    }

    async fn visible_repositories(&self, q: &RepoListing<'_>) -> Result<Vec<ListedRepo>> {
        // A namespace is a first path component: one with a '/' names nothing.
        if q.namespace.is_some_and(|ns| ns.contains('/')) {
            return Ok(Vec::new());
        }
        let after = q.after.unwrap_or("").as_bytes();
        let ns = q.namespace.map(str::as_bytes);
        let ns_range = ns.map(namespace_range);
        let key_ns = q.key_namespace.map(str::as_bytes);
        let key_repo = q.key_repository.map(str::as_bytes);
        let ctx = (
            (after, ns, ns_range, q.all, q.user, i64::from(q.limit)),
            (key_ns, key_repo),
        );
        let rows = self
            .read("visible_repositories", ctx, |tx, ctx| {
                let ((after, ns, ns_range, all_repos, user, limit), (key_ns, key_repo)) = ctx;
                Box::pin(async move {
                    let own = in_namespace("u.username");
                    let org = in_namespace("n.name");
                    let key_in = in_namespace("$8::BYTEA");
                    let team_rank = permission_rank_sql("p.permission");
                    // The facts columns read exactly what `repo_facts` reads for one repository.
                    let sql = format!(
                        "SELECT r.name, r.visibility, r.created_at,
                            EXISTS (SELECT 1 FROM users u WHERE u.id = $6::TEXT AND {own}),
                            (SELECT m.role FROM org_members m JOIN namespaces n ON n.id = m.org_id
                             WHERE m.user_id = $6::TEXT AND {org} AND n.kind = 'org'
                               AND n.deleted_at IS NULL
                             LIMIT 1),
                            (SELECT p.permission FROM repo_permissions p
                             WHERE p.repo_id = r.id AND p.subject_kind = 'user'
                               AND p.subject_id = $6::TEXT),
                            (SELECT MAX({team_rank})::INT8 FROM repo_permissions p
                             JOIN team_members t ON t.team_id = p.subject_id
                             WHERE p.repo_id = r.id AND p.subject_kind = 'team'
                               AND t.user_id = $6::TEXT)
                         FROM repositories r
                         WHERE r.name > $1
                           AND ($2::BYTEA IS NULL OR r.name = $2::BYTEA
                                OR (r.name >= $3::BYTEA AND r.name < $4::BYTEA))
                           AND (
                              r.visibility = 'public'
                              OR (($8::BYTEA IS NULL OR {key_in})
                                  AND ($9::BYTEA IS NULL OR r.name = $9::BYTEA)
                                  AND (
                                     $5::BOOL
                                     OR EXISTS (SELECT 1 FROM users u WHERE u.id = $6::TEXT AND {own})
                                     OR EXISTS (SELECT 1 FROM org_members m
                                                JOIN namespaces n ON n.id = m.org_id
                                                WHERE m.user_id = $6::TEXT AND {org}
                                                  AND m.role IN ('owner', 'admin'))
                                     OR EXISTS (SELECT 1 FROM repo_permissions p
                                                WHERE p.repo_id = r.id AND p.subject_kind = 'user'
                                                  AND p.subject_id = $6::TEXT)
                                     OR EXISTS (SELECT 1 FROM repo_permissions p
                                                JOIN team_members t ON t.team_id = p.subject_id
                                                WHERE p.repo_id = r.id AND p.subject_kind = 'team'
                                                  AND t.user_id = $6::TEXT))))
                         ORDER BY r.name LIMIT $7"
                    );
                    let (ns_low, ns_high) = (
                        ns_range.as_ref().map(|(l, _)| l.as_slice()),
                        ns_range.as_ref().map(|(_, h)| h.as_slice()),
                    );
                    all(
                        tx,
                        &sql,
                        &[
                            after, ns, &ns_low, &ns_high, all_repos, user, limit, key_ns,
                            key_repo,
                        ],
                    )
                    .await
                })
            })
            .await?;
        rows.iter()
            .map(|r| {
                let summary = repo_summary(r)?;
                let facts = RepoFacts {
                    exists: true,
                    public: summary.visibility == Visibility::Public,
                    namespace: None,
                    owns_namespace: r.get(3),
                    org_role: r.get(4),
                    user_grant: r.get(5),
                    team_grants: permission_of_rank(r.get(6)).into_iter().collect(),
                };
                Ok(ListedRepo { summary, facts })
            })
            .collect()
    }

    async fn grant(&self, repo: &str, subject: &GrantSubject, permission: &str) -> Result<bool> {
        let (kind, sid) = subject_cols(subject);
        self.write_changed(
            Change::GrantChanged {
                repo: repo.to_string(),
                subject_kind: kind.to_string(),
                subject: sid.to_string(),
            },
            |n| *n,
            "grant",
            (repo, kind, sid, permission),
            |tx, &(repo, kind, sid, permission)| {
                Box::pin(async move {
                    let Some(id) = repo_id(tx, repo).await? else {
                        return Ok(false);
                    };
                    exec(
                        tx,
                        "INSERT INTO repo_permissions
                            (repo_id, subject_kind, subject_id, permission, created_at)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (repo_id, subject_kind, subject_id)
                         DO UPDATE SET permission = excluded.permission",
                        &[&id, &kind, &sid, &permission, &now_millis()],
                    )
                    .await?;
                    Ok(true)
                })
            },
        )
        .await
    }

    async fn revoke(&self, repo: &str, subject: &GrantSubject) -> Result<bool> {
        let (kind, sid) = subject_cols(subject);
        self.write_changed(
            Change::GrantChanged {
                repo: repo.to_string(),
                subject_kind: kind.to_string(),
                subject: sid.to_string(),
            },
            |n| *n,
            "revoke",
            (repo.as_bytes(), kind, sid),
            |tx, &(repo, kind, sid)| {
                Box::pin(async move {
                    let n = exec(
                        tx,
                        "DELETE FROM repo_permissions WHERE subject_kind = $2 AND subject_id = $3
                           AND repo_id = (SELECT id FROM repositories WHERE name = $1)",
                        &[&repo, &kind, &sid],
                    )
                    .await?;
                    Ok(n > 0)
                })
            },
        )
        .await
    }

    async fn grants(&self, repo: &str) -> Result<Vec<GrantRow>> {
        let rows = self
            .read("grants", repo.as_bytes(), |tx, &repo| {
                Box::pin(async move {
                    all(
                        tx,
                        "SELECT p.subject_kind,
                                CASE p.subject_kind
                                    WHEN 'user' THEN (SELECT username FROM users
                                                      WHERE id = p.subject_id)
                                    ELSE (SELECT n.name || '/'::BYTEA || t.name FROM teams t
                                          JOIN namespaces n ON n.id = t.org_id
                                          WHERE t.id = p.subject_id) END,
                                p.permission
                         FROM repo_permissions p JOIN repositories r ON r.id = p.repo_id
                         WHERE r.name = $1 ORDER BY 1, 2",
                        &[&repo],
                    )
                    .await
                })
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(GrantRow {
                    subject_kind: r.get(0),
                    subject_name: name_of(r.get::<_, Option<Vec<u8>>>(1).unwrap_or_default())?,
                    permission: r.get(2),
                })
            })
            .collect()
    }

    async fn create_api_key(&self, key: &ApiKeyRow) -> Result<bool> {
        self.write_changed(
            Change::CredentialChanged { user: key.user_id.to_string(), credential: "api_key".to_owned() },
            |n| *n,
            "create_api_key", key, |tx, &k| {
            Box::pin(async move {
                let sql = format!(
                    "INSERT INTO api_keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (user_id, name) DO NOTHING"
                );
                let n = exec(
                    tx,
                    &sql,
                    &[
                        &k.id,
                        &k.user_id,
                        &k.name.as_bytes(),
                        &k.secret_hash,
                        &k.scope_kind,
                        &k.scope_name,
                        &k.permission,
                        &k.expires_at,
                        &k.revoked_at,
                        &k.created_at,
                    ],
                )
                .await?;
                Ok(n > 0)
            })
        })
        .await
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>> {
        let row = self
            .read("api_key", id, |tx, &id| {
                Box::pin(async move {
                    let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1");
                    opt(tx, &sql, &[&id]).await
                })
            })
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    async fn list_api_keys(&self, user: &str) -> Result<Vec<ApiKeyRow>> {
        let rows = self
            .read("list_api_keys", user, |tx, &user| {
                Box::pin(async move {
                    let sql =
                        format!("SELECT {KEY_COLS} FROM api_keys WHERE user_id = $1 ORDER BY name");
                    all(tx, &sql, &[&user]).await
                })
            })
            .await?;
        rows.iter().map(key_row).collect()
    }

    async fn revoke_api_key(&self, user: &str, id: &str) -> Result<bool> {
        self.write_changed(
            Change::CredentialChanged {
                user: user.to_string(),
                credential: "api_key".to_owned(),
            },
            |n| *n,
            "revoke_api_key",
            (user, id),
            |tx, &(user, id)| {
                Box::pin(async move {
                    let n = exec(
                        tx,
                        "UPDATE api_keys SET revoked_at = $3
                     WHERE user_id = $1 AND id = $2 AND revoked_at IS NULL",
                        &[&user, &id, &now_millis()],
                    )
                    .await?;
                    Ok(n > 0)
                })
            },
        )
        .await
    }

    async fn create_refresh_token(&self, token: &RefreshTokenRow) -> Result<()> {
        self.write_changed(
            Change::CredentialChanged {
                user: token.user_id.to_string(),
                credential: "refresh_token".to_owned(),
            },
            |()| true,
            "create_refresh_token",
            token,
            |tx, &t| {
                Box::pin(async move {
                    exec(
                        tx,
                        "INSERT INTO refresh_tokens
                        (id, user_id, service, secret_hash, expires_at, created_at, client_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[
                            &t.id,
                            &t.user_id,
                            &t.service,
                            &t.secret_hash,
                            &t.expires_at,
                            &now_millis(),
                            &t.client_id,
                        ],
                    )
                    .await?;
                    Ok(())
                })
            },
        )
        .await
    }

    async fn refresh_token(&self, id: &str) -> Result<Option<RefreshTokenRow>> {
        self.read("refresh_token", id, |tx, &id| {
            Box::pin(async move {
                let sql = format!("SELECT {REFRESH_COLS} FROM refresh_tokens WHERE id = $1");
                Ok(opt(tx, &sql, &[&id]).await?.as_ref().map(refresh_row))
            })
        })
        .await
    }

    async fn list_refresh_tokens(&self, user: &str) -> Result<Vec<RefreshTokenRow>> {
        self.read("list_refresh_tokens", user, |tx, &user| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {REFRESH_COLS} FROM refresh_tokens
                     WHERE user_id = $1 AND expires_at > $2 ORDER BY id"
                );
                Ok(all(tx, &sql, &[&user, &now_millis()])
                    .await?
                    .iter()
                    .map(refresh_row)
                    .collect())
            })
        })
        .await
    }

    async fn delete_refresh_token(&self, user: &str, id: &str) -> Result<bool> {
        self.write_changed(
            Change::CredentialChanged {
                user: user.to_string(),
                credential: "refresh_token".to_owned(),
            },
            |n| *n,
            "delete_refresh_token",
            (user, id),
            |tx, &(user, id)| {
                Box::pin(async move {
                    let n = exec(
                        tx,
                        "DELETE FROM refresh_tokens WHERE user_id = $1 AND id = $2",
                        &[&user, &id],
                    )
                    .await?;
                    Ok(n > 0)
                })
            },
        )
        .await
    }

    async fn touch_refresh_token(&self, id: &str, now: i64) -> Result<()> {
        self.write("touch_refresh_token", (id, now), |tx, &(id, now)| {
            Box::pin(async move {
                exec(
                    tx,
                    "UPDATE refresh_tokens SET last_used_at = $2::INT8
                     WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2::INT8 - 60000)",
                    &[&id, &now],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn login_failures(&self, key: &str, window_ms: i64) -> Result<u32> {
        self.read(
            "login_failures",
            (key, window_ms),
            |tx, &(key, window_ms)| {
                Box::pin(async move {
                    let row = opt(
                        tx,
                        "SELECT failures, window_start FROM login_failures WHERE key = $1",
                        &[&key],
                    )
                    .await?;
                    Ok(
                        match row.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))) {
                            Some((n, start)) if now_millis() - start < window_ms => count(n),
                            _ => 0,
                        },
                    )
                })
            },
        )
        .await
    }

    async fn begin_login_attempt(
        &self,
        hard: &[LoginLimit<'_>],
        soft: &str,
        window_ms: i64,
    ) -> Result<LoginAdmission> {
        let hard: Vec<(String, u32)> = hard.iter().map(|l| (l.key.to_owned(), l.max)).collect();
        let mut keys: Vec<String> = hard.iter().map(|(k, _)| k.clone()).collect();
        keys.push(soft.to_owned());
        // Rows are written in key order, so two attempts sharing counters never wait on each
        // other in a cycle.
        keys.sort();
        keys.dedup();
        let ctx = (hard, soft.to_owned(), keys, window_ms);
        // SERIALIZABLE: the counts read here are still the counts when the additions commit, or
        // the transaction is retried from the start.
        self.write(
            "begin_login_attempt",
            ctx,
            |tx, (hard, soft, keys, window_ms)| {
                Box::pin(async move {
                    let now = now_millis();
                    let rows = all(
                        tx,
                        "SELECT key, failures, window_start FROM login_failures
                         WHERE key = ANY($1)",
                        &[keys],
                    )
                    .await?;
                    let current = |key: &str| {
                        rows.iter()
                            .find(|r| r.get::<_, &str>(0) == key)
                            .map(|r| (r.get::<_, i64>(1), r.get::<_, i64>(2)))
                            .filter(|&(_, start)| now - start < *window_ms)
                            .map_or((0, now), |(n, start)| (count(n), start))
                    };
                    for (key, max) in hard {
                        let (n, start) = current(key);
                        if n >= *max {
                            return Ok(LoginAdmission::Refused {
                                until_ms: start.saturating_add(*window_ms),
                            });
                        }
                    }
                    let (soft_failures, _) = current(soft);
                    for key in keys {
                        exec(
                            tx,
                            "INSERT INTO login_failures (key, failures, window_start)
                             VALUES ($1, 1, $2)
                             ON CONFLICT (key) DO UPDATE SET
                                failures = CASE WHEN $2 - login_failures.window_start < $3
                                                THEN login_failures.failures + 1 ELSE 1 END,
                                window_start = CASE WHEN $2 - login_failures.window_start < $3
                                                    THEN login_failures.window_start ELSE $2 END",
                            &[key, &now, window_ms],
                        )
                        .await?;
                    }
                    Ok(LoginAdmission::Admitted { soft_failures })
                })
            },
        )
        .await
    }

    async fn forgive_login_attempt(&self, clear: &str, refund: &[&str]) -> Result<()> {
        let mut refund: Vec<String> = refund.iter().map(|k| (*k).to_owned()).collect();
        refund.sort();
        refund.dedup();
        self.write(
            "forgive_login_attempt",
            (clear.to_owned(), refund),
            |tx, (clear, refund)| {
                Box::pin(async move {
                    exec(tx, "DELETE FROM login_failures WHERE key = $1", &[clear]).await?;
                    exec(
                        tx,
                        "UPDATE login_failures SET failures = failures - 1
                         WHERE key = ANY($1) AND failures > 0",
                        &[refund],
                    )
                    .await?;
                    Ok(())
                })
            },
        )
        .await
    }

    async fn prune_login_failures(&self, window_ms: i64, limit: u32) -> Result<u64> {
        self.write(
            "prune_login_failures",
            (window_ms, i64::from(limit)),
            |tx, &(window_ms, limit)| {
                Box::pin(async move {
                    exec(
                        tx,
                        "DELETE FROM login_failures WHERE key IN (
                            SELECT key FROM login_failures WHERE window_start <= $1
                            ORDER BY window_start LIMIT $2)",
                        &[&now_millis().saturating_sub(window_ms), &limit],
                    )
                    .await
                })
            },
        )
        .await
    }
}
