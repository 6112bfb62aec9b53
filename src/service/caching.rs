//! The registry's caches: what is cached, under which key, and which write invalidates it.
//!
//! Keys: tags `repo:tag` → digest; manifests `repo@digest` → media type and bytes (the key holds
//! the repository, so a hit also proves that this repository still holds the manifest);
//! blob metadata `repo@digest`; authorization facts `repo|user-id` and token subjects
//! `user-id|key-id|refresh-id` (no Redis tier: the writes that change them cannot enumerate their
//! keys, so they flush the facts and subjects of every node).
//! Writers call these helpers only after their transaction committed, inside
//! `Registry::detached` (so a dropped request cannot skip them).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Error;
use crate::cache::{Caches, SharedFailure, Tiered};
use crate::meta::identity::RepoFacts;
use crate::meta::{BlobRow, ManifestRow};
use crate::oci::{Digest, RepoName, Tag};

impl From<SharedFailure> for Error {
    fn from(e: SharedFailure) -> Self {
        Error::Unavailable(e.0)
    }
}

/// A manifest as cached.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct CachedManifest {
    digest: String,
    media_type: String,
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    payload: Vec<u8>,
}

fn to_base64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(bytes))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    STANDARD.decode(text).map_err(serde::de::Error::custom)
}

impl From<ManifestRow> for CachedManifest {
    fn from(r: ManifestRow) -> Self {
        Self {
            digest: r.digest.to_string(),
            media_type: r.media_type,
            payload: r.payload,
        }
    }
}

impl CachedManifest {
    /// Back to a row; `None` when the cached digest does not parse (then it is reloaded).
    pub(super) fn into_row(self) -> Option<ManifestRow> {
        Some(ManifestRow {
            digest: self.digest.parse().ok()?,
            media_type: self.media_type,
            payload: self.payload,
        })
    }
}

/// Blob metadata as cached.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct CachedBlob {
    digest: String,
    size: u64,
    storage_key: String,
}

impl From<BlobRow> for CachedBlob {
    fn from(r: BlobRow) -> Self {
        Self {
            digest: r.digest.to_string(),
            size: r.size,
            storage_key: r.storage_key,
        }
    }
}

impl CachedBlob {
    /// Back to a row; `None` when the cached digest does not parse.
    pub(super) fn into_row(self) -> Option<BlobRow> {
        Some(BlobRow {
            digest: self.digest.parse().ok()?,
            size: self.size,
            storage_key: self.storage_key,
        })
    }
}

/// The parts of [`RepoFacts`] access decisions read.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct CachedFacts {
    pub(super) exists: bool,
    pub(super) public: bool,
    pub(super) owns_namespace: bool,
    pub(super) org_role: Option<String>,
    pub(super) user_grant: Option<String>,
    pub(super) team_grants: Vec<String>,
}

impl From<RepoFacts> for CachedFacts {
    fn from(f: RepoFacts) -> Self {
        Self {
            exists: f.exists,
            public: f.public,
            owns_namespace: f.owns_namespace,
            org_role: f.org_role,
            user_grant: f.user_grant,
            team_grants: f.team_grants,
        }
    }
}

/// What re-checking a token needs about its subject and the credential it was minted from:
/// the user (if they still exist), the API key (if the token came from one and it still exists)
/// and the refresh token's expiry (if it came from one and it still exists). Absence is cached
/// too: ids are never reused, so a deleted user or credential never comes back.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct CachedSubject {
    pub(super) user: Option<SubjectUser>,
    pub(super) key: Option<SubjectKey>,
    pub(super) refresh_expires_at: Option<i64>,
}

/// The user behind a token.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct SubjectUser {
    pub(super) username: String,
    pub(super) is_admin: bool,
    pub(super) generation: i64,
}

/// The API key behind a token.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct SubjectKey {
    pub(super) user_id: String,
    pub(super) scope_kind: String,
    pub(super) scope_name: String,
    pub(super) permission: String,
    pub(super) expires_at: Option<i64>,
    pub(super) revoked: bool,
}

/// Name of the bus hook that clears the Basic-credential cache on every node.
pub(super) const LOGINS: &str = "logins";

/// The registry's caches over one hub.
#[derive(Clone, Debug)]
pub(super) struct RegistryCaches {
    pub(super) hub: Caches,
    pub(super) tags: Tiered<String>,
    pub(super) manifests: Tiered<CachedManifest>,
    pub(super) blobs: Tiered<CachedBlob>,
    pub(super) facts: Tiered<CachedFacts>,
    /// Token subjects and their credentials, `user-id|key-id|refresh-id` (no Redis tier, flushed
    /// with the facts by every tenancy change, credential revocations included).
    pub(super) subjects: Tiered<CachedSubject>,
    /// Holds a write between its commit and its invalidation (tests only).
    #[cfg(test)]
    pub(super) committed: crate::cache::pause::Pause,
    /// Holds a Basic login between its check and its insert into the login cache (tests only).
    #[cfg(test)]
    pub(super) login_checked: crate::cache::pause::Pause,
}

impl RegistryCaches {
    pub(super) fn new(hub: Caches) -> Self {
        let c = hub.config().clone();
        let secs = std::time::Duration::from_secs;
        Self {
            tags: hub.tiered("tag", c.max_entries, |_| 1, secs(c.tag_ttl_seconds), true),
            manifests: hub.tiered(
                "manifest",
                c.manifest_max_bytes,
                |m: &CachedManifest| u32::try_from(m.payload.len()).unwrap_or(u32::MAX).max(1),
                secs(c.manifest_ttl_seconds),
                true,
            ),
            blobs: hub.tiered("blob", c.max_entries, |_| 1, secs(c.blob_ttl_seconds), true),
            facts: hub.tiered(
                "facts",
                c.max_entries,
                |_| 1,
                secs(c.facts_ttl_seconds),
                false,
            ),
            subjects: hub.tiered(
                "subject",
                c.max_entries,
                |_| 1,
                secs(c.facts_ttl_seconds),
                false,
            ),
            hub,
            #[cfg(test)]
            committed: crate::cache::pause::Pause::default(),
            #[cfg(test)]
            login_checked: crate::cache::pause::Pause::default(),
        }
    }

    /// The test pause point every invalidation helper below starts at.
    async fn after_commit(&self) {
        #[cfg(test)]
        self.committed.point().await;
    }

    pub(super) fn tag_key(repo: &RepoName, tag: &Tag) -> String {
        format!("{repo}:{tag}")
    }

    pub(super) fn object_key(repo: &RepoName, digest: &Digest) -> String {
        format!("{repo}@{digest}")
    }

    pub(super) fn facts_key(repo: &str, user: Option<&str>) -> String {
        format!("{repo}|{}", user.unwrap_or(""))
    }

    pub(super) fn subject_key(user: &str, key: Option<&str>, refresh: Option<&str>) -> String {
        format!("{user}|{}|{}", key.unwrap_or(""), refresh.unwrap_or(""))
    }

    /// After a tag was moved or deleted.
    pub(super) async fn tag_changed(&self, repo: &RepoName, tag: &Tag) {
        self.after_commit().await;
        self.tags.invalidate(&[Self::tag_key(repo, tag)]).await;
    }

    /// After a manifest was deleted from a repository.
    pub(super) async fn manifest_deleted(&self, repo: &RepoName, digest: &Digest) {
        self.after_commit().await;
        self.manifests
            .invalidate(&[Self::object_key(repo, digest)])
            .await;
    }

    /// After a blob was unlinked from a repository.
    pub(super) async fn blob_unlinked(&self, repo: &RepoName, digest: &Digest) {
        self.after_commit().await;
        self.blobs
            .invalidate(&[Self::object_key(repo, digest)])
            .await;
    }

    /// After users, orgs, memberships, teams, grants, visibility, API keys, passwords or refresh
    /// tokens changed.
    pub(super) async fn tenancy_changed(&self) {
        self.after_commit().await;
        self.facts.invalidate_all().await;
        self.subjects.invalidate_all().await;
        self.hub.flush(LOGINS).await;
    }

    /// After a repository and everything in it was deleted.
    pub(super) async fn repository_deleted(&self, repo: &RepoName) {
        self.after_commit().await;
        self.tags.invalidate_prefix(&format!("{repo}:")).await;
        self.manifests.invalidate_prefix(&format!("{repo}@")).await;
        self.blobs.invalidate_prefix(&format!("{repo}@")).await;
    }
}

/// Races between cache loaders and writes, made to meet deterministically: a loader is held
/// between its read and its insert while a write commits and invalidates, then let go; the
/// entry it inserts must never be served afterwards.
#[cfg(test)]
mod cache_races {
    use std::future::Future;
    use std::time::{Duration, Instant};

    use super::super::testing::Harness;
    use super::super::{Error, NewApiKey, Principal};
    use crate::auth::permission::Permission;
    use crate::cache::pause::Pause;
    use crate::meta::{Delete, MetaStore};
    use crate::oci::{Reference, RepoName};

    const TRIES: usize = 1000;

    fn repo(name: &str) -> RepoName {
        name.parse().expect("repository name")
    }

    /// Runs `read` until it stops at `pause`, then `write` to its end, then lets `read` finish.
    async fn across<R: Future, W: Future>(
        pause: &Pause,
        read: R,
        write: W,
    ) -> (R::Output, W::Output) {
        let mut held = pause.arm();
        tokio::pin!(read);
        tokio::select! {
            biased;
            () = held.reached() => {}
            _ = &mut read => panic!(
                "the read finished without reaching the pause: a cache hit, i.e. an entry an earlier try resurrected"
            ),
        }
        let written = write.await;
        held.release();
        (read.await, written)
    }

    #[tokio::test]
    async fn cache_never_resurrects_a_deleted_manifest() {
        let h = Harness::builder().build().await;
        let (r, repo) = (&h.registry, repo("acme/app"));
        let mut resurrected = 0;
        for i in 0..TRIES as u64 {
            let digest = h.push(&repo, None, i).await;
            let by = Reference::Digest(digest);
            let (read, deleted) = across(
                r.caches.manifests.after_load(),
                r.get_manifest(&repo, &by),
                r.delete_manifest(&repo, &by),
            )
            .await;
            read.expect("the read overlapping the delete");
            deleted.expect("delete");
            match r.get_manifest(&repo, &by).await {
                Err(Error::ManifestUnknown) => {}
                Ok(_) => resurrected += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(resurrected, 0, "deleted manifests served again");
    }

    #[tokio::test]
    async fn cache_never_resurrects_a_deleted_tag() {
        let h = Harness::builder().build().await;
        let (r, repo) = (&h.registry, repo("acme/app"));
        let tag = Reference::Tag("latest".parse().expect("tag"));
        let mut resurrected = 0;
        for i in 0..TRIES as u64 {
            h.push(&repo, Some("latest"), i).await;
            let (read, deleted) = across(
                r.caches.tags.after_load(),
                r.get_manifest(&repo, &tag),
                r.delete_manifest(&repo, &tag),
            )
            .await;
            read.expect("the read overlapping the delete");
            deleted.expect("delete");
            match r.get_manifest(&repo, &tag).await {
                Err(Error::ManifestUnknown) => {}
                Ok(_) => resurrected += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(resurrected, 0, "deleted tags resolved again");
    }

    #[tokio::test]
    async fn cache_never_resurrects_an_unlinked_blob() {
        let h = Harness::builder().build().await;
        let r = &h.registry;
        let (src, dst) = (repo("acme/src"), repo("acme/dst"));
        let digest = h.upload(&src, b"a blob to mount again and again").await;
        let admin = Principal::User(Harness::admin());
        let mut resurrected = 0;
        for _ in 0..TRIES {
            r.mount_blob(&admin, &dst, &src, &digest)
                .await
                .expect("mount")
                .expect("mounted");
            let (read, deleted) = across(
                r.caches.blobs.after_load(),
                r.stat_blob(&dst, &digest),
                r.delete_blob(&dst, &digest),
            )
            .await;
            read.expect("the read overlapping the unlink");
            deleted.expect("unlink");
            match r.stat_blob(&dst, &digest).await {
                Err(Error::BlobUnknown(_)) => {}
                Ok(_) => resurrected += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(resurrected, 0, "unlinked blobs served again");
    }

    #[tokio::test]
    async fn cache_never_resurrects_a_revoked_grant() {
        let h = Harness::builder().build().await;
        let (r, repo) = (&h.registry, repo("acme/private"));
        h.push(&repo, Some("v1"), 0).await;
        let (admin, user) = (Harness::admin(), h.user("reader").await);
        let mut resurrected = 0;
        for _ in 0..TRIES {
            r.grant_permission(&admin, &repo, Some("reader"), None, Permission::Read)
                .await
                .expect("grant");
            let (read, revoked) = across(
                r.caches.facts.after_load(),
                r.permission_on(Some(&user), repo.as_str()),
                r.revoke_permission(&admin, &repo, Some("reader"), None),
            )
            .await;
            assert_eq!(read.expect("read"), Some(Permission::Read));
            revoked.expect("revoke");
            if r.permission_on(Some(&user), repo.as_str())
                .await
                .expect("permission")
                .is_some()
            {
                resurrected += 1;
            }
        }
        assert_eq!(resurrected, 0, "revoked grants honoured again");
    }

    #[tokio::test]
    async fn cache_never_resurrects_a_login_with_a_revoked_key() {
        let h = Harness::builder().build().await;
        let r = &h.registry;
        let user = h.user("robot").await;
        let mut resurrected = 0;
        for i in 0..TRIES {
            let (key, secret) = r
                .create_api_key(
                    &user,
                    NewApiKey {
                        name: format!("key-{i}"),
                        scope: crate::service::KeyScope::All,
                        permission: Permission::Read,
                        expires_in_days: None,
                    },
                )
                .await
                .expect("api key");
            let (read, revoked) = across(
                &r.caches.login_checked,
                r.login("robot", &secret, None),
                r.revoke_api_key(&user, &key.id),
            )
            .await;
            read.expect("the login overlapping the revocation");
            revoked.expect("revoke");
            match r.login("robot", &secret, None).await {
                Err(Error::Unauthorized) => {}
                Ok(_) => resurrected += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(resurrected, 0, "revoked keys accepted again");
    }

    /// Two nodes sharing the database and Redis: a load held on node A while node B deletes must
    /// leave nothing in Redis (B, whose moka never held the entry, sees the delete) nor in A's
    /// moka.
    #[tokio::test]
    async fn cache_redis_tier_never_resurrects_manifests_tags_or_blobs() {
        let a = Harness::builder().redis().build().await;
        let b = a.node().await;
        let (ra, rb) = (&a.registry, &b.registry);
        let repo = repo("acme/app");
        let tag = Reference::Tag("latest".parse().expect("tag"));
        let (src, digest) = {
            let src = self::repo("acme/src");
            let d = a.upload(&src, b"a shared blob").await;
            (src, d)
        };
        let admin = Principal::User(Harness::admin());
        let mut resurrected = [0; 3];
        for i in 0..TRIES as u64 {
            // Manifests.
            let by = Reference::Digest(a.push(&repo, None, i).await);
            let (read, deleted) = across(
                ra.caches.manifests.after_load(),
                ra.get_manifest(&repo, &by),
                rb.delete_manifest(&repo, &by),
            )
            .await;
            read.expect("read");
            deleted.expect("delete");
            for r in [rb, ra] {
                if r.get_manifest(&repo, &by).await.is_ok() {
                    resurrected[0] += 1;
                }
            }
            // Tags.
            a.push(&repo, Some("latest"), TRIES as u64 + i).await;
            let (read, deleted) = across(
                ra.caches.tags.after_load(),
                ra.get_manifest(&repo, &tag),
                rb.delete_manifest(&repo, &tag),
            )
            .await;
            read.expect("read");
            deleted.expect("delete");
            for r in [rb, ra] {
                if r.get_manifest(&repo, &tag).await.is_ok() {
                    resurrected[1] += 1;
                }
            }
            // Blob metadata.
            ra.mount_blob(&admin, &repo, &src, &digest)
                .await
                .expect("mount")
                .expect("mounted");
            let (read, deleted) = across(
                ra.caches.blobs.after_load(),
                ra.stat_blob(&repo, &digest),
                rb.delete_blob(&repo, &digest),
            )
            .await;
            read.expect("read");
            deleted.expect("unlink");
            for r in [rb, ra] {
                if r.stat_blob(&repo, &digest).await.is_ok() {
                    resurrected[2] += 1;
                }
            }
        }
        assert_eq!(
            resurrected, [0; 3],
            "resurrections of [manifests, tags, blobs]"
        );
    }

    /// A repository deletion (a prefix invalidation in Redis) racing a load on another node.
    #[tokio::test]
    async fn cache_redis_tier_never_resurrects_a_deleted_repository() {
        let a = Harness::builder().redis().build().await;
        let b = a.node().await;
        let (ra, rb) = (&a.registry, &b.registry);
        let admin = Harness::admin();
        let mut resurrected = 0;
        for i in 0..100 {
            let repo = repo(&format!("acme/gone-{i}"));
            let by = Reference::Digest(a.push(&repo, None, i).await);
            let (read, deleted) = across(
                ra.caches.manifests.after_load(),
                ra.get_manifest(&repo, &by),
                rb.delete_repository(&admin, &repo),
            )
            .await;
            read.expect("read");
            deleted.expect("delete repository");
            for r in [rb, ra] {
                if r.get_manifest(&repo, &by).await.is_ok() {
                    resurrected += 1;
                }
            }
        }
        assert_eq!(
            resurrected, 0,
            "manifests of deleted repositories served again"
        );
    }

    /// Polls `check` for up to `within`; true once it held.
    async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if check().await {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A request dropped right after its commit (a timeout, a client gone) still invalidates.
    #[tokio::test]
    async fn cache_is_invalidated_when_the_request_is_dropped_right_after_its_commit() {
        let h = Harness::builder().build().await;
        let (r, repo) = (&h.registry, repo("acme/app"));
        let by = Reference::Digest(h.push(&repo, None, 1).await);
        r.get_manifest(&repo, &by).await.expect("cached");
        let mut held = r.caches.committed.arm();
        {
            let delete = r.delete_manifest(&repo, &by);
            tokio::pin!(delete);
            tokio::select! {
                () = held.reached() => {}
                _ = &mut delete => panic!("the delete finished without reaching its commit"),
            }
            // The request goes away here, with its delete committed.
        }
        held.release();
        let gone = eventually(Duration::from_secs(2), async || {
            matches!(
                r.get_manifest(&repo, &by).await,
                Err(Error::ManifestUnknown)
            )
        })
        .await;
        assert!(gone, "the deleted manifest is still served from the cache");

        // The same for a tenancy write (a revoked grant).
        let (admin, user) = (Harness::admin(), h.user("reader").await);
        r.grant_permission(&admin, &repo, Some("reader"), None, Permission::Read)
            .await
            .expect("grant");
        assert!(
            r.permission_on(Some(&user), repo.as_str())
                .await
                .expect("cached")
                .is_some()
        );
        let mut held = r.caches.committed.arm();
        {
            let revoke = r.revoke_permission(&admin, &repo, Some("reader"), None);
            tokio::pin!(revoke);
            tokio::select! {
                () = held.reached() => {}
                _ = &mut revoke => panic!("the revoke finished without reaching its commit"),
            }
        }
        held.release();
        let revoked = eventually(Duration::from_secs(2), async || {
            r.permission_on(Some(&user), repo.as_str())
                .await
                .is_ok_and(|p| p.is_none())
        })
        .await;
        assert!(
            revoked,
            "the revoked grant is still honoured from the cache"
        );
    }

    /// A node killed between its commit and its invalidation (here: the commit through the
    /// store, no invalidation at all) leaves the other nodes stale for at most the entry's TTL,
    /// counted from the load that put it into Redis, also on a node that took it from Redis later.
    #[tokio::test]
    async fn cache_staleness_after_a_lost_invalidation_is_bounded_by_the_ttl() {
        let ttl = Duration::from_secs(1);
        let a = Harness::builder()
            .redis()
            .cache(|c| c.manifest_ttl_seconds = 1)
            .build()
            .await;
        let b = a.node().await;
        let repo = repo("acme/app");
        let digest = a.push(&repo, None, 7).await;
        let by = Reference::Digest(digest.clone());
        let loaded = Instant::now();
        b.registry
            .get_manifest(&repo, &by)
            .await
            .expect("loaded into Redis and B");
        tokio::time::sleep(ttl / 2).await;
        a.registry
            .get_manifest(&repo, &by)
            .await
            .expect("A takes it from Redis");
        assert!(matches!(
            a.store
                .delete_manifest(&repo, &digest)
                .await
                .expect("delete"),
            Delete::Deleted
        ));
        for r in [&a.registry, &b.registry] {
            assert!(
                r.get_manifest(&repo, &by).await.is_ok(),
                "stale until the TTL ends (no invalidation was sent)"
            );
        }
        let slack = Duration::from_millis(300);
        let gone = eventually(ttl + slack - loaded.elapsed(), async || {
            let mut all = true;
            for r in [&a.registry, &b.registry] {
                all &= matches!(
                    r.get_manifest(&repo, &by).await,
                    Err(Error::ManifestUnknown)
                );
            }
            all
        })
        .await;
        assert!(
            gone,
            "served longer than the TTL after the lost invalidation"
        );
    }
}
