//! The in-process service harness (tests only): a real [`Registry`] over SQLite in a temporary
//! file, memory blob storage and the embedded cache, optionally with Redis under a key prefix
//! of its own; no HTTP, no processes. Several registries built over one database (and one Redis
//! prefix) stand for the nodes of a cluster.
//!
//! Build one with [`Harness::builder`]; the builder is the place to add what later tests need
//! (a manual clock, the jobs runner).

use std::sync::Arc;
use std::time::Duration;

use aerugo_testkit::redis as test_redis;
use bytes::Bytes;

use super::access::Identity;
use super::{Registry, Settings, TokenSettings};
use crate::auth::{KeySet, generate_signing_pem};
use crate::config::{CacheConfig, Secret, StorageConfig, StorageType};
use crate::meta::identity::{IdentityStore, NewUser, Visibility};
use crate::meta::sqlite::SqliteStore;
use crate::meta::{MetaStore as _, NewWork};
use crate::oci::{Digest, RepoName};
use crate::storage::Storage;

/// One registry ("node") and the database it shares with the other nodes of its cluster.
pub(crate) struct Harness {
    /// The registry under test.
    pub(crate) registry: Registry,
    /// The metadata store, for writes that bypass the service (a node dying mid-write).
    pub(crate) store: SqliteStore,
    cluster: Arc<Cluster>,
}

/// What the nodes of one harness cluster share.
struct Cluster {
    store: SqliteStore,
    storage: Storage,
    keys: Arc<KeySet>,
    cache: CacheConfig,
    _dir: tempfile::TempDir,
}

/// Settings of a harness under construction.
pub(crate) struct Builder {
    cache: CacheConfig,
    join: Option<Arc<Cluster>>,
}

impl Harness {
    /// A builder with the defaults: embedded cache, deletes enabled, private repositories.
    pub(crate) fn builder() -> Builder {
        Builder {
            cache: CacheConfig::default(),
            join: None,
        }
    }

    /// Another node of this harness's cluster: same database, storage, signing keys, cache
    /// settings and (when used) Redis prefix; its own process-local caches.
    pub(crate) async fn node(&self) -> Harness {
        Builder {
            cache: self.cluster.cache.clone(),
            join: Some(self.cluster.clone()),
        }
        .build()
        .await
    }

    /// A site administrator (interactive, not through an API key).
    pub(crate) fn admin() -> Identity {
        Identity {
            user_id: "admin-id".into(),
            username: "admin".into(),
            is_admin: true,
            key: None,
            generation: 0,
            refresh: None,
        }
    }

    /// Creates a plain user directly in the store (no password hashing) and returns it.
    pub(crate) async fn user(&self, name: &str) -> Identity {
        let row = self
            .store
            .create_user(&NewUser {
                username: name.into(),
                email: String::new(),
                password_hash: "not-a-hash".into(),
                is_admin: false,
                adopt: false,
            })
            .await
            .expect("create user")
            .expect("a new name");
        Identity {
            user_id: row.id,
            username: row.username,
            is_admin: false,
            key: None,
            generation: row.credential_generation,
            refresh: None,
        }
    }

    /// Pushes a small index manifest (distinct per `seed`) to `repo`, under `tag` or by digest.
    pub(crate) async fn push(&self, repo: &RepoName, tag: Option<&str>, seed: u64) -> Digest {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{{"seed":"{seed}"}}}}"#
        );
        let digest = Digest::sha256(body.as_bytes());
        let reference = match tag {
            Some(t) => crate::oci::Reference::Tag(t.parse().expect("tag")),
            None => crate::oci::Reference::Digest(digest.clone()),
        };
        self.registry
            .push_manifest(repo, &reference, None, body.as_bytes())
            .await
            .expect("push manifest");
        digest
    }

    /// The objects stored under upload session `id`'s prefix.
    pub(crate) async fn upload_objects(&self, id: &str) -> Vec<String> {
        self.cluster
            .storage
            .upload_objects(id)
            .await
            .expect("list upload objects")
    }

    /// Makes upload session `id` look idle for `by` longer than it is.
    pub(crate) async fn backdate_upload(&self, id: &str, by: Duration) {
        let ms = i64::try_from(by.as_millis()).expect("a short duration");
        self.store
            .backdate_upload(id, ms)
            .await
            .expect("backdate upload");
    }

    /// Queues work outside any write (a test consumer's topic), at `now`.
    pub(crate) async fn enqueue(&self, topic: &str, key: &str, payload: &str, now: i64) {
        self.store
            .enqueue_work(
                vec![NewWork {
                    topic: topic.into(),
                    key: key.into(),
                    payload: payload.into(),
                    delay_ms: 0,
                }],
                now,
            )
            .await
            .expect("enqueue work");
    }

    /// Starts an upload session in `repo` holding one chunk of `bytes`; returns its id.
    pub(crate) async fn started_upload(&self, repo: &RepoName, bytes: &[u8]) -> String {
        let principal = crate::service::Principal::User(Self::admin());
        let status = self
            .registry
            .start_upload(&principal, repo, crate::oci::DigestAlgorithm::Sha256)
            .await
            .expect("start upload");
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(bytes))]);
        self.registry
            .append_upload(repo, &status.id, None, Some(bytes.len() as u64), body)
            .await
            .expect("append a chunk");
        status.id
    }

    /// Uploads `bytes` as a blob of `repo` (monolithic upload) and returns its digest.
    pub(crate) async fn upload(&self, repo: &RepoName, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256(bytes);
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(bytes))]);
        self.registry
            .upload_blob(
                &crate::service::Principal::User(Self::admin()),
                repo,
                &digest,
                Some(bytes.len() as u64),
                body,
            )
            .await
            .expect("upload blob");
        digest
    }
}

impl Builder {
    /// Adds the Redis tier: the test Redis (`AERUGO_TEST_REDIS_URL`, default
    /// `redis://127.0.0.1:6379`) under a key prefix no other test uses.
    pub(crate) fn redis(mut self) -> Self {
        let (url, prefix) = test_redis::shared();
        self.cache.redis_url = Some(Secret::new(url));
        self.cache.key_prefix = prefix;
        self
    }

    /// Changes cache settings (TTLs, sizes).
    pub(crate) fn cache(mut self, change: impl FnOnce(&mut CacheConfig)) -> Self {
        change(&mut self.cache);
        self
    }

    /// Builds the node (and its cluster, unless it joins one); with Redis, waits until the
    /// invalidation bus is subscribed, so that no invalidation of the test is lost.
    pub(crate) async fn build(self) -> Harness {
        let cluster = match self.join {
            Some(c) => c,
            None => {
                // On tmpfs when there is one: the tests measure races, not fsync.
                let shm = std::path::Path::new("/dev/shm");
                let dir = if shm.is_dir() {
                    tempfile::tempdir_in(shm)
                } else {
                    tempfile::tempdir()
                }
                .expect("temp dir");
                let store = SqliteStore::open(&dir.path().join("aerugo.db"))
                    .await
                    .expect("open SQLite");
                let storage = Storage::from_config(&StorageConfig {
                    kind: StorageType::Memory,
                    ..StorageConfig::default()
                })
                .expect("memory storage");
                let pem = generate_signing_pem().expect("signing key");
                let keys = Arc::new(KeySet::from_pems(pem.as_bytes(), &[]).expect("keys"));
                Arc::new(Cluster {
                    store,
                    storage,
                    keys,
                    cache: self.cache.clone(),
                    _dir: dir,
                })
            }
        };
        let store = cluster.store.clone();
        let settings = Settings {
            default_page_size: 100,
            max_page_size: 1000,
            default_visibility: Visibility::Private,
            ..Settings::from_config(&crate::config::Config::default())
        };
        let tokens = TokenSettings {
            keys: cluster.keys.clone(),
            issuer: "aerugo-test".into(),
            service: "aerugo-test".into(),
            ttl_seconds: 300,
            refresh_ttl_seconds: 3600,
            login_max_failures: 1_000_000,
            login_max_failures_per_address: 1_000_000,
            login_window_seconds: 60,
            self_signup: false,
        };
        let registry = Registry::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            cluster.storage.clone(),
            settings,
            tokens,
            &cluster.cache,
            "test",
        )
        .expect("registry");
        if cluster.cache.redis_url.is_some() {
            let hub = &registry.caches.hub;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !hub.bus_connected() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cache bus did not subscribe: is Redis running? Start it with \
                     `redis-server --daemonize yes` or set AERUGO_TEST_REDIS_URL"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Harness {
            registry,
            store,
            cluster,
        }
    }
}
