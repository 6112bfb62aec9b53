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
use crate::meta::{BlobCommit, BlobRow, NewBlob, UploadPart, UploadRow};
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

    /// Starts an upload session.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadStatus> {
        self.start_upload_with(repo, DigestAlgorithm::Sha256).await
    }

    async fn start_upload_with(
        &self,
        repo: &RepoName,
        alg: DigestAlgorithm,
    ) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        self.meta
            .create_upload(repo, &id, &Hasher::new(alg).save())
            .await?;
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
        let row = self.load_upload(repo, id).await?;
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
        let row = self.load_upload(repo, id).await?;
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
        let written = self.write_part(&row, expected, body).await?;
        let offset = match written {
            Some((part, hasher)) => self.record_part(repo, &row, part, &hasher).await?,
            None => row.offset,
        };
        Ok(UploadStatus { id: row.id, offset })
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
        let mut hasher = restore_hasher(&row)?;
        if let Some((part, h)) = self.write_part(&row, content_length, body).await? {
            row.offset = self.record_part(repo, &row, part.clone(), &h).await?;
            row.parts.push(part);
            hasher = h;
        }
        self.finish(repo, row, hasher, digest).await
    }

    /// A monolithic upload in one request (`POST ?digest=`).
    pub async fn upload_blob<B, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        content_length: Option<u64>,
        body: B,
    ) -> Result<BlobRow>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let status = self.start_upload_with(repo, digest.algorithm()).await?;
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
    async fn write_part<B, E>(
        &self,
        row: &UploadRow,
        expected: Option<u64>,
        mut body: B,
    ) -> Result<Option<(UploadPart, Hasher)>>
    where
        B: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut hasher = restore_hasher(row)?;
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
        let key = Storage::part_key(&row.id, row.offset);
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
        row: &UploadRow,
        part: UploadPart,
        hasher: &Hasher,
    ) -> Result<u64> {
        let new_offset = part.start.checked_add(part.size).ok_or_else(|| {
            Error::SizeInvalid("the upload would exceed the largest blob size".into())
        })?;
        if self
            .meta
            .advance_upload(&row.id, row.offset, &part, &hasher.save())
            .await?
        {
            Ok(new_offset)
        } else {
            self.storage.delete(&part.storage_key).await?;
            match self.meta.upload(repo, &row.id).await? {
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
        if digest.algorithm() != algorithm_of(&hasher) {
            return Err(Error::DigestInvalid(format!(
                "this upload was hashed with {}; a {} digest cannot be verified",
                algorithm_of(&hasher).as_str(),
                digest.algorithm().as_str()
            )));
        }
        let computed = hasher.finish();
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
    Hasher::restore(&row.hash_state).ok_or_else(|| {
        Error::Internal(anyhow::anyhow!(
            "upload {} has an unreadable hash state",
            row.id
        ))
    })
}

fn algorithm_of(h: &Hasher) -> DigestAlgorithm {
    match h {
        Hasher::Sha256(_) => DigestAlgorithm::Sha256,
        Hasher::Sha512(_) => DigestAlgorithm::Sha512,
    }
}
