//! The registry's caches: what is cached, under which key, and which write invalidates it.
//!
//! Keys: tags `repo:tag` → digest; manifests `repo@digest` → media type and bytes (the key holds
//! the repository, so a hit also proves that this repository still holds the manifest);
//! blob metadata `repo@digest`; authorization facts `repo|user-id` and token subjects
//! `user-id|key-id|refresh-id` (no Redis tier: the writes that change them cannot enumerate their
//! keys, so they flush the facts and subjects of every node).
//! Writers call these helpers only after their transaction committed.

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
        }
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

    /// After users, orgs, memberships, teams, grants, visibility, API keys, passwords or refresh
    /// tokens changed.
    pub(super) async fn tenancy_changed(&self) {
        self.facts.invalidate_all().await;
        self.subjects.invalidate_all().await;
        self.hub.flush(LOGINS).await;
    }

    /// After a repository and everything in it was deleted.
    pub(super) async fn repository_deleted(&self, repo: &RepoName) {
        self.tags.invalidate_prefix(&format!("{repo}:")).await;
        self.manifests.invalidate_prefix(&format!("{repo}@")).await;
        self.blobs.invalidate_prefix(&format!("{repo}@")).await;
    }
}
