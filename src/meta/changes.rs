//! Change records: what a committed write changed, recorded inside the write's own transaction.
//!
//! Every write body of the stores ends by calling [`record`] with the [`Change`]s it made. The
//! helper writes them to the `changes` log and enqueues the work they cause, which
//! [`work_for`] (pure) derives for each consumer. So no write commits without its changes and its
//! work, and no change or work item exists for a write that rolled back.
//!
//! Exempt, because they change nothing another part of the system reacts to: upload progress
//! (the PATCH offset compare-and-set), login-failure counters, last-used timestamps of keys and
//! tokens, lease renewals and the queue's own bookkeeping.

use serde::{Deserialize, Serialize};

use super::queue::{self, NewWork};
use super::sql::{Db, SqlResult, Val};

/// Orders the change records of this process.
static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The consumer that deletes stored objects no row refers to any more.
pub const DISCARD_TOPIC: &str = "discard-objects";

/// One typed, backend-neutral change. Repository, tag and user names are plain strings here: the
/// record is a log line, read back only by consumers that re-check the current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A manifest was stored (or stored again); with a tag, the tag now points at it and
    /// `previous` is the digest the tag pointed at before (if another).
    ManifestPut {
        /// Repository.
        repo: String,
        /// Manifest digest.
        digest: String,
        /// The tag it was pushed by.
        tag: Option<String>,
        /// The tag's earlier target, when it moved.
        previous: Option<String>,
    },
    /// A tag was deleted.
    TagDeleted {
        /// Repository.
        repo: String,
        /// Tag.
        tag: String,
        /// The manifest it pointed at.
        digest: String,
    },
    /// A manifest was deleted, with the tags that pointed at it.
    ManifestDeleted {
        /// Repository.
        repo: String,
        /// Manifest digest.
        digest: String,
        /// Tags deleted with it.
        tags: Vec<String>,
    },
    /// A blob was linked to a repository by a finished upload or a mount.
    BlobLinked {
        /// Repository.
        repo: String,
        /// Blob digest.
        digest: String,
        /// `upload` or `mount`.
        via: String,
    },
    /// A blob was unlinked from a repository.
    BlobUnlinked {
        /// Repository.
        repo: String,
        /// Blob digest.
        digest: String,
    },
    /// An upload session ended in a verified blob (`reused` when the content existed already).
    UploadFinished {
        /// Repository.
        repo: String,
        /// Session id.
        upload: String,
        /// Blob digest.
        digest: String,
        /// Whether an existing blob row was reused (the upload's bytes are redundant).
        reused: bool,
        /// The session's object that became the blob, kept when its other objects are swept.
        keep: Option<String>,
        /// Whether the session left objects behind that no row refers to (more than the one
        /// part that became the blob).
        sweep: bool,
    },
    /// An upload session was deleted without a blob (cancelled, digest mismatch, purged).
    UploadDeleted {
        /// Repository.
        repo: String,
        /// Session id.
        upload: String,
    },
    /// A repository was created (by a push, a mount or an upload).
    RepositoryCreated {
        /// Repository.
        repo: String,
    },
    /// A repository and everything in it was deleted.
    RepositoryDeleted {
        /// Repository.
        repo: String,
        /// Its open upload sessions (deleted with it), whose objects go too.
        uploads: Vec<String>,
    },
    /// A repository's visibility changed.
    VisibilityChanged {
        /// Repository.
        repo: String,
        /// The new visibility.
        visibility: String,
    },
    /// A grant on a repository was set or removed.
    GrantChanged {
        /// Repository.
        repo: String,
        /// `user` or `team`.
        subject_kind: String,
        /// The user's or team's id.
        subject: String,
    },
    /// A user was created, changed (password, admin flag) or deleted.
    UserChanged {
        /// User id or name.
        user: String,
        /// `created`, `updated` or `deleted`.
        what: String,
    },
    /// An organization was created or deleted.
    OrgChanged {
        /// Organization name.
        org: String,
        /// `created` or `deleted`.
        what: String,
    },
    /// Membership of an organization or one of its teams changed, or a team was created or
    /// deleted.
    MembershipChanged {
        /// The organization's or team's id.
        group: String,
    },
    /// An API key or refresh token was created or revoked.
    CredentialChanged {
        /// The owning user's id.
        user: String,
        /// `api_key` or `refresh_token`.
        credential: String,
    },
}

impl Change {
    /// The record's kind (its serde tag).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::ManifestPut { .. } => "manifest_put",
            Change::TagDeleted { .. } => "tag_deleted",
            Change::ManifestDeleted { .. } => "manifest_deleted",
            Change::BlobLinked { .. } => "blob_linked",
            Change::BlobUnlinked { .. } => "blob_unlinked",
            Change::UploadFinished { .. } => "upload_finished",
            Change::UploadDeleted { .. } => "upload_deleted",
            Change::RepositoryCreated { .. } => "repository_created",
            Change::RepositoryDeleted { .. } => "repository_deleted",
            Change::VisibilityChanged { .. } => "visibility_changed",
            Change::GrantChanged { .. } => "grant_changed",
            Change::UserChanged { .. } => "user_changed",
            Change::OrgChanged { .. } => "org_changed",
            Change::MembershipChanged { .. } => "membership_changed",
            Change::CredentialChanged { .. } => "credential_changed",
        }
    }

    /// The repository the change is about, if one.
    pub fn repository(&self) -> Option<&str> {
        match self {
            Change::ManifestPut { repo, .. }
            | Change::TagDeleted { repo, .. }
            | Change::ManifestDeleted { repo, .. }
            | Change::BlobLinked { repo, .. }
            | Change::BlobUnlinked { repo, .. }
            | Change::UploadFinished { repo, .. }
            | Change::UploadDeleted { repo, .. }
            | Change::RepositoryCreated { repo }
            | Change::RepositoryDeleted { repo, .. }
            | Change::VisibilityChanged { repo, .. }
            | Change::GrantChanged { repo, .. } => Some(repo),
            Change::UserChanged { .. }
            | Change::OrgChanged { .. }
            | Change::MembershipChanged { .. }
            | Change::CredentialChanged { .. } => None,
        }
    }
}

/// The payload of a [`DISCARD_TOPIC`] item: stored objects to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discard {
    /// Upload sessions (gone) whose objects are deleted, all of them but `keep`.
    pub uploads: Vec<String>,
    /// An object under those sessions that a blob row refers to.
    pub keep: Option<String>,
}

/// The work a change causes, for every consumer. Pure; the one place that decides it.
///
/// `id` is the change record's id, which makes work keys unique where the change itself names no
/// unique thing.
pub fn work_for(change: &Change, id: &str) -> Vec<NewWork> {
    let discard = |key: String, d: Discard| {
        let payload = serde_json::to_string(&d).unwrap_or_default();
        vec![NewWork {
            topic: DISCARD_TOPIC.to_owned(),
            key,
            payload,
            delay_ms: 0,
        }]
    };
    match change {
        Change::UploadFinished {
            upload,
            keep,
            sweep: true,
            ..
        } => discard(
            format!("upload:{upload}"),
            Discard {
                uploads: vec![upload.clone()],
                keep: keep.clone(),
            },
        ),
        Change::UploadDeleted { upload, .. } => discard(
            format!("upload:{upload}"),
            Discard {
                uploads: vec![upload.clone()],
                keep: None,
            },
        ),
        Change::RepositoryDeleted { repo, uploads } if !uploads.is_empty() => discard(
            format!("repository:{repo}:{id}"),
            Discard {
                uploads: uploads.clone(),
                keep: None,
            },
        ),
        Change::UploadFinished { .. }
        | Change::RepositoryDeleted { .. }
        | Change::ManifestPut { .. }
        | Change::TagDeleted { .. }
        | Change::ManifestDeleted { .. }
        | Change::BlobLinked { .. }
        | Change::BlobUnlinked { .. }
        | Change::RepositoryCreated { .. }
        | Change::VisibilityChanged { .. }
        | Change::GrantChanged { .. }
        | Change::UserChanged { .. }
        | Change::OrgChanged { .. }
        | Change::MembershipChanged { .. }
        | Change::CredentialChanged { .. } => Vec::new(),
    }
}

/// The change of a finished upload: `parts` are the session's stored parts, `keep` the key of
/// the blob row the finish inserted (none when it reused an existing blob). Its objects need a
/// sweep unless the one part it had became the blob.
pub(crate) fn finished_change(
    repo: &str,
    upload: &str,
    blob: &super::NewBlob,
    parts: &[super::UploadPart],
    keep: Option<String>,
) -> Change {
    let sweep = !matches!((parts, &keep), ([only], Some(k)) if &only.storage_key == k);
    Change::UploadFinished {
        repo: repo.to_owned(),
        upload: upload.to_owned(),
        digest: blob.digest.to_string(),
        reused: keep.is_none(),
        keep,
        sweep,
    }
}

/// Records `changes` and enqueues their work, in the caller's transaction, at `now`.
pub(crate) async fn record<D: Db>(db: &mut D, changes: &[Change], now: i64) -> SqlResult<()> {
    let mut work = Vec::new();
    for change in changes {
        // Ids sort by record time, then by this process's order (several changes of one write
        // share a millisecond), then randomly across nodes.
        let seq = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{now:016x}-{seq:016x}-{:08x}", rand::random::<u32>());
        let body = serde_json::to_string(change).unwrap_or_default();
        let repo = change.repository().map_or(Val::Null, |r| db.name(r));
        db.exec(
            "INSERT INTO changes (id, recorded_at, kind, repository, body)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                id.as_str().into(),
                now.into(),
                change.kind().into(),
                repo,
                body.into(),
            ],
        )
        .await?;
        work.extend(work_for(change, &id));
    }
    queue::enqueue(db, &work, now).await
}

/// The most recent change records, newest first (tests and diagnostics).
pub(crate) async fn recent<D: Db>(db: &mut D, limit: u32) -> SqlResult<Vec<Change>> {
    let rows = db
        .query(
            "SELECT body FROM changes ORDER BY id DESC LIMIT $1",
            &[i64::from(limit).into()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let body = r.text(0)?;
            serde_json::from_str(&body).map_err(|_| super::sql::SqlError::Shape(0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_that_leave_objects_behind_cause_discard_work() {
        let finished = Change::UploadFinished {
            repo: "a/b".into(),
            upload: "u1".into(),
            digest: "sha256:00".into(),
            reused: false,
            keep: Some("objects/u1/joined-x".into()),
            sweep: true,
        };
        let work = work_for(&finished, "c1");
        assert_eq!(work.len(), 1);
        assert_eq!(work[0].topic, DISCARD_TOPIC);
        assert_eq!(work[0].key, "upload:u1");
        let payload: Discard = serde_json::from_str(&work[0].payload).unwrap_or_default();
        assert_eq!(payload.uploads, vec!["u1".to_owned()]);
        assert_eq!(payload.keep.as_deref(), Some("objects/u1/joined-x"));
        let single_part = Change::UploadFinished {
            repo: "a/b".into(),
            upload: "u1".into(),
            digest: "sha256:00".into(),
            reused: false,
            keep: Some("objects/u1/0-x".into()),
            sweep: false,
        };
        assert!(work_for(&single_part, "c2").is_empty());
        let empty = Change::RepositoryDeleted {
            repo: "a/b".into(),
            uploads: Vec::new(),
        };
        assert!(work_for(&empty, "c3").is_empty());
        let repo = Change::RepositoryDeleted {
            repo: "a/b".into(),
            uploads: vec!["u2".into()],
        };
        assert_eq!(work_for(&repo, "c4")[0].key, "repository:a/b:c4");
    }

    #[test]
    fn records_round_trip_through_json_with_their_kind() {
        let c = Change::TagDeleted {
            repo: "a/b".into(),
            tag: "v1".into(),
            digest: "sha256:00".into(),
        };
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert!(json.contains("\"kind\":\"tag_deleted\""), "{json}");
        let back: Change = serde_json::from_str(&json).unwrap_or(Change::MembershipChanged {
            group: String::new(),
        });
        assert_eq!(back, c);
    }
}
