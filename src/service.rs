//! Use cases of the registry: push, pull, mount, delete, list, referrers.
//!
//! [`Registry`] is the only place that combines the metadata store and blob storage. Its methods
//! take validated `oci` types (never bare strings for names or digests) and return the closed
//! [`Error`] enum, which `api` maps to HTTP in exactly one place per API.
//! Must not depend on `api` or `app`.

use std::sync::Arc;

use crate::cache::{Caches, LocalCache};
use crate::config::Config;
use crate::meta::identity::IdentityStore;
use crate::meta::{self, MetaStore};
use crate::oci::Digest;
use crate::storage::{self, Storage};

pub mod access;
mod auth;
mod blobs;
mod caching;
mod listing;
mod manifests;
mod tenancy;
#[cfg(test)]
pub(crate) mod testing;
mod throttle;
mod uploads;
mod views;
mod work;

pub use crate::meta::changes::DISCARD_TOPIC;
/// Identity-store values the management API renders as they are (they carry no secrets).
pub use crate::meta::identity::{RepoSummary, TagSummary, Visibility};
pub use crate::meta::{BuriedItem, TopicStats, WorkItem};
pub use access::{Action, Identity, KeyRestriction, KeyScope, Principal, RefreshOrigin};
pub use auth::{IssuedToken, TokenSettings};
pub use blobs::{BlobRead, ByteRange};
pub use listing::Page;
pub use manifests::PushedManifest;
pub use tenancy::{NewApiKey, RepoDetail};
pub use uploads::{ChunkRange, UploadStatus};
pub use views::{
    ApiKeyInfo, GrantInfo, GrantTo, MemberInfo, OrgInfo, RefreshTokenInfo, TeamInfo,
    TeamMemberInfo, UserInfo,
};

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
    #[error("too many requests; retry in {retry_after_secs}s")]
    TooManyRequests {
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// A management request carries invalid data.
    #[error("{0}")]
    Invalid(String),
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
    /// Visibility of repositories created by a push.
    pub default_visibility: Visibility,
    /// Most parts one upload session may hold.
    pub max_upload_parts: u64,
    /// Most recently active upload sessions per user (0: no bound).
    pub max_active_uploads_per_user: u64,
    /// How long an upload session counts as active after it last advanced.
    pub active_upload_window: std::time::Duration,
}

impl Settings {
    /// Takes the settings from a configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            manifest_max_bytes: config.limits.manifest_max_bytes,
            delete_enabled: config.registry.delete_enabled,
            default_page_size: config.registry.default_page_size,
            max_page_size: config.registry.max_page_size,
            max_upload_parts: config.registry.max_upload_parts,
            max_active_uploads_per_user: config.registry.max_active_uploads_per_user,
            active_upload_window: std::time::Duration::from_secs(
                config.registry.active_upload_window_seconds,
            ),
            default_visibility: if config.auth.default_visibility == "public" {
                Visibility::Public
            } else {
                Visibility::Private
            },
        }
    }
}

/// The registry: a cheap-to-clone handle on metadata and blob storage.
#[derive(Clone, Debug)]
pub struct Registry {
    meta: Arc<dyn MetaStore>,
    identity: Arc<dyn IdentityStore>,
    storage: Storage,
    settings: Arc<Settings>,
    tokens: Arc<TokenSettings>,
    /// Successful Basic-credential checks, keyed by a hash of the credentials, so clients that
    /// send Basic auth on every request do not pay for argon2 every time.
    logins: LocalCache<[u8; 32], access::Identity>,
    /// Registry tokens whose signature was checked recently, keyed by the token's hash.
    verified_tokens: LocalCache<[u8; 32], crate::auth::Claims>,
    /// Tags, manifests, blob metadata and authorization facts (moka, and Redis when configured).
    caches: caching::RegistryCaches,
    /// Bounds concurrent argon2 jobs (see `Registry::password_work`).
    password_gate: Arc<tokio::sync::Semaphore>,
    /// Wakes this node's queue consumers after a write queued work (`Registry::work_queued`).
    work_ready: Arc<tokio::sync::watch::Sender<u64>>,
    /// Per-node login throttle state (the counters live in the identity store).
    throttle: Arc<throttle::Throttle>,
}

impl Registry {
    /// Builds the registry over the metadata and identity stores, blob storage and the caches
    /// (fails only on an invalid `cache.redis_url`; Redis itself need not be up).
    ///
    /// `cluster_id` is the metadata database's cluster id ([`MetaStore::cluster_id`]): Redis keys
    /// and the invalidation channel live under `<cache.key_prefix>:<cluster_id>`, so deployments
    /// with different databases never share entries on one Redis, whatever their prefix.
    pub fn new(
        meta: Arc<dyn MetaStore>,
        identity: Arc<dyn IdentityStore>,
        storage: Storage,
        settings: Settings,
        tokens: TokenSettings,
        cache: &crate::config::CacheConfig,
        cluster_id: &str,
    ) -> Result<Self> {
        let mut cache = cache.clone();
        cache.key_prefix = format!("{}:{cluster_id}", cache.key_prefix);
        let caches = Caches::new(&cache).map_err(|e| Error::Internal(e.into()))?;
        let logins = LocalCache::new(10_000, std::time::Duration::from_secs(60));
        let hook = logins.clone();
        caches.on_flush(caching::LOGINS, move || hook.clear());
        Ok(Self {
            meta,
            identity,
            storage,
            settings: Arc::new(settings),
            tokens: Arc::new(tokens),
            logins,
            verified_tokens: LocalCache::new(10_000, std::time::Duration::from_secs(30)),
            caches: caching::RegistryCaches::new(caches),
            password_gate: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )),
            work_ready: Arc::new(tokio::sync::watch::channel(0).0),
            throttle: Arc::new(throttle::Throttle::default()),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Publishes point-in-time gauges (database pool) before a metrics scrape.
    pub fn record_gauges(&self) {
        self.meta.record_gauges();
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

    /// Runs a write and the consequences of its commit (cache invalidations, bus messages) as a
    /// task of its own, awaited here: a request dropped meanwhile (a timeout, a client gone)
    /// drops only its wait, never the invalidation after a commit. Every write followed by cache
    /// work goes through here; the write gets a clone of the registry (cheap) so it owns what it
    /// uses.
    pub(crate) async fn detached<T, Fut>(&self, write: impl FnOnce(Registry) -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(write(self.clone()))
            .await
            .map_err(|e| Error::Internal(e.into()))?
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
