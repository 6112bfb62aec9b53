//! `aerugo-storage`: the byte/key contract that every blob backend fulfils, implemented over OpenDAL.
//!
//! This crate knows keys and bytes only: nothing about digests, repositories, tenants or manifests.
//! The registry's key layout lives in the `aerugo` crate (`storage` module) on top of [`BlobStore`].
//!
//! Invariants every backend upholds (checked by the conformance suite in `conformance`):
//! - an object written through an [`ObjectWriter`] becomes readable only after [`ObjectWriter::finish`];
//! - reads stream; no backend call holds a whole object in memory;
//! - deletes are idempotent: deleting a missing key succeeds.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use opendal::{ErrorKind, Operator, services};

pub mod conformance;

/// A stream of object bytes, as read from a backend.
pub type ByteStream = BoxStream<'static, std::result::Result<Bytes, Error>>;

/// Errors of a blob backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// The requested range lies outside the object.
    #[error("range {start}..{end} is outside object {key}")]
    InvalidRange {
        /// The object key.
        key: String,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
    },
    /// The backend failed (I/O, network, credentials, ...).
    #[error("storage backend error: {0}")]
    Backend(#[source] opendal::Error),
}

impl From<opendal::Error> for Error {
    fn from(err: opendal::Error) -> Self {
        Error::Backend(err)
    }
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An object being written. Dropping it without [`ObjectWriter::finish`] leaves no readable object
/// on backends that support atomic writes, and at worst an object under the same key that the caller
/// never recorded anywhere.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes to the object.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Completes the object and returns its size in bytes.
    async fn finish(self: Box<Self>) -> Result<u64>;
    /// Abandons the object.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// The contract of a blob backend: keyed objects, written once, read in ranges, deleted.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug + 'static {
    /// Starts writing the object `key`, replacing any object under that key once finished.
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Streams the object `key`, or the byte range `range` of it.
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream>;
    /// Returns the size of object `key`, or `None` when it does not exist.
    async fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Deletes the object `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Lists the keys under `prefix` (which should end with `/`), recursively.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Checks that the backend is reachable.
    async fn check(&self) -> Result<()>;
}

/// A [`BlobStore`] backed by an OpenDAL operator.
#[derive(Clone)]
pub struct OpendalStore {
    op: Operator,
    kind: &'static str,
}

impl fmt::Debug for OpendalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpendalStore")
            .field("kind", &self.kind)
            .finish()
    }
}

/// Buffer size for backend writes: large enough for efficient I/O, small enough to bound memory.
const WRITE_CHUNK: usize = 8 * 1024 * 1024;

impl OpendalStore {
    /// A store in a local directory. Writes go to a temporary file first and are renamed into place,
    /// so a crash never leaves a half-written object under its final key.
    pub fn fs(root: &Path) -> Result<Self> {
        let root_str = root.to_string_lossy();
        let tmp = root.join(".tmp");
        let builder = services::Fs::default()
            .root(&root_str)
            .atomic_write_dir(&tmp.to_string_lossy());
        Ok(Self {
            op: Operator::new(builder)?.finish(),
            kind: "fs",
        })
    }

    /// A store in process memory, for tests and throwaway registries.
    pub fn memory() -> Result<Self> {
        Ok(Self {
            op: Operator::new(services::Memory::default())?.finish(),
            kind: "memory",
        })
    }

    /// Wraps the store for sharing.
    pub fn shared(self) -> Arc<dyn BlobStore> {
        Arc::new(self)
    }
}

struct OpendalWriter {
    inner: opendal::Writer,
}

#[async_trait]
impl ObjectWriter for OpendalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.inner.write(data).await?;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let meta = self.inner.close().await?;
        Ok(meta.content_length())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.inner.abort().await?;
        Ok(())
    }
}

fn map_not_found(key: &str, err: opendal::Error) -> Error {
    if err.kind() == ErrorKind::NotFound {
        Error::NotFound(key.to_owned())
    } else {
        Error::Backend(err)
    }
}

#[async_trait]
impl BlobStore for OpendalStore {
    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.op.writer_with(key).chunk(WRITE_CHUNK).await?;
        Ok(Box::new(OpendalWriter { inner }))
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        let size = self
            .op
            .stat(key)
            .await
            .map_err(|e| map_not_found(key, e))?
            .content_length();
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(Error::InvalidRange {
                key: key.to_owned(),
                start: range.start,
                end: range.end,
            });
        }
        let reader = self
            .op
            .reader_with(key)
            .chunk(1024 * 1024)
            .await
            .map_err(|e| map_not_found(key, e))?;
        let key = key.to_owned();
        let stream = reader
            .into_bytes_stream(range)
            .await
            .map_err(|e| map_not_found(&key, e))?;
        Ok(stream
            .map_err(|e| Error::Backend(opendal::Error::new(ErrorKind::Unexpected, e.to_string())))
            .boxed())
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self.op.stat(key).await {
            Ok(meta) => Ok(Some(meta.content_length())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.op.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let entries = match self.op.list_with(prefix).recursive(true).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| e.path().to_owned())
            .collect())
    }

    async fn check(&self) -> Result<()> {
        self.op.check().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_conformance() {
        let store = OpendalStore::memory().unwrap().shared();
        conformance::run(store.as_ref()).await;
    }

    #[tokio::test]
    async fn fs_store_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = OpendalStore::fs(dir.path()).unwrap().shared();
        conformance::run(store.as_ref()).await;
    }
}
