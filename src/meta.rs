//! The metadata store: repositories, blobs and their links, manifests, tags and upload sessions.
//!
//! [`MetaStore`] is backend-neutral; `sqlite` implements it for the embedded default and `postgres`
//! for PostgreSQL/CockroachDB (many stateless nodes sharing one database). Both answer every call
//! alike, which the shared `conformance` tests check. All SQL of the crate lives under this module,
//! and only this module touches database drivers.
//! Invariants every backend keeps, each inside one transaction:
//! - a manifest is stored only if every blob it references is linked to its repository and every
//!   child manifest is in its repository;
//! - a blob linked from a manifest cannot be unlinked, and a manifest listed by an index cannot be
//!   deleted, while the referencing manifest exists;
//! - an upload advances only from the offset the caller read (compare-and-set), so concurrent or
//!   replayed chunks can never interleave.
//!
//! Must not depend on `service`, `storage` or `api`.

use async_trait::async_trait;

use crate::oci::{Digest, Reference, RepoName, Tag};

pub mod changes;
#[cfg(test)]
mod conformance;
mod content;
pub mod identity;
pub mod migrate;
pub mod postgres;
pub mod queue;
mod sql;
pub mod sqlite;

pub use changes::Change;
pub use queue::{BuriedItem, NewWork, TopicStats, WorkItem};
use queue::{Op, Out};

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database cannot be reached or is shutting down; retrying later may work.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// A stored value is not what this version of Aerugo wrote.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// Any other database failure.
    #[error("metadata store error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A stored blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRow {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Where the bytes live in blob storage.
    pub storage_key: String,
}

/// One stored piece of an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadPart {
    /// Offset of the first byte of this part within the blob.
    pub start: u64,
    /// Bytes in this part.
    pub size: u64,
    /// Where the part lives in blob storage.
    pub storage_key: String,
}

/// An upload session.
#[derive(Clone, Debug)]
pub struct UploadRow {
    /// Session id.
    pub id: String,
    /// Bytes accepted so far.
    pub offset: u64,
    /// Serialized hash state after `offset` bytes.
    pub hash_state: Vec<u8>,
    /// Stored parts, in offset order.
    pub parts: Vec<UploadPart>,
}

/// A stored manifest.
#[derive(Clone, Debug)]
pub struct ManifestRow {
    /// Digest of the payload.
    pub digest: Digest,
    /// Media type it was pushed with.
    pub media_type: String,
    /// The exact pushed bytes.
    pub payload: Vec<u8>,
}

/// A manifest to store.
#[derive(Clone, Debug)]
pub struct NewManifest {
    /// Digest of the payload.
    pub digest: Digest,
    /// Media type.
    pub media_type: String,
    /// The exact pushed bytes.
    pub payload: Vec<u8>,
    /// The `subject` digest, for the referrers API.
    pub subject: Option<Digest>,
    /// Artifact type, for the referrers API.
    pub artifact_type: Option<String>,
    /// Annotations as JSON text, for the referrers API.
    pub annotations: Option<String>,
    /// Blobs the manifest references (must be linked to the repository).
    pub blobs: Vec<Digest>,
    /// Child manifests (must be in the repository).
    pub children: Vec<Digest>,
    /// Tag to point at the manifest, when pushed by tag.
    pub tag: Option<Tag>,
}

/// A blob to record after a verified upload.
#[derive(Clone, Debug)]
pub struct NewBlob {
    /// Verified digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Where the bytes live; `None` asks to finish only if the blob exists already (reusing it),
    /// and otherwise to answer [`BlobCommit::NeedsBytes`] without changing anything.
    pub storage_key: Option<String>,
}

/// The result of recording a verified blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobCommit {
    /// The blob is new; its bytes are the ones just uploaded.
    Inserted,
    /// The content already existed; the existing row wins and the new bytes are redundant.
    AlreadyPresent(BlobRow),
    /// No storage key was given and the blob does not exist: store the bytes, then finish again.
    NeedsBytes,
}

/// The result of storing a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutManifest {
    /// Stored (or already present), and the tag (if any) points at it.
    Stored,
    /// Refused: these blobs or child manifests are not in the repository.
    MissingReferences(Vec<Digest>),
}

/// The result of a delete that other content may block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delete {
    /// Deleted.
    Deleted,
    /// Nothing to delete.
    NotFound,
    /// Still referenced by these manifests of the repository.
    Referenced(Vec<Digest>),
}

/// A manifest that refers to a subject.
#[derive(Clone, Debug)]
pub struct ReferrerRow {
    /// The referrer's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// Its artifact type.
    pub artifact_type: Option<String>,
    /// Its annotations as JSON text.
    pub annotations: Option<String>,
}

/// An upload session nobody has advanced for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleUpload {
    /// Its repository.
    pub repo: String,
    /// Session id.
    pub id: String,
    /// When it last accepted a chunk (or started), in milliseconds since the Unix epoch.
    pub updated_at: i64,
}

/// Where an upload session stands, without its parts: what a chunk needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadProgress {
    /// Session id.
    pub id: String,
    /// Bytes accepted so far.
    pub offset: u64,
    /// Serialized hash state after `offset` bytes.
    pub hash_state: Vec<u8>,
    /// How many parts the session holds.
    pub parts: u64,
}

/// The answer to [`MetaStore::create_upload_bounded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadAdmission {
    /// The session was created.
    Created,
    /// The owner already has the maximum number of recently active sessions; none was created.
    Full {
        /// When the oldest of the counted sessions last advanced (milliseconds since the epoch).
        oldest_updated_at: i64,
    },
}

/// The metadata store contract. Implementations are cheap to clone behind an `Arc`.
#[async_trait]
pub trait MetaStore: Send + Sync + std::fmt::Debug + 'static {
    /// Checks that the store answers.
    async fn ping(&self) -> Result<()>;

    /// Publishes the store's gauges (connection pool) to the metrics recorder; called before
    /// every metrics scrape. Stores without a pool publish nothing.
    fn record_gauges(&self) {}

    /// Whether the repository exists.
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool>;
    /// Repository names after `after` in lexical order, at most `limit`.
    async fn list_repositories(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>>;

    /// The blob, if it is linked to the repository.
    async fn blob_in_repo(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobRow>>;
    /// The blob, wherever it is linked.
    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRow>>;
    /// Links a blob that `from` holds to `to` (creating `to`); `None` when `from` does not hold it.
    async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRow>>;
    /// Unlinks a blob from a repository unless a manifest there references it.
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Delete>;

    /// Starts an upload session (creating the repository).
    async fn create_upload(&self, repo: &RepoName, id: &str, hash_state: &[u8]) -> Result<()>;
    /// The upload session, if it exists in this repository.
    async fn upload(&self, repo: &RepoName, id: &str) -> Result<Option<UploadRow>>;
    /// Records a stored part and the new hash state, if the session is still at `expected_offset`.
    async fn advance_upload(
        &self,
        id: &str,
        expected_offset: u64,
        part: &UploadPart,
        hash_state: &[u8],
    ) -> Result<bool>;
    /// Deletes the session and returns it (with its parts), if it existed in this repository.
    async fn delete_upload(&self, repo: &RepoName, id: &str) -> Result<Option<UploadRow>>;
    /// Ends the session (if still at `expected_offset`) and records the verified blob, linked to
    /// the repository, in one transaction. Whether an existing blob row is reused is decided in
    /// that transaction. `None` when the session is gone or has moved on. The session's objects
    /// that no row refers to afterwards are queued for deletion with the change.
    async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        expected_offset: u64,
        blob: &NewBlob,
    ) -> Result<Option<BlobCommit>>;

    /// Stores a manifest, its references and its tag in one transaction.
    async fn put_manifest(&self, repo: &RepoName, manifest: &NewManifest) -> Result<PutManifest>;
    /// A manifest by tag or digest.
    async fn manifest(&self, repo: &RepoName, reference: &Reference)
    -> Result<Option<ManifestRow>>;
    /// Removes a tag; `false` when it did not exist.
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// Deletes a manifest and every tag pointing at it, unless an index references it.
    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Delete>;
    /// Tags after `after` in lexical order, at most `limit`; `None` when the repository is unknown.
    async fn list_tags(
        &self,
        repo: &RepoName,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Option<Vec<String>>>;
    /// Manifests whose subject is `subject`; `None` when the repository is unknown.
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<ReferrerRow>>>;

    /// Runs one operation of the work queue, the leases or the change log (`meta::queue`), in
    /// the transaction kind it needs. The typed methods below are the way to call it.
    async fn queue(&self, op: Op) -> Result<Out>;

    /// The database's clock in milliseconds since the Unix epoch: the one clock of leases and
    /// claims, so nodes with skewed clocks still agree.
    async fn database_now(&self) -> Result<i64> {
        match self.queue(Op::Now).await? {
            Out::Int(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// Enqueues work outside a write (writes enqueue through their change records).
    async fn enqueue_work(&self, items: Vec<NewWork>, now: i64) -> Result<()> {
        self.queue(Op::Enqueue { items, now }).await.map(|_| ())
    }

    /// Claims at most `limit` due items of `topic` for `holder` until `now + lease_ms`. Concurrent
    /// claimers never get the same item while its claim lasts.
    async fn claim_work(
        &self,
        topic: &str,
        holder: &str,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<WorkItem>> {
        let op = Op::Claim {
            topic: topic.to_owned(),
            holder: holder.to_owned(),
            now,
            lease_ms,
            limit,
        };
        match self.queue(op).await? {
            Out::Items(items) => Ok(items),
            other => Err(unexpected(&other)),
        }
    }

    /// Completes a claimed item; `false` when it was re-armed meanwhile (it runs again).
    async fn complete_work(&self, item: &WorkItem, holder: &str) -> Result<bool> {
        let op = Op::Complete {
            item: item.clone(),
            holder: holder.to_owned(),
        };
        match self.queue(op).await? {
            Out::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Records a failed attempt: due again at `retry_at`, or buried when `None`.
    async fn fail_work(
        &self,
        item: &WorkItem,
        holder: &str,
        now: i64,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<()> {
        let op = Op::Fail {
            item: item.clone(),
            holder: holder.to_owned(),
            now,
            error: error.to_owned(),
            retry_at,
        };
        self.queue(op).await.map(|_| ())
    }

    /// Depth, oldest age and dead letters per topic.
    async fn queue_stats(&self, now: i64) -> Result<Vec<TopicStats>> {
        match self.queue(Op::Stats { now }).await? {
            Out::Stats(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Dead letters in (topic, key) order after `after`, at most `limit`.
    async fn buried_work(
        &self,
        topic: Option<&str>,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<BuriedItem>> {
        let op = Op::Buried {
            topic: topic.map(str::to_owned),
            after,
            limit,
        };
        match self.queue(op).await? {
            Out::Buried(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Makes a dead letter due again; `false` when there is none under that topic and key.
    async fn requeue_work(&self, topic: &str, key: &str, now: i64) -> Result<bool> {
        let op = Op::Requeue {
            topic: topic.to_owned(),
            key: key.to_owned(),
            now,
        };
        match self.queue(op).await? {
            Out::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Takes the lease `name` for `holder` until `now + ttl_ms` when it is free, expired or
    /// already `holder`'s (a renewal); `true` when `holder` holds it afterwards. Exactly one of
    /// several concurrent callers wins a free lease.
    async fn try_acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool> {
        let op = Op::AcquireLease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            now,
            ttl_ms,
        };
        match self.queue(op).await? {
            Out::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Gives up `holder`'s lease (on shutdown).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let op = Op::ReleaseLease {
            name: name.to_owned(),
            holder: holder.to_owned(),
        };
        self.queue(op).await.map(|_| ())
    }

    /// Deletes change records older than `before`, at most `limit`; how many went.
    async fn prune_changes(&self, before: i64, limit: u32) -> Result<u64> {
        match self.queue(Op::PruneChanges { before, limit }).await? {
            Out::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            other => Err(unexpected(&other)),
        }
    }

    /// The newest change records, newest first.
    async fn recent_changes(&self, limit: u32) -> Result<Vec<Change>> {
        match self.queue(Op::RecentChanges { limit }).await? {
            Out::Changes(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }
    /// Deletes a repository's tags, manifests, links, grants and upload sessions and the
    /// repository itself, queueing the sessions' stored objects for deletion (blobs stay for
    /// garbage collection); `false` when unknown.
    async fn delete_repository(&self, repo: &RepoName) -> Result<bool>;

    /// The id of the cluster this database belongs to, created (from `candidate`) by the first
    /// caller ever; every later caller, concurrent ones included, gets that same id.
    async fn cluster_id(&self, candidate: &str) -> Result<String>;
    /// Upload sessions last advanced before `before` (milliseconds), oldest first, at most `limit`.
    async fn stale_uploads(&self, before: i64, limit: u32) -> Result<Vec<StaleUpload>>;
    /// Deletes an upload session and its parts if it still has not advanced since `before`;
    /// `true` when it was deleted. A session that moved on in the meantime is kept.
    async fn delete_stale_upload(&self, id: &str, before: i64) -> Result<bool>;

    /// Starts an upload session for `owner` (creating the repository) unless `owner` already has
    /// `max_active` sessions that advanced at or after `active_since` (milliseconds). SQLite
    /// counts and inserts in one transaction (exact); PostgreSQL counts in a snapshot before the
    /// insert, so that concurrent sessions of one user never abort each other, and starts racing
    /// at the boundary may overshoot it by their number.
    async fn create_upload_bounded(
        &self,
        repo: &RepoName,
        id: &str,
        hash_state: &[u8],
        owner: &str,
        active_since: i64,
        max_active: u64,
    ) -> Result<UploadAdmission>;
    /// The session's offset, hash state and part count, without reading its parts.
    async fn upload_progress(&self, repo: &RepoName, id: &str) -> Result<Option<UploadProgress>>;
}

fn unexpected(out: &Out) -> Error {
    Error::Corrupt(format!("the queue answered {out:?} to another question"))
}

/// Milliseconds since the Unix epoch, the time unit of stored timestamps.
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
