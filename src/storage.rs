//! The registry's key layout on top of an `aerugo_storage::BlobStore`.
//!
//! Layout: every upload writes its parts under `objects/<upload-id>/`; a verified blob keeps the key
//! it was written to (recorded in the `blobs` row), so finishing a one-part upload moves no bytes.
//! Multi-part uploads are joined into `objects/<upload-id>/joined`. Nothing here knows tenants,
//! manifests or SQL; only this module imports `aerugo_storage`.

use std::ops::Range;
use std::sync::Arc;

use aerugo_storage::{BlobStore, ObjectWriter, OpendalStore};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::config::{StorageConfig, StorageType};

/// A stream of blob bytes; I/O errors end it.
pub type ByteStream = BoxStream<'static, std::result::Result<Bytes, std::io::Error>>;

/// Errors of blob storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A recorded object is missing from storage.
    #[error("object {0} is missing from blob storage")]
    Missing(String),
    /// The storage root directory cannot be created.
    #[error("cannot create storage root {path}: {source}")]
    Root {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] aerugo_storage::Error),
}

/// A result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The registry's view of blob storage.
#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn BlobStore>,
}

/// An object being written.
pub struct Writer {
    inner: Box<dyn ObjectWriter>,
}

impl Writer {
    /// Appends bytes.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        Ok(self.inner.write(data).await?)
    }

    /// Completes the object; returns its size.
    pub async fn finish(self) -> Result<u64> {
        let start = std::time::Instant::now();
        let result = self.inner.finish().await;
        observe("finish_write", start, &result);
        Ok(result?)
    }

    /// Abandons the object.
    pub async fn abort(self) -> Result<()> {
        Ok(self.inner.abort().await?)
    }
}

/// Records the latency and outcome of one storage operation.
fn observe<T, E>(op: &'static str, start: std::time::Instant, result: &std::result::Result<T, E>) {
    metrics::histogram!("aerugo_storage_operation_duration_seconds", "op" => op)
        .record(start.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("aerugo_storage_errors_total", "op" => op).increment(1);
    }
}

impl Storage {
    /// Opens the backend the configuration names.
    pub fn from_config(config: &StorageConfig) -> Result<Self> {
        let store = match config.kind {
            StorageType::Fs => {
                std::fs::create_dir_all(&config.root).map_err(|source| Error::Root {
                    path: config.root.display().to_string(),
                    source,
                })?;
                OpendalStore::fs(&config.root)?
            }
            StorageType::Memory => OpendalStore::memory()?,
        };
        Ok(Self {
            store: store.shared(),
        })
    }

    /// The directory holding an upload's objects.
    pub fn upload_prefix(upload_id: &str) -> String {
        format!("objects/{upload_id}/")
    }

    /// A fresh key for a part of an upload starting at `offset`. The random suffix keeps two
    /// racing writers of the same chunk from clobbering each other's object.
    pub fn part_key(upload_id: &str, offset: u64) -> String {
        let nonce: u64 = rand::random();
        format!("objects/{upload_id}/{offset:020}-{nonce:016x}")
    }

    /// The key of a multi-part upload's joined object.
    pub fn joined_key(upload_id: &str) -> String {
        format!("objects/{upload_id}/joined")
    }

    /// Starts writing `key`.
    pub async fn writer(&self, key: &str) -> Result<Writer> {
        let start = std::time::Instant::now();
        let inner = self.store.writer(key).await;
        observe("open_writer", start, &inner);
        Ok(Writer { inner: inner? })
    }

    /// Streams `key` or a byte range of it.
    pub async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        let start = std::time::Instant::now();
        let stream = self.store.read(key, range).await;
        observe("open_reader", start, &stream);
        let stream = stream.map_err(|e| match e {
            aerugo_storage::Error::NotFound(k) => Error::Missing(k),
            other => Error::Backend(other),
        })?;
        Ok(stream.map_err(std::io::Error::other).boxed())
    }

    /// Deletes one object.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let start = std::time::Instant::now();
        let result = self.store.delete(key).await;
        observe("delete", start, &result);
        Ok(result?)
    }

    /// Deletes every object of an upload except `keep`.
    pub async fn delete_upload_objects(&self, upload_id: &str, keep: Option<&str>) -> Result<()> {
        let start = std::time::Instant::now();
        let keys = self.store.list(&Self::upload_prefix(upload_id)).await;
        observe("list", start, &keys);
        for key in keys? {
            if Some(key.as_str()) != keep {
                self.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// Checks that the backend answers.
    pub async fn check(&self) -> Result<()> {
        Ok(self.store.check().await?)
    }
}
