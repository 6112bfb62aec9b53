//! Use cases of the registry: push, pull, mount, delete, list, referrers.
//!
//! [`Registry`] is the only place that combines the metadata store and blob storage. Its methods
//! take validated `oci` types (never bare strings for names or digests) and return the closed
//! [`Error`] enum, which `api` maps to HTTP in exactly one place per API.
//! Must not depend on `api` or `app`.

use std::sync::Arc;

use crate::config::Config;
use crate::meta::{self, MetaStore};
use crate::oci::Digest;
use crate::storage::{self, Storage};

pub mod access;
mod blobs;
mod listing;
mod manifests;
mod uploads;

pub use access::{Action, Principal};
pub use blobs::{BlobRead, ByteRange};
pub use listing::Page;
pub use manifests::PushedManifest;
pub use uploads::{ChunkRange, UploadStatus};

/// The domain errors of the registry: a closed set, mapped to HTTP by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository is unknown.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// The repository name is invalid.
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    /// The blob is unknown in this repository.
    #[error("blob unknown to registry")]
    BlobUnknown(Digest),
    /// The upload session is unknown.
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    /// The upload request is invalid.
    #[error("blob upload invalid: {0}")]
    UploadInvalid(String),
    /// A chunk does not start where the upload stands.
    #[error("chunk does not start at the upload's offset {offset}")]
    RangeNotSatisfiable {
        /// Bytes accepted so far.
        offset: u64,
    },
    /// A requested byte range of a blob cannot be served.
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeInvalid {
        /// Blob size.
        size: u64,
    },
    /// A digest is malformed, unsupported or does not match the content.
    #[error("{0}")]
    DigestInvalid(String),
    /// A length does not match the content.
    #[error("{0}")]
    SizeInvalid(String),
    /// The manifest is unknown.
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    /// The manifest is invalid.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// The manifest is larger than the configured limit.
    #[error("manifest is larger than the limit of {limit} bytes")]
    ManifestTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The manifest references blobs or manifests missing from the repository.
    #[error("manifest references blobs or manifests unknown to this repository")]
    ManifestBlobUnknown(Vec<Digest>),
    /// Authentication is required.
    #[error("authentication required")]
    Unauthorized,
    /// The caller may not do this.
    #[error("requested access to the resource is denied")]
    Denied,
    /// The operation is not supported (or disabled).
    #[error("{0}")]
    Unsupported(String),
    /// The caller must slow down.
    #[error("too many requests")]
    TooManyRequests,
    /// The operation conflicts with the current state (e.g. content still referenced).
    #[error("{0}")]
    Conflict(String),
    /// A dependency (database, storage) is unavailable; retry later.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// A result of this module.
pub type Result<T> = std::result::Result<T, Error>;

impl From<meta::Error> for Error {
    fn from(e: meta::Error) -> Self {
        match e {
            meta::Error::Unavailable(msg) => Error::Unavailable(msg),
            other => Error::Internal(other.into()),
        }
    }
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        Error::Internal(e.into())
    }
}

/// Limits and switches the use cases need from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest manifest accepted.
    pub manifest_max_bytes: u64,
    /// Whether deletes are allowed.
    pub delete_enabled: bool,
    /// Default listing page size.
    pub default_page_size: u32,
    /// Largest listing page size.
    pub max_page_size: u32,
}

impl Settings {
    /// Takes the settings from a configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            manifest_max_bytes: config.limits.manifest_max_bytes,
            delete_enabled: config.registry.delete_enabled,
            default_page_size: config.registry.default_page_size,
            max_page_size: config.registry.max_page_size,
        }
    }
}

/// The registry: a cheap-to-clone handle on metadata and blob storage.
#[derive(Clone, Debug)]
pub struct Registry {
    meta: Arc<dyn MetaStore>,
    storage: Storage,
    settings: Arc<Settings>,
}

impl Registry {
    /// Builds the registry over a metadata store and blob storage.
    pub fn new(meta: Arc<dyn MetaStore>, storage: Storage, settings: Settings) -> Self {
        Self {
            meta,
            storage,
            settings: Arc::new(settings),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Checks that the metadata store and blob storage answer.
    pub async fn ready(&self) -> Result<()> {
        self.meta.ping().await?;
        self.storage
            .check()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(())
    }

    fn ensure_delete_enabled(&self) -> Result<()> {
        if self.settings.delete_enabled {
            Ok(())
        } else {
            Err(Error::Unsupported(
                "deletes are disabled on this registry".into(),
            ))
        }
    }
}
