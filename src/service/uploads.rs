//! Blob uploads: sessions, chunks, completion, cancellation and cross-repository mounts.
//!
//! No upload state lives in process memory: the session row holds the byte offset and the
//! serialized hash state, and each chunk is its own stored object, so any node (or a restarted one)
//! can take the next chunk. A chunk is accepted only by a compare-and-set on the offset it started
//! from. A blob becomes visible only after its digest is verified, in the same transaction that
//! ends the session.

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::access::Action;
use super::{Error, Principal, Registry, Result};
use crate::meta::{BlobCommit, BlobRow, NewBlob, UploadAdmission, UploadPart, UploadRow};
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepoName};
use crate::storage::Storage;

/// Where an upload session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadStatus {
    /// Session id.
    pub id: String,
    /// Bytes accepted so far.
    pub offset: u64,
}

/// A `Content-Range` of a chunk: first and last byte, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRange {
    /// First byte.
    pub first: u64,
    /// Last byte, inclusive.
    pub last: u64,
}

fn body_error(e: impl std::fmt::Display) -> Error {
    Error::UploadInvalid(format!("reading the request body failed: {e}"))
}

fn valid_upload_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

/// Sessions the purge reads per query; it queries again until none are left.
const PURGE_BATCH: u32 = 500;

/// Where the next chunk of a session goes: what writing and recording a part needs, and no more.
struct Cursor<'a> {
    id: &'a str,
    offset: u64,
    hash_state: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn of(row: &'a UploadRow) -> Self {
        Cursor {
            id: &row.id,
            offset: row.offset,
            hash_state: &row.hash_state,
        }
    }
}

impl Registry {
    /// Deletes every upload session that has not received a chunk for `max_age` (measured on
    /// `now`, the database clock); returns how many sessions went. Each session row goes in a
    /// transaction that checks it is still idle (so a session that moves on meanwhile is kept)
    /// and queues its stored objects for deletion; a chunk that lands after the purge finds its
    /// session gone and deletes its own part. A finished upload has no session left, so its blob
    /// (which may live under the upload's prefix) is never touched.
    pub async fn purge_abandoned_uploads(
        &self,
        now: i64,
        max_age: std::time::Duration,
    ) -> Result<u64> {
        let age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(age_ms);
        let mut purged = 0;
        loop {
            let stale = self.meta.stale_uploads(cutoff, PURGE_BATCH).await?;
            let batch = stale.len();
            for upload in stale {
                if !self.meta.delete_stale_upload(&upload.id, cutoff).await? {
                    continue;
                }
                purged += 1;
                metrics::counter!("aerugo_upload_sessions_total", "event" => "purged").increment(1);
                tracing::info!(
                    repository = %upload.repo,
                    upload = %upload.id,
                    idle_s = (now - upload.updated_at) / 1000,
                    "purged an abandoned upload"
                );
            }
            if purged > 0 {
                self.work_queued();
            }
            if batch < PURGE_BATCH as usize {
                return Ok(purged);
            }
        }
    }

    /// Starts an upload session for `principal` whose content is hashed with `alg` (the client
    /// declares it with `digest-algorithm`; sha256 otherwise). A user who already has
    /// `registry.max_active_uploads_per_user` recently active sessions gets `TooManyRequests`,
    /// with the time until the oldest of them stops counting.
    pub async fn start_upload(
        &self,
        principal: &Principal,
        repo: &RepoName,
        alg: DigestAlgorithm,
    ) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let state = Hasher::new(alg).save();
        let max = self.settings.max_active_uploads_per_user;
        match upload_owner(principal) {
            Some(owner) if max > 0 => {
                let window = i64::try_from(self.settings.active_upload_window.as_millis())
                    .unwrap_or(i64::MAX);
                let now = crate::meta::now_millis();
                let since = now.saturating_sub(window);
                let admission = self
                    .meta
                    .create_upload_bounded(repo, &id, &state, owner, since, max)
                    .await?;
                if let UploadAdmission::Full { oldest_updated_at } = admission {
                    let wait_ms = oldest_updated_at.saturating_add(window).saturating_sub(now);
                    let secs = wait_ms.saturating_add(999) / 1000;
                    let retry_after_secs = u64::try_from(secs).unwrap_or(0).max(1);
                    metrics::counter!("aerugo_upload_sessions_total", "event" => "refused")
                        .increment(1);
                    tracing::info!(
                        repo.name = %repo,
                        user = %owner,
                        max_active = max,
                        "upload refused: too many active upload sessions"
                    );
                    return Err(Error::TooManyRequests { retry_after_secs });
                }
            }
            _ => self.meta.create_upload(repo, &id, &state).await?,
        }
        self.init_visibility(repo).await?;
        metrics::counter!("aerugo_upload_sessions_total", "event" => "started").increment(1);
        tracing::debug!(repo.name = %repo, upload.id = %id, "upload started");
        Ok(UploadStatus { id, offset: 0 })
    }

    /// Links a blob that `from` holds into `repo`, if the caller may pull from `from`.
    /// `None` means the blob cannot be mounted and the client should upload it.
    pub async fn mount_blob(
        &self,
        principal: &Principal,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRow>> {
        if self.authorize(principal, from, Action::Pull).await.is_err() {
            // Whether the source exists is not the caller's business: fall back to an upload.
            return Ok(None);
        }
        let mounted = self.meta.mount_blob(from, repo, digest).await?;
        if mounted.is_some() {
            self.init_visibility(repo).await?;
        }
        Ok(mounted)
    }

    async fn load_upload(&self, repo: &RepoName, id: &str) -> Result<UploadRow> {
        if !valid_upload_id(id) {
            return Err(Error::UploadUnknown);
        }
        self.meta
            .upload(repo, id)
            .await?
            .ok_or(Error::UploadUnknown)
    }

    /// The state of an upload session.
    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadStatus> {
        if !valid_upload_id(id) {
            return Err(Error::UploadUnknown);
        }
        let row = self
            .meta
            .upload_progress(repo, id)
            .await?
            .ok_or(Error::UploadUnknown)?;
        Ok(UploadStatus {
            id: row.id,
            offset: row.offset,
        })
    }

    /// Cancels an upload session and deletes what it stored.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        if !valid_upload_id(id) {
            return Err(Error::UploadUnknown);
        }
        // The session's objects are queued for deletion in the same transaction.
        self.meta
            .delete_upload(repo, id)
            .await?
            .ok_or(Error::UploadUnknown)?;
        self.work_queued();
        metrics::counter!("aerugo_upload_sessions_total", "event" => "cancelled").increment(1);
        Ok(())
    }

    /// Appends a chunk. With a `range`, the chunk must start at the session's offset (416
    /// otherwise) and be exactly as long as the range says; without one it is appended (streamed).
    pub async fn append_upload<B, E>(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<ChunkRange>,
        content_length: Option<u64>,
        body: B,
    ) -> Result<UploadStatus>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        // Only the session's head and part count: a chunk never reads the parts before it.
        if !valid_upload_id(id) {
            return Err(Error::UploadUnknown);
        }
        let row = self
            .meta
            .upload_progress(repo, id)
            .await?
            .ok_or(Error::UploadUnknown)?;
        let cursor = Cursor {
            id: &row.id,
            offset: row.offset,
            hash_state: &row.hash_state,
        };
        let expected = match range {
            Some(r) => {
                if r.first != row.offset {
                    return Err(Error::RangeNotSatisfiable { offset: row.offset });
                }
                if r.last < r.first {
                    return Err(Error::RangeNotSatisfiable { offset: row.offset });
                }
                // `0-18446744073709551615` names 2^64 bytes: no u64 holds that, nor can a session.
                let len = (r.last - r.first)
                    .checked_add(1)
                    .ok_or(Error::RangeNotSatisfiable { offset: row.offset })?;
                if content_length.is_some_and(|cl| cl != len) {
                    return Err(Error::SizeInvalid(format!(
                        "Content-Length does not match Content-Range ({len} bytes)"
                    )));
                }
                Some(len)
            }
            None => content_length,
        };
        let room = row.parts < self.settings.max_upload_parts;
        let written = self.write_part(&cursor, room, expected, body).await?;
        let offset = match written {
            Some((part, hasher)) => self.record_part(repo, &cursor, part, &hasher).await?,
            None => row.offset,
        };
        Ok(UploadStatus {
            id: row.id.clone(),
            offset,
        })
    }

    /// Completes an upload with an optional last chunk, verifies `digest`, and records the blob.
    pub async fn complete_upload<B, E>(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        content_length: Option<u64>,
        body: B,
    ) -> Result<BlobRow>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut row = self.load_upload(repo, id).await?;
        if row.offset == 0 && algorithm_of(&restore_hasher(&row)?) != digest.algorithm() {
            // Nothing hashed yet (a single-request upload: POST, then PUT with the whole blob):
            // hash with the digest's algorithm from the first byte. The new state is stored by the
            // same compare-and-set that records the part.
            row.hash_state = Hasher::new(digest.algorithm()).save();
        }
        let mut hasher = restore_hasher(&row)?;
        let room = (row.parts.len() as u64) < self.settings.max_upload_parts;
        let written = self
            .write_part(&Cursor::of(&row), room, content_length, body)
            .await?;
        if let Some((part, h)) = written {
            row.offset = self
                .record_part(repo, &Cursor::of(&row), part.clone(), &h)
                .await?;
            row.parts.push(part);
            hasher = h;
        }
        self.finish(repo, row, hasher, digest).await
    }

    /// A monolithic upload in one request (`POST ?digest=`).
    pub async fn upload_blob<B, E>(
        &self,
        principal: &Principal,
        repo: &RepoName,
        digest: &Digest,
        content_length: Option<u64>,
        body: B,
    ) -> Result<BlobRow>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let status = self
            .start_upload(principal, repo, digest.algorithm())
            .await?;
        match self
            .complete_upload(repo, &status.id, digest, content_length, body)
            .await
        {
            Ok(blob) => Ok(blob),
            Err(e) => {
                // The session was never shown to the client: nothing may outlive the failure.
                if let Err(cleanup) = self.cancel_upload(repo, &status.id).await {
                    tracing::warn!(upload.id = %status.id, error = %cleanup, "cleanup of failed upload");
                }
                Err(e)
            }
        }
    }

    /// Streams `body` into a new part object while hashing. `None` when the body was empty.
    /// Without `room` for another part (`registry.max_upload_parts`, at most S3's 10,000), a
    /// non-empty body is refused with 400 `BLOB_UPLOAD_INVALID` before anything is stored; the
    /// session stays as it was, so the client may still finish it.
    async fn write_part<B, E>(
        &self,
        row: &Cursor<'_>,
        room: bool,
        expected: Option<u64>,
        mut body: B,
    ) -> Result<Option<(UploadPart, Hasher)>>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut hasher = restore_state(row.id, row.hash_state)?;
        let mut first = None;
        // Skip leading empty frames so an empty body creates no object.
        while let Some(frame) = body.next().await {
            let frame = frame.map_err(body_error)?;
            if !frame.is_empty() {
                first = Some(frame);
                break;
            }
        }
        let Some(first) = first else {
            if expected.is_some_and(|n| n != 0) {
                return Err(Error::SizeInvalid(
                    "the request body is shorter than announced".into(),
                ));
            }
            return Ok(None);
        };
        if !room {
            return Err(Error::UploadInvalid(format!(
                "an upload session holds at most {} chunks; send larger chunks, or finish this \
                 upload with a PUT without a body",
                self.settings.max_upload_parts
            )));
        }
        let key = Storage::part_key(row.id, row.offset);
        let mut writer = self.storage.writer(&key).await?;
        let mut size = 0u64;
        let mut next = Some(Ok(first));
        while let Some(frame) = next {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(body_error(e));
                }
            };
            size = size.saturating_add(frame.len() as u64);
            if expected.is_some_and(|n| size > n) {
                let _ = writer.abort().await;
                return Err(Error::SizeInvalid(
                    "the request body is longer than announced".into(),
                ));
            }
            hasher.update(&frame);
            if let Err(e) = writer.write(frame).await {
                let _ = writer.abort().await;
                return Err(e.into());
            }
            next = body.next().await;
        }
        if expected.is_some_and(|n| size != n) {
            let _ = writer.abort().await;
            return Err(Error::SizeInvalid(
                "the request body is shorter than announced".into(),
            ));
        }
        writer.finish().await?;
        metrics::counter!("aerugo_blob_bytes_uploaded_total").increment(size);
        let part = UploadPart {
            start: row.offset,
            size,
            storage_key: key,
        };
        Ok(Some((part, hasher)))
    }

    /// Records a written part with a compare-and-set on the session's offset; returns the new
    /// offset. When another request moved the session first, the part is dropped and 416 returned.
    async fn record_part(
        &self,
        repo: &RepoName,
        row: &Cursor<'_>,
        part: UploadPart,
        hasher: &Hasher,
    ) -> Result<u64> {
        let new_offset = part.start.checked_add(part.size).ok_or_else(|| {
            Error::SizeInvalid("the upload would exceed the largest blob size".into())
        })?;
        if self
            .meta
            .advance_upload(row.id, row.offset, &part, &hasher.save())
            .await?
        {
            Ok(new_offset)
        } else {
            self.storage.delete(&part.storage_key).await?;
            match self.meta.upload_progress(repo, row.id).await? {
                Some(now) => Err(Error::RangeNotSatisfiable { offset: now.offset }),
                None => Err(Error::UploadUnknown),
            }
        }
    }

    async fn finish(
        &self,
        repo: &RepoName,
        row: UploadRow,
        hasher: Hasher,
        digest: &Digest,
    ) -> Result<BlobRow> {
        let computed = if digest.algorithm() == algorithm_of(&hasher) {
            hasher.finish()
        } else {
            // The client never declared this algorithm: verify by reading the stored parts again
            // (streamed). Only such uploads pay for the second pass; declared ones hash once.
            self.rehash_parts(&row, digest.algorithm()).await?
        };
        if &computed != digest {
            // The data goes with the session (queued in its transaction): a mismatched upload
            // leaves nothing behind.
            self.meta.delete_upload(repo, &row.id).await?;
            self.work_queued();
            metrics::counter!("aerugo_upload_sessions_total", "event" => "digest_mismatch")
                .increment(1);
            return Err(Error::DigestInvalid(format!(
                "provided digest {digest} does not match the uploaded content ({computed})"
            )));
        }
        let size = row.offset;
        let mut blob = NewBlob {
            digest: digest.clone(),
            size,
            storage_key: None,
        };
        // First ask the store to reuse an existing blob (decided inside its transaction); only
        // when there is none are the bytes assembled, then the finish is asked again with them.
        let mut committed = self
            .meta
            .finish_upload(repo, &row.id, row.offset, &blob)
            .await?;
        if committed == Some(BlobCommit::NeedsBytes) {
            let key = match self.assemble(&row).await {
                Ok(key) => key,
                // Another finish of this session won meanwhile and its objects went.
                Err(_) if self.meta.upload(repo, &row.id).await?.is_none() => {
                    return Err(Error::UploadUnknown);
                }
                Err(e) => return Err(e),
            };
            blob.storage_key = Some(key.clone());
            committed = self
                .meta
                .finish_upload(repo, &row.id, row.offset, &blob)
                .await?;
            if committed.is_none() && row.parts.len() > 1 {
                // This finish lost to another one: its joined object (a key of its own) is
                // referred to by nothing.
                self.storage.delete(&key).await?;
            }
        }
        if committed.is_some() {
            metrics::counter!("aerugo_upload_sessions_total", "event" => "completed").increment(1);
        }
        match committed {
            None | Some(BlobCommit::NeedsBytes) => Err(Error::UploadUnknown),
            Some(BlobCommit::Inserted) => {
                if row.parts.len() > 1 {
                    // The parts were queued for deletion with the commit.
                    self.work_queued();
                }
                tracing::info!(repo.name = %repo, blob.digest = %digest, size_bytes = size, "blob stored");
                Ok(BlobRow {
                    digest: blob.digest,
                    size,
                    storage_key: blob.storage_key.unwrap_or_default(),
                })
            }
            Some(BlobCommit::AlreadyPresent(existing)) => {
                self.work_queued();
                Ok(existing)
            }
        }
    }

    /// Hashes the stored parts of `row` in order with `alg`, streaming them from storage.
    async fn rehash_parts(&self, row: &UploadRow, alg: DigestAlgorithm) -> Result<Digest> {
        let mut hasher = Hasher::new(alg);
        for part in &row.parts {
            let mut body = self.storage.read(&part.storage_key, None).await?;
            while let Some(chunk) = body.next().await {
                hasher.update(&chunk.map_err(|e| Error::Internal(e.into()))?);
            }
        }
        Ok(hasher.finish())
    }

    /// Produces the single object holding the whole blob: the only part as is, or the parts
    /// joined in order into a new object of this finish's own (by the backend: in the kernel on `fs`, streamed through
    /// the node elsewhere, never buffered whole).
    async fn assemble(&self, row: &UploadRow) -> Result<String> {
        match row.parts.as_slice() {
            [only] => Ok(only.storage_key.clone()),
            parts => {
                let key = Storage::joined_key(&row.id);
                let keys: Vec<String> = parts.iter().map(|p| p.storage_key.clone()).collect();
                self.storage.concat(&keys, &key).await?;
                Ok(key)
            }
        }
    }
}

fn restore_hasher(row: &UploadRow) -> Result<Hasher> {
    restore_state(&row.id, &row.hash_state)
}

fn restore_state(id: &str, state: &[u8]) -> Result<Hasher> {
    Hasher::restore(state)
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("upload {id} has an unreadable hash state")))
}

/// Whose sessions an upload counts against: the user behind the credentials (a token's subject
/// or a user's name). `None` for callers without a name, who cannot push anyway.
fn upload_owner(principal: &Principal) -> Option<&str> {
    match principal {
        Principal::Anonymous => None,
        Principal::Token { identity, .. } => identity.as_ref().map(|i| i.username.as_str()),
        Principal::User(identity) => Some(identity.username.as_str()),
    }
}

fn algorithm_of(h: &Hasher) -> DigestAlgorithm {
    match h {
        Hasher::Sha256(_) => DigestAlgorithm::Sha256,
        Hasher::Sha512(_) => DigestAlgorithm::Sha512,
    }
}
