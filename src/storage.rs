//! The registry's key layout on top of an `aerugo_storage::BlobStore`.
//!
//! Layout: every upload writes its parts under `objects/<upload-id>/`; a verified blob keeps the key
//! it was written to (recorded in the `blobs` row), so finishing a one-part upload moves no bytes.
//! Multi-part uploads are joined into `objects/<upload-id>/joined`. Nothing here knows tenants,
//! manifests or SQL; only this module imports `aerugo_storage`.

use std::ops::Range;
use std::sync::Arc;

use aerugo_storage::{BlobStore, ObjectWriter, OpendalStore, S3Options};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::config::{ConfigError, StorageConfig, StorageType};

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
    /// The storage settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    /// How long download URLs stay valid; `None` when downloads are served by the node.
    redirect_expiry: Option<std::time::Duration>,
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
            StorageType::S3 => {
                let credentials = config.s3_credentials()?;
                OpendalStore::s3(&S3Options {
                    bucket: config.bucket.clone(),
                    region: config.region.clone(),
                    endpoint: config.endpoint.clone(),
                    path_style: config.path_style,
                    prefix: config.prefix.clone(),
                    access_key_id: credentials.access_key_id,
                    secret_access_key: credentials.secret_access_key.expose().to_owned(),
                    public_endpoint: config.public_endpoint.clone(),
                })?
            }
        };
        let redirect_expiry = (config.kind == StorageType::S3 && config.redirect)
            .then(|| std::time::Duration::from_secs(config.presign_expiry_seconds));
        Ok(Self {
            store: store.shared(),
            redirect_expiry,
        })
    }

    /// A URL from which a client may download `key` itself, when the backend presigns URLs and
    /// redirects are on; `None` when the node should stream the object.
    pub async fn download_url(&self, key: &str) -> Result<Option<String>> {
        let Some(expiry) = self.redirect_expiry else {
            return Ok(None);
        };
        let start = std::time::Instant::now();
        let url = self.store.presign_read(key, expiry).await;
        observe("presign_read", start, &url);
        Ok(url?)
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

    /// A fresh key for a multi-part upload's joined object. Every finish joins into a key of
    /// its own, so two finishes of one session never write the same object (the loser would
    /// otherwise overwrite a blob the winner committed).
    pub fn joined_key(upload_id: &str) -> String {
        let nonce: u64 = rand::random();
        format!("objects/{upload_id}/joined-{nonce:016x}")
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

    /// Joins the objects `parts`, in order, into the new object `dest`; returns its size.
    pub async fn concat(&self, parts: &[String], dest: &str) -> Result<u64> {
        let start = std::time::Instant::now();
        let result = self.store.concat(parts, dest).await;
        observe("concat", start, &result);
        Ok(result?)
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

    /// The objects stored under an upload's prefix (tests: what a discard left behind).
    #[cfg(test)]
    pub(crate) async fn upload_objects(&self, upload_id: &str) -> Result<Vec<String>> {
        Ok(self.store.list(&Self::upload_prefix(upload_id)).await?)
    }

    /// Checks that the backend answers.
    pub async fn check(&self) -> Result<()> {
        Ok(self.store.check().await?)
    }
}
