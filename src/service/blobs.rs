//! Blob reads and deletes.

use std::ops::Range;

use futures::{StreamExt, TryStreamExt};

use super::caching::{CachedBlob, RegistryCaches};
use super::{Error, Registry, Result};
use crate::meta::{BlobRow, Delete};
use crate::oci::{Digest, RepoName};
use crate::storage::ByteStream;

/// A blob being read.
pub struct BlobRead {
    /// The blob's metadata.
    pub blob: BlobRow,
    /// The range served, when a range was asked for.
    pub range: Option<Range<u64>>,
    /// The bytes.
    pub body: ByteStream,
}

impl Registry {
    /// A blob's metadata, answered from the metadata store alone (for HEAD).
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobRow> {
        let key = RegistryCaches::object_key(repo, digest);
        self.caches
            .blobs
            .get_or_load(&key, || async {
                Ok::<_, Error>(
                    self.meta
                        .blob_in_repo(repo, digest)
                        .await?
                        .map(CachedBlob::from),
                )
            })
            .await?
            .and_then(CachedBlob::into_row)
            .ok_or_else(|| Error::BlobUnknown(digest.clone()))
    }

    /// Where the client may download a blob directly (a presigned storage URL), after the same
    /// repository-link check as [`Registry::read_blob`]; `None` when the node serves the bytes.
    pub async fn blob_download_url(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>> {
        let blob = self.stat_blob(repo, digest).await?;
        Ok(self.storage.download_url(&blob.storage_key).await?)
    }

    /// Streams a blob, or the byte range `range` (inclusive start, exclusive end) of it.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobRead> {
        let blob = self.stat_blob(repo, digest).await?;
        let range = match range {
            None => None,
            Some(r) => Some(
                r.resolve(blob.size)
                    .ok_or(Error::RangeInvalid { size: blob.size })?,
            ),
        };
        let body = self.storage.read(&blob.storage_key, range.clone()).await?;
        let body = body
            .inspect_ok(|chunk| {
                metrics::counter!("aerugo_blob_bytes_downloaded_total")
                    .increment(chunk.len() as u64);
            })
            .boxed();
        Ok(BlobRead { blob, range, body })
    }

    /// Unlinks a blob from a repository. Refused while a manifest there references it, so a
    /// committed manifest never points at a blob its repository cannot serve.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.ensure_delete_enabled()?;
        let (repo, digest) = (repo.clone(), digest.clone());
        self.detached(move |r| async move {
            match r.meta.unlink_blob(&repo, &digest).await? {
                Delete::Deleted => {
                    r.caches.blob_unlinked(&repo, &digest).await;
                    Ok(())
                }
                Delete::NotFound => Err(Error::BlobUnknown(digest.clone())),
                Delete::Referenced(by) => Err(Error::Conflict(format!(
                    "blob is referenced by manifest {}; delete the manifest first",
                    by.first().map(Digest::as_str).unwrap_or_default()
                ))),
            }
        })
        .await
    }
}

/// A single byte range as a client asks for it (RFC 9110 `bytes=` ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-last` (inclusive) or `first-` (`last` is `None`).
    From {
        /// First byte.
        first: u64,
        /// Last byte, inclusive.
        last: Option<u64>,
    },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Turns the range into `start..end` for a blob of `size` bytes; `None` if unsatisfiable.
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::From { first, last } => {
                if first >= size {
                    return None;
                }
                let end = last.map_or(size, |l| l.saturating_add(1).min(size));
                (end > first).then_some(first..end)
            }
            ByteRange::Suffix(n) => (n > 0 && size > 0).then(|| size.saturating_sub(n)..size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_rfc_9110() {
        let r = |first, last| ByteRange::From { first, last };
        assert_eq!(r(0, Some(9)).resolve(100), Some(0..10));
        assert_eq!(r(90, Some(200)).resolve(100), Some(90..100));
        assert_eq!(r(10, None).resolve(100), Some(10..100));
        assert_eq!(r(100, None).resolve(100), None);
        assert_eq!(r(5, Some(4)).resolve(100), None);
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(r(0, None).resolve(0), None);
    }
}
