//! Content-store writes written once over the [`Db`] seam: deleting a repository, and dropping a
//! repository that an abandoned or cancelled upload created and nothing else uses.
//!
//! Each records its changes through [`changes::record`] in the caller's transaction.

use super::changes::{self, Change};
use super::sql::{Db, SqlResult, Val};

/// Tables keyed by `repo_id` that a repository deletion empties, children first.
const REPOSITORY_TABLES: [&str; 6] = [
    "tags",
    "manifest_blobs",
    "manifest_children",
    "manifests",
    "repository_blobs",
    "repo_permissions",
];

/// Deletes a repository's tags, manifests, links, grants and upload sessions, and the repository
/// itself; the sessions' stored objects are queued for deletion with the change (blobs stay for
/// garbage collection). `false` when the repository is unknown.
pub(crate) async fn delete_repository<D: Db>(db: &mut D, repo: &str, now: i64) -> SqlResult<bool> {
    let name = db.name(repo);
    let rows = db
        .query("SELECT id FROM repositories WHERE name = $1", &[name])
        .await?;
    let Some(row) = rows.first() else {
        return Ok(false);
    };
    let id = Val::Text(row.text(0)?);
    let uploads = db
        .query(
            "SELECT id FROM uploads WHERE repo_id = $1 ORDER BY id",
            std::slice::from_ref(&id),
        )
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect::<SqlResult<Vec<String>>>()?;
    for table in REPOSITORY_TABLES {
        db.exec(
            &format!("DELETE FROM {table} WHERE repo_id = $1"),
            std::slice::from_ref(&id),
        )
        .await?;
    }
    db.exec(
        "DELETE FROM upload_parts WHERE upload_id IN (SELECT id FROM uploads WHERE repo_id = $1)",
        std::slice::from_ref(&id),
    )
    .await?;
    db.exec(
        "DELETE FROM uploads WHERE repo_id = $1",
        std::slice::from_ref(&id),
    )
    .await?;
    db.exec(
        "DELETE FROM repositories WHERE id = $1",
        std::slice::from_ref(&id),
    )
    .await?;
    let change = Change::RepositoryDeleted {
        repo: repo.to_owned(),
        uploads,
    };
    changes::record(db, &[change], now).await?;
    Ok(true)
}

/// Deletes the repository `repo_id` (named `repo`) if nothing uses it any more: no upload
/// session, no linked blob, no manifest, no grant. Called after an upload session ends without
/// a blob, so starting and cancelling an upload leaves no empty repository behind (which would
/// show in the catalog and keep its namespace's owner from being deleted). Records the deletion
/// in `changes`.
pub(crate) async fn drop_if_unused<D: Db>(
    db: &mut D,
    repo_id: &str,
    repo: &str,
    changes: &mut Vec<Change>,
) -> SqlResult<()> {
    let id = Val::Text(repo_id.to_owned());
    let used = db
        .query(
            "SELECT 1 FROM uploads WHERE repo_id = $1
             UNION ALL SELECT 1 FROM repository_blobs WHERE repo_id = $1
             UNION ALL SELECT 1 FROM manifests WHERE repo_id = $1
             UNION ALL SELECT 1 FROM repo_permissions WHERE repo_id = $1
             LIMIT 1",
            std::slice::from_ref(&id),
        )
        .await?;
    if used.is_empty() {
        db.exec("DELETE FROM repositories WHERE id = $1", &[id])
            .await?;
        changes.push(Change::RepositoryDeleted {
            repo: repo.to_owned(),
            uploads: Vec::new(),
        });
    }
    Ok(())
}
